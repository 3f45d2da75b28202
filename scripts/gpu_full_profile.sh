#!/bin/bash
# The full profile (224 px, ResNet-18, 3000 iterations) for supervised-only and FixMatch on BUSI at 216 labels
# and HAM10000 at 20 % labels, seed 0, on one GPU. Results: <output>/{busi216,ham10000_20}/results.md and .json,
# the wall time of each part in <output>/timings.txt. Run from the repository root with the package installed:
#     bash scripts/gpu_full_profile.sh [output folder] [data folder]
set -euo pipefail
out=${1:-runs/gpu_full_profile}
data=${2:-../shared/data}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
run() {
    local name=$1; shift
    local start=$SECONDS
    monai-ssl benchmark --profile full --algorithms supervised,fixmatch --seeds 0 --output "$out/$name" "$@" \
        2>&1 | tee "$out/$name.log"
    echo "$name $((SECONDS - start)) s" | tee -a "$out/timings.txt"
}
run busi216 --labels 216 --datalist data_manifests/busi/busi_binary.json --data_root "$data/busi"
run ham10000_20 --labels 0.2 --datalist data_manifests/ham10000/ham10000.json --data_root "$data/ham10000" \
    --modality dermoscopy
cat "$out/timings.txt"
