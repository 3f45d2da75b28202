"""How ``monai-ssl predict`` holds up over a large DICOM export: throughput, memory over the run, latency per instance.

Builds an export of ``--instances`` Ultrasound Image Storage instances (one study, series of 50, files without a
suffix as scanners write them) from the BUSI images when ``../shared/data/busi`` is there, else from the generated
ultrasound set; trains a checkpoint for a few iterations unless ``--checkpoint`` names one (the figures measure the
pipeline, not the weights); then runs ``monai-ssl predict`` on the export as a user would, in its own process, and
watches it from outside every ``--sample_s`` seconds: the resident memory of the process and its children, and the
DICOM SRs written so far. Printed, and saved as ``summary.json`` and ``load.png`` in ``--work``:

- images per second over the whole command (process start to exit) and in the steady part (first SR to last);
- resident memory at a quarter, half and all of the results, and its peak: flat means no growth with the
  number of instances;
- latency per instance: ``predict`` reads, infers and writes in batches, one after another, so an instance's
  latency is the time from the end of the previous batch's writing to its own SR being written (the first batch,
  which carries the start-up, is reported apart).

    python scripts/predict_load.py --instances 1000 --work runs/predict_load [--checkpoint CKPT --bundle NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from monai_ssl_ext.io.dicom_writer import write_ultrasound_instance

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi"
SERIES_SIZE = 50


def _source_images(work: Path) -> list[Path]:
    """BUSI's benign and malignant images, else the generated ultrasound set."""
    if BUSI.is_dir():
        return sorted(p for c in ("benign", "malignant") for p in (BUSI / c).glob("*).png"))
    from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

    manifest = ensure_synthetic_dataset(work / "synthetic", num_images=200, image_size=256)
    return sorted(manifest.parent.rglob("*.png"))


def make_export(root: Path, count: int, sources: list[Path]) -> Path:
    """``count`` instances cycling through ``sources``; an export already complete is kept."""
    if root.is_dir() and sum(1 for p in root.rglob("IM*") if p.is_file()) == count:
        return root
    from pydicom import uid

    study = uid.generate_uid()
    series = ""
    for n in range(count):
        if n % SERIES_SIZE == 0:
            series = uid.generate_uid()
        pixels = np.asarray(Image.open(sources[n % len(sources)]).convert("L"))
        write_ultrasound_instance(root / f"SE{n // SERIES_SIZE:03d}" / f"IM{n:05d}", pixels, study, series, n + 1)
    return root


