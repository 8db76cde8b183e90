#!/usr/bin/env bash
# The GPU checks of issue 15, as one script for a machine with an NVIDIA GPU and no Rust.
#
# On the build machine (CPU only is fine):
#   eval "$(scripts/cuda-toolchain.sh)"
#   export CARGO_TARGET_DIR=target-cuda
#   cargo build --release --features cuda --bin calseg
#   cargo test --release -p calseg-seg --features cuda --test gpu --no-run   # prints the test binary
#   mkdir -p gpu-run && cp target-cuda/release/calseg <that test binary> gpu-run/ \
#     && cp ../shared/bench/unet_step_torch.py gpu-run/      # PyTorch's twin, if at hand
# On the GPU machine, from the checkout root:
#   scripts/gpu-check.sh gpu-run OUT_DIR
#
# Writes OUT_DIR/gpu_check.txt: the GPU tests, the U-Net step (2D and 3D) on CUDA beside
# PyTorch's on the same GPU, and the wall time of `calseg demo --quick --device cuda`.
set -uo pipefail
run=${1:?folder with calseg and the gpu test binary}
out=${2:?output folder}
mkdir -p "$out"
log="$out/gpu_check.txt"
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
if [ -n "$SP" ] && [ -d "$SP/nvidia" ]; then
  LD_LIBRARY_PATH=$(ls -d "$SP"/nvidia/*/lib | tr '\n' ':')${LD_LIBRARY_PATH:-}
  export LD_LIBRARY_PATH
fi
{
  echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
  echo "== GPU tests"
  for t in "$run"/gpu-*; do [ -x "$t" ] && "$t" --nocapture --test-threads 1 2>&1; done
  step="bench unet-step --depth 4 --base 16 --in-channels 2 --classes 2 --iters 10 --warmup 2 --device cuda"
  echo "== calseg U-Net step 2D 8x2x128^2"
  "$run/calseg" $step --dims 2 --batch 8 --size 128 2>&1
  echo "== calseg U-Net step 3D 2x2x64^3"
  "$run/calseg" $step --dims 3 --batch 2 --size 64 2>&1
  if [ -f "$run/unet_step_torch.py" ]; then
    echo "== PyTorch 2D / 3D, same GPU"
    python3 "$run/unet_step_torch.py" --device cuda --dims 2 2>&1 | grep MEDIAN
    python3 "$run/unet_step_torch.py" --device cuda --dims 3 --batch 2 --size 64 2>&1 | grep MEDIAN
  fi
  echo "== calseg demo --quick --device cuda"
  /usr/bin/time -f "wall %e s" "$run/calseg" demo --quick --quiet --device cuda --out "$out/demo" 2>&1 | tail -5
} > "$log" 2>&1
cat "$log"
