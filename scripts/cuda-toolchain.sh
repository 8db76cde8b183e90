#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain for candle's `cuda` feature from Python wheels (no system CUDA needed)
# into DIR (default: .cuda in the checkout, git-ignored), and prints the environment to build with.
# Verified here: candle-core/candle-nn 0.11.1 with `cuda` built on a CPU-only machine this way ran on an
# NVIDIA H200 (driver 580, CUDA 13.0): conv2d fwd+bwd, matmul, GroupNorm.
#
#   eval "$(scripts/cuda-toolchain.sh)"      # then: cargo build --release --features cuda
#
# At run time on the GPU machine the CUDA libraries come from its own Python (PyTorch's wheels):
#   SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
#   export LD_LIBRARY_PATH=$(ls -d $SP/nvidia/*/lib | tr '\n' ':')$LD_LIBRARY_PATH
set -euo pipefail
DIR=${1:-$(cd "$(dirname "$0")/.." && pwd)/.cuda}
PY=${PYTHON:-python3}
if [ ! -x "$DIR/cu13/bin/nvcc" ]; then
  mkdir -p "$DIR"
  # One pip call: the wheels share the nvidia/cu13 folder, and separate --target installs overwrite it.
  "$PY" -m pip install -q --no-deps --target "$DIR/site" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 'nvidia-cuda-cccl==13.0.*' 'nvidia-cuda-crt==13.0.*' \
    'nvidia-nvvm==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' nvidia-cublas nvidia-curand >&2
  ln -sfn "$DIR/site/nvidia/cu13" "$DIR/cu13"
fi
if [ ! -e "$DIR/link/libcuda.so" ]; then
  mkdir -p "$DIR/link"
  # Unversioned names for the linker (candle's cudarc links dynamically).
  for f in "$DIR"/cu13/lib/lib*.so.*; do b=$(basename "$f"); ln -sf "$f" "$DIR/link/${b%%.so.*}.so"; done
  # libcuda.so comes with the driver, which a build machine lacks: a stub with every driver symbol of
  # cuda.h (plus the profiler entry points) satisfies the linker; the real libcuda.so.1 is found at run time.
  { grep -ohE "\bcu[A-Z][A-Za-z0-9_]*\b" "$DIR/cu13/include/cuda.h"; printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop; } \
    | sort -u | awk '{print "void " $1 "(void){}"}' > "$DIR/link/cuda_stub.c"
  cc -shared -fPIC -o "$DIR/link/libcuda.so" -Wl,-soname,libcuda.so.1 "$DIR/link/cuda_stub.c"
fi
echo "export PATH=\"$DIR/cu13/bin:\$PATH\" CUDA_ROOT=\"$DIR/cu13\" CUDA_PATH=\"$DIR/cu13\" CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
echo "export RUSTFLAGS=\"\${RUSTFLAGS:-} -L $DIR/link\""
