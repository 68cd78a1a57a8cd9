#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (and `llama-bench`) for scripts/bench_serve.sh, from the
# llama.cpp sources vendored in the PyPI sdist of llama-cpp-python: the one source of llama.cpp
# a package registry gives us. After the sdist download nothing touches the network (no curl,
# no OpenSSL, no prebuilt web UI).
#
# Instruction sets are chosen explicitly from this CPU's lscpu flags instead of -march=native:
# a native build also enables AMX, whose instructions fault on these VMs, so AMX stays off.
#
# Usage: scripts/build_llama_server.sh [--force]
# Env:   LLAMA_OUT (default target/llama.cpp), JOBS (default nproc),
#        LLAMA_CPP_PYTHON_VERSION (default: the newest sdist).
# Output: $LLAMA_OUT/bin/llama-server, $LLAMA_OUT/bin/llama-bench, $LLAMA_OUT/BUILD_INFO.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${LLAMA_OUT:-target/llama.cpp}
jobs=${JOBS:-$(nproc)}
if [ -x "$out/bin/llama-server" ] && [ "${1:-}" != "--force" ]; then
  echo "$out/bin/llama-server exists (--force rebuilds)"; exit 0
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# A venv of our own for the download and the build tools.
venv=$out/venv
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
pip=("$venv/bin/pip" --disable-pip-version-check --quiet)
# --no-build-isolation below makes pip prepare the sdist's metadata with the backend installed
# here, instead of installing build dependencies (a cmake build) into a throwaway environment.
"${pip[@]}" install scikit-build-core
command -v cmake >/dev/null 2>&1 || "${pip[@]}" install cmake
command -v ninja >/dev/null 2>&1 || "${pip[@]}" install ninja
export PATH=$venv/bin:$PATH

# The sources stay in $out/src, so an interrupted build resumes where it stopped.
if [ ! -f "$out/src/VERSION" ] || [ "${1:-}" = "--force" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  spec=llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}
  "${pip[@]}" download --no-deps --no-binary :all: --no-build-isolation "$spec" -d "$tmp/dl"
  sdist=$(ls "$tmp"/dl/llama_cpp_python-*.tar.gz)
  rm -rf "$out/src" "$out/build"
  mkdir -p "$out/src"
  tar xzf "$sdist" -C "$out/src" --strip-components=1
  basename "$sdist" .tar.gz >"$out/src/VERSION"
fi
src=$out/src/vendor/llama.cpp
version=$(cat "$out/src/VERSION")

# Instruction sets: each ggml option on only if this CPU reports the flag.
flags=" $(lscpu | sed -n 's/^Flags:[[:space:]]*//p') "
has() { case "$flags" in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
isa=(
  -DGGML_NATIVE=OFF
  -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)
  -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni)
  -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)
  -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
)
cmake -S "$src" -B "$out/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  "${isa[@]}" >"$out/cmake-configure.log"
cmake --build "$out/build" --target llama-server llama-bench -j "$jobs"
mkdir -p "$out/bin"
cp "$out/build/bin/llama-server" "$out/build/bin/llama-bench" "$out/bin/"
{
  echo "source: $version (PyPI sdist, vendor/llama.cpp)"
  echo "cmake: -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF ${isa[*]}"
} >"$out/BUILD_INFO"
cat "$out/BUILD_INFO"
"$out/bin/llama-server" --version 2>&1 | head -2 || true
