#!/bin/bash
# Every figure of the semi-supervised baselines under the cpu profile (docs/benchmarks.md), as two streams of runs
# side by side with one thread each on a 2-core machine. Resumable: the harness skips finished runs, so the same
# command continues where a stopped one left off. Seed-major order, so that every algorithm has seed 0 before any
# has seed 1. Run from the repository root with the package installed:
#     bash scripts/cpu_benchmarks.sh [output folder] [data folder] [seeds] [algorithms]
# The default output folder is committed (benchmarks/cpu: results, metrics and per-image predictions as text; weights,
# logs and figures are ignored), so a run that did not finish in one sitting continues from a fresh clone.
set -uo pipefail
out=${1:-benchmarks/cpu}
data=${2:-../shared/data}
seeds=${3:-0 1 2}
algorithms=${4:-supervised,fixmatch,flexmatch,mean_teacher,freematch,softmatch}
export OMP_NUM_THREADS=1
mkdir -p "$out"
bench() {
    local name=$1; shift
    for seed in $seeds; do
        monai-ssl benchmark --profile cpu --algorithms $algorithms --seeds "$seed" --output "$out/$name" "$@" \
            >> "$out/$name.log" 2>&1 || echo "$name seed $seed failed: see $out/$name.log"
    done
}
ham=(--datalist data_manifests/ham10000/ham10000.json --data_root "$data/ham10000" --modality dermoscopy)
xray=(--datalist data_manifests/chest_xray/kermany_pneumonia128.json --data_root "$data/chest_xray/kermany_pneumonia128"
    --modality xray)
busi=(--datalist data_manifests/busi/busi_binary.json --data_root "$data/busi")
( bench ham10000_20 --labels 0.2 "${ham[@]}"; bench busi216 --labels 216 "${busi[@]}" ) &
( bench chest_xray_5 --labels 0.05 "${xray[@]}"; bench busi72 --labels 72 "${busi[@]}" ) &
wait
