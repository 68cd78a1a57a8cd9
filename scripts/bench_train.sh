#!/usr/bin/env bash
# DPO training benchmark: `propersim bench --dpo` in each `train_weights` mode, then TRL + PEFT
# (scripts/trl_bench.py) on the same pairs and settings, one thread each, with peak RSS and CPU
# time from /usr/bin/time. Where nvcc is on PATH it first checks that the `--features cuda`
# build still compiles (scripts/build_cuda.sh builds it from PyPI's toolkit; the GPU benchmark
# itself is scripts/gpu_check.sh, on a machine with a GPU).
#
#   scripts/bench_train.sh MODEL.gguf PAIRS.jsonl [STEPS] [PROPERSIM_BINARY]
#
# PYTHON (default target/peft-venv/bin/python) must import torch, transformers, peft, gguf, trl and
# datasets; the test venv has no trl or datasets. What ran on 2026-12-01 (TRL 1.16):
#   $PYTHON -m pip install --target DIR trl datasets   # then delete DIR's torch*, transformers*,
#       # huggingface_hub*, tokenizers*, safetensors*, numpy*, nvidia*, triton*, cuda*
#   $PYTHON -m pip install --no-deps --target DIR2 datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16
#   export PYTHONPATH=DIR2:DIR
# (datasets 5.2 with dill 0.4 cannot fingerprint a dataset: "Can't pickle <class 'MonthDayNano'>".)
set -euo pipefail
gguf=${1:?usage: bench_train.sh MODEL.gguf PAIRS.jsonl [STEPS] [BINARY]}
pairs=${2:?usage: bench_train.sh MODEL.gguf PAIRS.jsonl [STEPS] [BINARY]}
steps=${3:-8}
bin=${4:-target/release/propersim}
python=${PYTHON:-target/peft-venv/bin/python}
cd "$(dirname "$0")/.."

if command -v nvcc >/dev/null; then
  echo "== cargo check --features cuda"
  cargo check --features cuda --bin propersim
else
  echo "== no nvcc: the --features cuda build is not checked here"
fi

peak() { grep -E "Maximum resident|User time|System time|Elapsed" "$1"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for w in quantized bf16 f32; do
  echo "== propersim, train_weights = $w"
  RAYON_NUM_THREADS=1 PROPERSIM_BENCH_PAIRS="$pairs" /usr/bin/time -v \
    "$bin" bench --dpo "$gguf" --weights "$w" --dpo-steps "$steps" 2>"$tmp/$w.txt"
  peak "$tmp/$w.txt"
done
echo "== TRL + PEFT"
OMP_NUM_THREADS=1 /usr/bin/time -v "$python" scripts/trl_bench.py --gguf "$gguf" --pairs "$pairs" \
  --steps "$steps" --threads 1 2>"$tmp/trl.txt" | tail -1
peak "$tmp/trl.txt"
