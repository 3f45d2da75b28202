"""Training cost of each algorithm relative to supervised-only, measured in one sitting.

Separate benchmark runs do not compare in speed: they ran at other times, beside other runs. Here the
algorithms train in turn, one process at a time, for a few short rounds (round-robin, so a change of load
on the machine falls on all of them alike), on the same data and profile; each round is a fresh training
process, so its peak memory is its own. Printed (medians over rounds): seconds per iteration and that cost
relative to supervised-only (the same labeled batch, plus each method's unlabeled work; the one validation at
the end of each round is the same for all), training images per second as the trainer counts them (labeled
and unlabeled), peak memory and the share of time spent waiting for data.

Run from the repository root with the package installed (nothing else running on the machine):

    python scripts/speed_ratios.py --datalist data_manifests/ham10000/ham10000.json \\
        --data_root ../shared/data/ham10000 --modality dermoscopy --labels 0.2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from monai_ssl_ext.bundle.runner import find_bundle, run_workflow, workflow_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="baselines_ultrasound")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--algorithms", default="supervised,mean_teacher,fixmatch,flexmatch")
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--modality", default=None)
    parser.add_argument("--labels", default="0.2", help="label budget: a count, or a fraction below 1")
    parser.add_argument("--iterations", type=int, default=60, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="folder of the runs (default: a temporary one)")
    args = parser.parse_args()

    bundle = find_bundle(args.bundle)
    algorithms = args.algorithms.split(",")
    out = Path(args.output or tempfile.mkdtemp(prefix="speed_"))
    budget = float(args.labels) if "." in args.labels else int(args.labels)
    summaries: dict[str, list[dict]] = {a: [] for a in algorithms}
    started, total = time.perf_counter(), args.rounds * len(algorithms)
    for r in range(args.rounds):
        for algorithm in algorithms:
            run_dir = out / f"round{r}" / algorithm
            overrides = {
                "algorithm_name": algorithm,
                "datalist": str(Path(args.datalist).resolve()),
                "data_root": str(Path(args.data_root).resolve()),
                "label_budget": budget,
                "num_iterations": args.iterations,
                "val_interval": args.iterations,
                "ckpt_dir": str(run_dir / "models"),
                "output_dir": str(run_dir),
                **({"modality": args.modality} if args.modality else {}),
            }
            cmd = workflow_command(bundle, "training", args.profile, overrides=overrides)
            run_workflow(cmd, run_dir / "train.log")
            summaries[algorithm].append(json.loads((run_dir / "train_summary.json").read_text()))
            done = r * len(algorithms) + algorithms.index(algorithm) + 1
            eta = (time.perf_counter() - started) / done * (total - done)
            print(
                f"[{done}/{total}] round {r + 1} {algorithm}: "
                f"{summaries[algorithm][-1]['train_images_per_s']:.1f} img/s | ETA {eta / 60:.1f} min",
                flush=True,
            )

    per_it = {a: statistics.median(s["wall_s"] / s["iterations_this_run"] for s in summaries[a]) for a in algorithms}
    base = per_it.get("supervised")
    print(f"\n{args.iterations} iterations x {args.rounds} rounds each, profile {args.profile}, {args.datalist}")
    print(f"{'algorithm':<14}{'s/iteration':>12}{'vs supervised':>15}{'img/s':>8}{'peak MiB':>10}{'data wait':>11}")
    for a in algorithms:
        ratio = f"{per_it[a] / base:.2f}x" if base else "-"
        speed = statistics.median(s["train_images_per_s"] for s in summaries[a])
        peak = max(s["peak_memory_mb"] for s in summaries[a])
        wait = statistics.median(s["data_wait_share"] for s in summaries[a])
        print(f"{a:<14}{per_it[a]:>12.3f}{ratio:>15}{speed:>8.1f}{peak:>10.0f}{wait * 100:>10.0f}%")
    print(f"\nruns: {out}")


if __name__ == "__main__":
    main()
