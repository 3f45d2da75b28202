#!/bin/bash
# What federation gives on BUSI benign/malignant dealt to three simulated hospitals (40, 80 and 96 labels; whole
# lesions; every site keeps the whole test split): each site alone, FedAvg in FLARE's simulator (10 rounds) and the
# sites' labels pooled, under the cpu profile (docs/federated.md). FixMatch on the baselines' network, then Hermes
# on its own. Seed-major; resumable (every arm skips its finished runs). One stream: the simulator trains one site
# at a time with one thread. Run from the repository root with the package installed (the fl extra):
#     bash scripts/cpu_benchmarks_federated.sh [output folder] [data folder] [seeds]
set -uo pipefail
out=${1:-benchmarks/cpu}
data=${2:-../shared/data}
seeds=${3:-0 1 2}
export OMP_NUM_THREADS=1
[ -d "$data/busi" ] || { echo "no BUSI images in $data/busi" >&2; exit 1; }
sites=$out/fl_busi_sites/sites
mkdir -p "$sites"
all_seeds=$(echo "$seeds" | tr ' ' ',')
monai-ssl fl_sites data_manifests/busi/busi_binary_grouped.json "$sites" --label_budgets 40,80,96 \
    --data_root "$(realpath "$data/busi")" --seeds "$all_seeds" > /dev/null || exit 1
for seed in $seeds; do
    for method in baselines_ultrasound:fixmatch hermes_ultrasound:hermes; do
        bundle=${method%%:*} algorithm=${method##*:}
        monai-ssl fl_benchmark "$sites" --bundle "$bundle" --algorithms "$algorithm" --seeds "$seed" --profile cpu \
            --rounds 10 --threads 1 --output "$out/fl_busi_sites/$algorithm" >> "$out/fl_busi_sites/$algorithm.log" 2>&1 \
            || echo "$algorithm seed $seed failed: see $out/fl_busi_sites/$algorithm.log"
    done
done
