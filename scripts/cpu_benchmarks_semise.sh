#!/bin/bash
# SEMISE against supervised-only, its contrastive-only variant and FlexMatch (the best baseline of the smoke tables)
# on its network under the cpu profile (docs/benchmarks.md): BUSI normal/benign/malignant and HAM10000, 20 % labels.
# BUSI is read through the manifest that keeps near-duplicate captures of a lesion in one split (busi_grouped.json;
# docs/benchmarks.md says why). Both schedule settings (bundle README, "Choices that are ours"): the shared one
# (representation and fine-tuning as shares of the baselines' 1500 iterations; representation_iterations 0), then
# SEMISE and its contrastive-only variant with 800 representation steps (the profile's default since bundle 0.3.0,
# chosen on validation; the shared setting has 750, and 800 is a multiple of the validation interval) before the
# baselines' 1500 fine-tuning steps and schedule, in a folder of its own (merge it as NAME=FOLDER: README,
# "Benchmarks"); then SEMISE with its encoder frozen during fine-tuning (shared schedule, in the first folder). Each
# setting is given on the command line, so the folders hold what their names say whatever the profile's default.
# Each setting for every seed given, then the next (give one seed at a time for seed-major order); resumable (the
# harness skips finished runs).
# STREAMS=2 (default) runs the two data sets side by side with one thread each on a 2-core machine; STREAMS=1 runs
# them one after the other. Run from the repository root with the package installed:
#     bash scripts/cpu_benchmarks_semise.sh [output folder] [data folder] [seeds]
set -uo pipefail
out=${1:-benchmarks/cpu}
data=${2:-../shared/data}
seeds=${3:-0 1 2}
streams=${STREAMS:-2}
export OMP_NUM_THREADS=1
mkdir -p "$out"
compared=semise,supervised,semise_contrastive_only,flexmatch
bench() {
    local name=$1 algorithms=$2; shift 2
    for seed in $seeds; do
        monai-ssl benchmark --bundle semise_ultrasound --profile cpu --algorithms "$algorithms" --seeds "$seed" \
            --labels 0.2 --output "$out/$name" "$@" >> "$out/$name.log" 2>&1 \
            || echo "$name seed $seed failed: see $out/$name.log"
    done
}
both_schedules() {
    local name=$1; shift
    bench "$name" "$compared" --representation_iterations 0 "$@"
    bench "${name}_separate_schedule" semise,semise_contrastive_only --representation_iterations 800 "$@"
    # the ordering learnt in the representation phases is unlearnt when the encoder is fine-tuned (docs)
    bench "$name" semise_frozen_encoder --representation_iterations 0 "$@"
}
busi() {
    both_schedules semise_busi_20 --datalist data_manifests/busi/busi_grouped.json --data_root "$data/busi"
}
ham() {
    both_schedules semise_ham10000_20 --modality dermoscopy --severity ham10000 \
        --datalist data_manifests/ham10000/ham10000.json --data_root "$data/ham10000"
}
if [ "$streams" = 1 ]; then
    busi; ham
else
    busi & ham & wait
fi