def train_checkpoint(work: Path, bundle: str, profile: str, iterations: int) -> Path:
    """A checkpoint of supervised-only after ``iterations`` on BUSI (or the generated set), with its configuration."""
    ckpt_dir = work / "model"
    if (ckpt_dir / "model.pt").is_file():
        return ckpt_dir / "model.pt"
    data = ["--datalist", str(REPO / "data_manifests/busi/busi_binary.json"), "--data_root", str(BUSI)]
    cmd = [sys.executable, "-m", "monai_ssl_ext.cli", "train", bundle, "--algorithm", "supervised"]
    cmd += ["--profile", profile, *(data if BUSI.is_dir() else [])]
    cmd += ["--num_iterations", str(iterations), "--val_interval", str(iterations)]
    cmd += ["--output_dir", str(work / "train"), "--ckpt_dir", str(ckpt_dir)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return ckpt_dir / "model.pt"


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that has just exited
            total += p.memory_info().rss
    return total


def run_predict(export: Path, checkpoint: Path, bundle: str, output: Path, sample_s: float, count: int) -> dict:
    """Run ``monai-ssl predict`` and sample its memory and its written SRs until it exits."""
    cmd = [sys.executable, "-m", "monai_ssl_ext.cli", "predict", str(export), "--bundle", bundle]
    cmd += ["--checkpoint", str(checkpoint), "--output", str(output)]
    samples: list[tuple[float, int, int]] = []  # (seconds since start, bytes resident, SRs written)
    results = output / "dicom"
    start = time.perf_counter()
    with open(output.parent / "predict.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        last_print = 0.0
        while proc.poll() is None:
            written = sum(1 for _ in results.glob("SR_*.dcm")) if results.is_dir() else 0
            now = time.perf_counter() - start
            samples.append((now, _tree_rss(watched), written))
            if now - last_print >= 10:
                eta = f"{(count - written) * now / written:.0f} s" if written else "?"
                print(f"{now:6.0f} s: {written}/{count} results, {samples[-1][1] / 2**20:.0f} MiB, ETA {eta}")
                last_print = now
            time.sleep(sample_s)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"monai-ssl predict failed ({proc.returncode}); see {output.parent / 'predict.log'}")
    return {"wall_s": wall, "samples": samples, "start": start}


def batch_latencies(sr_files: list[Path], batch_size: int) -> tuple[list[float], float]:
    """Per instance (first batch left out), seconds from the previous batch's last write to its own SR; and the
    first batch's last write since the first SR (its own spread)."""
    times = sorted(p.stat().st_mtime for p in sr_files)
    batches = [times[i : i + batch_size] for i in range(0, len(times), batch_size)]
    latencies = [t - previous[-1] for previous, batch in itertools.pairwise(batches) for t in batch]
    return latencies, batches[0][-1] - batches[0][0]


def _rss_at(samples: list[tuple[float, int, int]], written: int) -> float:
    """MiB resident at the first sample with ``written`` results or more."""
    return next(rss for _, rss, n in samples if n >= written) / 2**20


def plot(samples: list[tuple[float, int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [s[1] / 2**20 for s in samples], color="tab:blue")
    ax.set_xlabel("seconds since the command started")
    ax.set_ylabel("resident memory (MiB)", color="tab:blue")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(t, [s[2] for s in samples], color="tab:orange")
    right.set_ylabel("DICOM SRs written", color="tab:orange")
    ax.set_title("monai-ssl predict over a DICOM export")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("runs/predict_load"))
    parser.add_argument("--bundle", default="baselines_ultrasound")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (train_config.json beside it)")
    parser.add_argument("--profile", default="cpu", help="profile of the checkpoint trained when none is given")
    parser.add_argument("--train_iterations", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=16, help="the inference batch size of the bundle")
    parser.add_argument("--sample_s", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    export = make_export(args.work / "export", args.instances, _source_images(args.work))
    print(f"export: {args.instances} instances in {export}")
    checkpoint = args.checkpoint or train_checkpoint(args.work, args.bundle, args.profile, args.train_iterations)
    output = args.work / "predict"
    if output.exists():
        import shutil

        shutil.rmtree(output)
    run = run_predict(export, checkpoint, args.bundle, output, args.sample_s, args.instances)
    srs = sorted((output / "dicom").glob("SR_*.dcm"))
    if len(srs) != args.instances:
        raise SystemExit(f"{len(srs)} SRs for {args.instances} instances; see {args.work / 'predict.log'}")
    mtimes = sorted(p.stat().st_mtime for p in srs)
    steady_s = mtimes[-1] - mtimes[0]
    latencies, first_batch_spread = batch_latencies(srs, args.batch_size)
    samples = run["samples"]
    first_result_s = next(t for t, _, n in samples if n > 0)
    quantiles = statistics.quantiles(latencies, n=20)
    summary = {
        "instances": args.instances,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "wall_s": run["wall_s"],
        "images_per_s_whole_command": args.instances / run["wall_s"],
        "seconds_to_first_result": first_result_s,
        "images_per_s_steady": (args.instances - 1) / steady_s,
        "rss_mib_at_25_50_100_percent": [_rss_at(samples, args.instances * q // 100) for q in (25, 50, 100)],
        "peak_rss_mib": max(s[1] for s in samples) / 2**20,
        "latency_s_median": statistics.median(latencies),
        "latency_s_p95": quantiles[18],
        "first_batch_spread_s": first_batch_spread,
    }
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(samples, args.work / "load.png")
    rss = ", ".join(f"{v:.0f}" for v in summary["rss_mib_at_25_50_100_percent"])
    print(
        f"{args.instances} instances, {args.threads} threads, batch {args.batch_size}: "
        f"{summary['wall_s']:.1f} s in all ({summary['images_per_s_whole_command']:.1f} images/s), first result "
        f"after {first_result_s:.1f} s, then {summary['images_per_s_steady']:.1f} images/s; resident memory at "
        f"25/50/100 % of the results {rss} MiB (peak {summary['peak_rss_mib']:.0f}); latency per instance median "
        f"{summary['latency_s_median'] * 1000:.0f} ms, 95th percentile {summary['latency_s_p95'] * 1000:.0f} ms"
    )
    print(f"written: {args.work / 'summary.json'}, {args.work / 'load.png'}")


if __name__ == "__main__":
    main()
