#!/bin/bash
# Hermes against supervised-only, FixMatch and FlexMatch on its two-branch network under the cpu profile
# (docs/benchmarks.md), BUSI benign/malignant at 216 and 72 labels, then the ablation of each component changed to
# the authors' training (one optimiser with shared gradients, and each of the two alone; the AND pixel rule; the
# earlier consistency term).
# BUSI is read through the manifest that keeps near-duplicate captures of a lesion in one split
# (busi_binary_grouped.json; docs/benchmarks.md says why). Seed-major; resumable (the harness skips finished runs).
# STREAMS=2 (default) runs two streams side by side with one thread each on a 2-core machine; STREAMS=1 runs them
# one after the other. Run from the repository root with the package installed:
#     bash scripts/cpu_benchmarks_hermes.sh [output folder] [data folder] [seeds]
set -uo pipefail
out=${1:-benchmarks/cpu}
data=${2:-../shared/data}
seeds=${3:-0 1 2}
streams=${STREAMS:-2}
export OMP_NUM_THREADS=1
mkdir -p "$out"
busi=(--bundle hermes_ultrasound --profile cpu --datalist data_manifests/busi/busi_binary_grouped.json
      --data_root "$data/busi")
bench() {
    local name=$1 labels=$2 algorithms=$3; shift 3
    mkdir -p "$(dirname "$out/$name")"  # the ablations' logs sit in a folder of their own
    for seed in $seeds; do
        monai-ssl benchmark --algorithms "$algorithms" --seeds "$seed" --labels "$labels" --output "$out/$name" \
            "${busi[@]}" "$@" >> "$out/$name.log" 2>&1 || echo "$name seed $seed failed: see $out/$name.log"
    done
}
compared=supervised,fixmatch,flexmatch,hermes
first() {
    bench hermes_busi216 216 "$compared"
    # supervised-only under the same training too: the optimisers change the baseline as well as the method
    bench hermes_ablation_busi216/one_optimizer_shared_gradients 216 hermes,supervised --per_branch_optimizers false \
        --separate_task_gradients false
}
second() {
    bench hermes_busi72 72 "$compared"
    bench hermes_ablation_busi216/components 216 hermes_pixel_rule_and,hermes_consistency_all_views
    # which of the two training changes carries the difference: each one alone, supervised-only beside it (the
    # gradient routing is a network setting, so it changes the baseline too)
    bench hermes_ablation_busi216/one_optimizer 216 hermes,supervised --per_branch_optimizers false
    bench hermes_ablation_busi216/shared_gradients 216 hermes,supervised --separate_task_gradients false
}
if [ "$streams" = 1 ]; then
    first; second
else
    first & second & wait
fi
