#!/bin/bash
# The evidence the three new methods still need under the cpu profile (docs/benchmarks.md), as two streams of runs
# side by side with one thread each on a 2-core machine; seed-major, resumable (the harness skips finished runs):
#   - HSC, HAM10000 20 %: the later start of its calibrations (calibration_start 0.2 and 0.4; the default 0 is the
#     table's hsc) and a context smoothed towards uniform (context_smoothing 0.1), seed 0, each in a folder of its
#     own (merge as NAME=FOLDER) and chosen on validation only (each record's best_val_metric); then the table's
#     runs for every seed (FixMatch beside it);
#   - CLCP-MT: CAPR's progress as FlexMatch's learning effect (progress_measure confident_share), seed 0 in a
#     folder of its own, to be chosen on validation; FlexMatch on HAM10000 20 % for every seed; chest X-ray 5 %,
#     CLCP-MT and the four baselines on its network;
#   - DSRPGC, HAM10000 20 %: FlexMatch and the four ablations, then every algorithm for seeds 1 and 2.
# Run from the repository root with the package installed:
#     bash scripts/cpu_benchmarks_methods.sh [output folder] [data folder] [seeds]
set -uo pipefail
out=${1:-benchmarks/cpu}
data=${2:-../shared/data}
seeds=${3:-0 1 2}
export OMP_NUM_THREADS=1
mkdir -p "$out"
ham=(--labels 0.2 --datalist data_manifests/ham10000/ham10000.json --data_root "$data/ham10000" --modality dermoscopy)
xray=(--labels 0.05 --datalist data_manifests/chest_xray/kermany_pneumonia128.json
      --data_root "$data/chest_xray/kermany_pneumonia128" --modality xray)
bench() {
    local name=$1 bundle=$2 algorithms=$3 run_seeds=$4; shift 4
    for seed in $run_seeds; do
        monai-ssl benchmark --bundle "$bundle" --profile cpu --algorithms "$algorithms" --seeds "$seed" \
            --output "$out/$name" "$@" >> "$out/$name.log" 2>&1 || echo "$name seed $seed failed: see $out/$name.log"
    done
}
hsc_and_clcpmt() {
    for candidate in calibration_start=0.2 calibration_start=0.4 context_smoothing=0.1; do
        key=${candidate%%=*} value=${candidate##*=}
        bench "hsc_ham10000_20_$key$value" hsc_histology hsc 0 "${ham[@]}" "--algorithms#hsc#$key" "$value"
    done
    bench hsc_ham10000_20 hsc_histology supervised,hsc,fixmatch "$seeds" "${ham[@]}"
    bench clcpmt_ham10000_20_progress_measureconfident_share clcpmt_dermoscopy clcpmt 0 "${ham[@]}" \
        "--algorithms#clcpmt#progress_measure" confident_share
    bench clcpmt_dermoscopy_ham10000_20 clcpmt_dermoscopy flexmatch "$seeds" "${ham[@]}"
    bench clcpmt_chest_xray_5 clcpmt_dermoscopy supervised,clcpmt,mean_teacher,fixmatch,flexmatch "$seeds" "${xray[@]}"
}
dsrpgc() {
    bench dsrpgc_ham10000_20 dsrpgc_dermoscopy flexmatch,dsrpgc_no_meta,dsrpgc_no_dsr,dsrpgc_no_pgc,dsrpgc_no_fusion 0 \
        "${ham[@]}"
    bench dsrpgc_ham10000_20 dsrpgc_dermoscopy supervised,dsrpgc,fixmatch,mean_teacher,flexmatch "$seeds" "${ham[@]}"
}
hsc_and_clcpmt & dsrpgc & wait
