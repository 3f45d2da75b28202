#!/bin/bash
# The ablation of the cpu profile's recipe on HAM10000 at 20 % labels (docs/benchmarks.md): each switch turned
# back to the plain setting, everything else as in the profile. Switches that change supervised-only too (EMA
# evaluation, class-balanced sampling, weight decay on norms and biases) run both algorithms, so the table shows
# whether the gain of FixMatch survives; the two that only touch the unlabeled branch run FixMatch alone and are
# paired with the full recipe's FixMatch of benchmarks/cpu/ham10000_20. Two streams side by side with one thread
# each, seed-major, resumable (the harness skips finished runs). Run from the repository root:
#     bash scripts/cpu_ablations.sh [output folder] [data folder] [seeds]
set -uo pipefail
out=${1:-benchmarks/cpu/ablation_ham10000_20}
data=${2:-../shared/data}
seeds=${3:-0 1 2}
export OMP_NUM_THREADS=1
mkdir -p "$out"
ham=(--profile cpu --labels 0.2 --datalist data_manifests/ham10000/ham10000.json --data_root "$data/ham10000"
    --modality dermoscopy)
ablate() {
    local name=$1 algorithms=$2; shift 2
    for seed in $seeds; do
        monai-ssl benchmark --algorithms "$algorithms" --seeds "$seed" --output "$out/$name" "${ham[@]}" "$@" \
            >> "$out/$name.log" 2>&1 || echo "$name seed $seed failed: see $out/$name.log"
    done
}
( ablate no_ema_eval supervised,fixmatch --ema_eval false
  ablate strong_view_photometric fixmatch --strong_view photometric ) &
( ablate uniform_sampling supervised,fixmatch --labeled_sampling uniform
  ablate decay_norm_and_bias supervised,fixmatch --decay_norm_and_bias true
  ablate unlabeled_excludes_labeled fixmatch --unlabeled_includes_labeled false ) &
wait
