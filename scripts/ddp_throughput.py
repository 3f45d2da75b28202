"""Training throughput at 1 and N processes (torchrun): does multi-GPU training scale?

Runs the same training budget of a bundle with ``monai-ssl train --nproc N`` for each N of ``--processes`` (the
processes share the budget: each runs ``iterations / N`` steps), one after another, and reads each run's
``train_summary.json``: the images all processes trained on, the wall time of the training loop (validation
included) and images per second. Printed as a table with the speed-up over one process, and saved as
``summary.json`` in ``--work``. On a machine without CUDA the processes use gloo on the CPU cores, which they then
share (``OMP_NUM_THREADS`` is set to cores / N), so a CPU shows the overhead of the collectives, not a speed-up;
the figures that matter come from a GPU machine.

    python scripts/ddp_throughput.py --processes 1,2 [--bundle baselines_ultrasound] [--profile smoke]
        [--iterations 40] [--datalist M --data_root D] [--work runs/ddp_throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run(bundle: str, profile: str, processes: int, iterations: int, work: Path, data: list[str]) -> dict:
    out = work / f"processes{processes}"
    cmd = [sys.executable, "-m", "monai_ssl_ext.cli", "train", bundle, "--algorithm", "fixmatch", "--profile", profile]
    cmd += ["--nproc", str(processes), "--num_iterations", str(iterations), "--val_interval", str(iterations)]
    cmd += ["--output_dir", str(out), "--ckpt_dir", str(out / "models"), *data]
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "train_summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--bundle", default="baselines_ultrasound")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--iterations", type=int, default=40, help="the training budget shared by the processes")
    parser.add_argument("--datalist", help="a manifest (default: the bundle's generated data)")
    parser.add_argument("--data_root")
    parser.add_argument("--work", type=Path, default=Path("runs/ddp_throughput"))
    args = parser.parse_args()
    data = ["--datalist", args.datalist] if args.datalist else []
    data += ["--data_root", args.data_root] if args.data_root else []
    rows = []
    for n in (int(p) for p in args.processes.split(",")):
        summary = run(args.bundle, args.profile, n, args.iterations, args.work, data)
        rows.append({"processes": n, **{k: summary.get(k) for k in ("images_this_run", "wall_s", "train_images_per_s",
                                                                     "peak_memory_mb", "device")}})  # fmt: skip
        print(f"{n} process(es): {summary['images_this_run']} images in {summary['wall_s']:.1f} s, "
              f"{summary['train_images_per_s']:.1f} images/s on {summary['device']}", flush=True)  # fmt: skip
    base = rows[0]["train_images_per_s"]
    print("\n| Processes | Images | Wall (s) | Images/s | Speed-up | Peak MiB (first process) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['images_this_run']} | {r['wall_s']:.1f} | {r['train_images_per_s']:.1f} | "
              f"{r['train_images_per_s'] / base:.2f}x | {r['peak_memory_mb']:.0f} |")  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwritten: {args.work / 'summary.json'}")


if __name__ == "__main__":
    main()
