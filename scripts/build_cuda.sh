#!/usr/bin/env bash
# Build the `--features cuda` binaries on a machine with neither a CUDA toolkit nor a driver,
# from the toolkit's PyPI wheels, for a GPU machine whose driver runs CUDA 13.0 or newer:
#
#   scripts/build_cuda.sh [TOOLKIT_DIR]        (default target/cuda-toolkit; ~2 GB of wheels)
#
# Prints the paths of `propersim` and of the CUDA training tests' binary (tests/train_cuda.rs);
# scripts/gpu_check.sh runs both on the GPU machine. With a system toolkit (nvcc on PATH,
# CUDA_ROOT set) plain `cargo build --release --features cuda` is enough.
#
# Why each piece: nvcc 13.0 with its own nvvm, crt and cccl (a newer nvvm writes PTX that 13.0's
# ptxas and a 13.0 driver refuse: "Unsupported .version 9.5"); candle links cuBLAS, cuRAND, NVRTC
# and the CUDA runtime at build time, so their libraries must be there to link against; and
# libcuda comes with the driver, so a stub of the driver functions the binaries call stands in
# for it at link time (the GPU machine's real one is loaded at run time). The GPU machine needs
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libcudart.so.13 on its library path
# (PyTorch's cu13 wheels carry them).
set -euo pipefail
cd "$(dirname "$0")/.."
tk=$(realpath -m "${1:-target/cuda-toolkit}")
cu=$tk/site/nvidia/cu13
if [ ! -x "$cu/bin/nvcc" ] || [ ! -e "$cu/lib/libcublas.so.13" ]; then
  python3 -m pip install -q --upgrade --target "$tk/site" nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25 nvidia-cuda-nvrtc==13.0.88
fi
link=$tk/link
mkdir -p "$link"
for f in "$cu"/lib/lib*.so.*; do
  b=$(basename "$f")
  ln -sf "$f" "$link/${b%%.so.*}.so"
done

export PATH=$cu/bin:$PATH CUDA_ROOT=$cu CUDA_PATH=$cu CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} LIBRARY_PATH=$link CARGO_PROFILE_RELEASE_DEBUG=0
target=${CARGO_TARGET_DIR:-target}
# The libraries first (nothing linked yet), so the stub can list what they call of the driver.
cargo build --release --features cuda --lib
if [ ! -e "$link/libcuda.so.1" ]; then
  for f in "$target"/release/deps/libcudarc-*.rlib "$target"/release/deps/libcandle_core-*.rlib \
    "$target"/release/build/candle-kernels-*/out/lib*.a; do
    nm -u "$f" 2>/dev/null || true
  done | awk '{print $NF}' | grep -E '^cu[A-Z]' | sort -u | awk '{print "void " $1 "(void) {}"}' >"$tk/libcuda_stub.c"
  cc -shared -fPIC -o "$link/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$tk/libcuda_stub.c"
  ln -sf libcuda.so.1 "$link/libcuda.so"
fi
cargo build --release --features cuda --bin propersim
cargo test --release --features cuda --no-run --test train_cuda 2>&1 | tee "$tk/tests.txt"
echo "propersim: $target/release/propersim"
grep -o '([^)]*train_cuda-[^)]*)' "$tk/tests.txt" | tr -d '()' | sed 's/^/train_cuda: /'
