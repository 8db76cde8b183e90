#!/usr/bin/env bash
# Whole-process timing of `calseg eval` on a BraTS-sized probability map, beside numpy's
# ECE script, in the same minutes (benches/RESULTS.md, "calseg eval, whole process").
#
#   python -m venv /tmp/np && /tmp/np/bin/pip install numpy nibabel
#   /tmp/np/bin/python benches/eval_process/make_fixture.py /tmp/evalfix
#   benches/eval_process/run.sh /tmp/evalfix target/release/calseg /tmp/np/bin/python [OLD_CALSEG]
#
# Prints the median wall and CPU (user+sys) seconds of 7 runs per command, files in the
# page cache (one untimed run first).
set -euo pipefail
dir=$1 calseg=$2 py=$3 old=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_cmd() {
  local name=$1; shift
  "$@" > /dev/null
  local walls=() cpus=()
  for _ in 1 2 3 4 5 6 7; do
    local t
    t=$( { /usr/bin/time -f "%e %U %S" "$@" > /dev/null; } 2>&1 | tail -1)
    walls+=("$(echo "$t" | awk '{print $1}')")
    cpus+=("$(echo "$t" | awk '{print $2 + $3}')")
  done
  printf '%-44s wall %6.3f s   cpu %6.3f s\n' "$name" \
    "$(printf '%s\n' "${walls[@]}" | median)" "$(printf '%s\n' "${cpus[@]}" | median)"
}
cd "$dir"
time_cmd "numpy ECE (np.load + 15 bins)" "$py" "$here/numpy_ece.py" probs.npy labels.npy
for f in probs.npy probs.safetensors probs.nii probs.nii.gz; do
  time_cmd "calseg eval --probs $f" "$calseg" eval --probs "$f" --labels labels.npy --json
  if [ -n "$old" ]; then
    time_cmd "  (before) calseg eval --probs $f" "$old" eval --probs "$f" --labels labels.npy --json
  fi
done
time_cmd "calseg eval --pred labels.nii.gz (hard)" "$calseg" eval --pred labels.nii.gz --labels labels.npy --json
