"""What federation gives: each site alone, federated (FLARE's simulator) and centralised, on the same test images.

The sites come from ``monai-ssl fl_sites`` (:mod:`monai_ssl_ext.fl.partition`): ``sites.json``, a manifest per
site (each with the whole test split) and, per label seed, ``pooled_seed<s>.json``. For every algorithm and seed
:func:`run_federated_benchmark` trains and tests three arms under one profile:

- *alone*: each site on its own manifest and label budget (the benchmark harness, a folder per site);
- *centralised*: the pooled manifest of the seed, label budget ``all`` (the union of the sites' labeled draws);
- *federated*: the FedAvg job of ``monai-ssl fl_job`` over the same sites, budgets and seed, run in FLARE's
  simulator; its best global model (selected on the sites' validation) tested on the test split.

A site's labeled draw is a pure function of its training split, budget and seed, so the arms train on the same
labeled images. The federated arm trains ``rounds`` rounds of ``num_iterations / rounds`` iterations at each site:
every site runs the profile's iterations, as it would alone. Every arm is resumable (finished runs are skipped);
``results.md`` compares the arms of each algorithm with its federated arm, paired on the test images.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_ssl_ext.benchmark.harness import (
    BenchmarkSpec,
    _only_writer,
    _progress_echo,
    load_results,
    run_benchmark,
    save_results,
)
from monai_ssl_ext.benchmark.merge import variant_name
from monai_ssl_ext.benchmark.tables import results_markdown
from monai_ssl_ext.bundle.runner import find_bundle, run_workflow, workflow_command
from monai_ssl_ext.engines.handlers import format_duration
from monai_ssl_ext.metrics.report import headline_metrics, per_class_recall
from monai_ssl_ext.utils.atomic import write_text

__all__ = ["FederatedBenchmarkSpec", "arm_name", "run_federated_benchmark"]

logger = logging.getLogger("monai_ssl_ext.benchmark")

FEDERATED, CENTRALISED = "federated", "centralised"


def arm_name(algorithm: str, arm: str) -> str:
    """How a run of ``algorithm`` in an arm (``federated``, ``centralised`` or ``<site> alone``) is named."""
    return variant_name(algorithm, arm)


@dataclass
class FederatedBenchmarkSpec:
    """What to run.

    Attributes:
        sites_dir: the folder ``monai-ssl fl_sites`` wrote (``sites.json``, ``site-<k>.json``,
            ``pooled_seed<s>.json`` for every seed asked for here).
        bundle: bundle folder or name.
        algorithms: values of the bundle's ``algorithm_name`` key.
        seeds: label seeds (each site draws its labeled subset with it).
        profile: ``smoke``, ``cpu`` or ``full``.
        rounds: FedAvg rounds; each site trains ``num_iterations / rounds`` iterations per round.
        output_dir: folder of the three arms' folders and the combined ``results.json`` and ``results.md``.
        threads: sites the simulator trains at once (default: all of them).
        teacher: the EMA teacher's policy across rounds (``global`` or ``local``, docs/federated.md).
        fedprox_mu: FedProx's proximal weight (0: FedAvg).
        overrides: further bundle settings of every arm.
        command: the command line that started the benchmark (recorded in ``results.md``).
    """

    sites_dir: str
    bundle: str
    algorithms: Sequence[str]
    seeds: Sequence[int]
    profile: str = "cpu"
    rounds: int = 10
    output_dir: str = "runs/federated_benchmark"
    threads: int | None = None
    teacher: str = "global"
    fedprox_mu: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def _site_files(spec: FederatedBenchmarkSpec) -> tuple[Path, dict]:
    """The sites file and its sites; every pooled manifest asked for must be there before anything trains."""
    from monai_ssl_ext.fl.sites import check_site, load_sites

    sites_file = Path(spec.sites_dir) / "sites.json"
    sites = load_sites(sites_file)
    for site in sites.values():
        check_site(site)
    for seed in spec.seeds:
        pooled = Path(spec.sites_dir) / f"pooled_seed{seed}.json"
        if not pooled.is_file():
            raise FileNotFoundError(
                f"{pooled}: no pooled manifest for seed {seed}; write it with monai-ssl fl_sites ... --seeds "
                f"{','.join(str(s) for s in spec.seeds)}"
            )
    return sites_file, sites


def _local_iterations(spec: FederatedBenchmarkSpec, configs: Sequence[str]) -> int:
    """The profile's ``num_iterations`` shared out over the rounds (each site trains as long as it would alone)."""
    from monai_ssl_ext.fl.job import bundle_setting

    total = int(bundle_setting(spec.bundle, configs, spec.overrides, "num_iterations"))
    if total % spec.rounds:
        raise ValueError(f"{total} iterations of the profile {spec.profile} do not divide into {spec.rounds} rounds")
    return total // spec.rounds


def _federated_run(
    spec: FederatedBenchmarkSpec, sites_file: Path, sites: dict, algorithm: str, seed: int, run_dir: Path
) -> dict:
    """Write the job, simulate it, test its best global model; return the run's record."""
    from monai_ssl_ext.fl.global_model import export_global_model
    from monai_ssl_ext.fl.job import write_job

    configs = ["train.json", f"profiles/{spec.profile}.json"]
    local_iterations = _local_iterations(spec, configs)
    shutil.rmtree(run_dir / "workspace", ignore_errors=True)  # an interrupted simulation starts again
    settings = {**spec.overrides, "algorithm_name": algorithm, "seed": seed}
    job = write_job(
        spec.bundle, sites_file, run_dir / "job", rounds=spec.rounds, local_iterations=local_iterations,
        configs=configs, settings=settings, teacher=spec.teacher, fedprox_mu=spec.fedprox_mu,
    )  # fmt: skip
    names = list(sites)
    threads = spec.threads or len(names)
    simulate = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(run_dir / "workspace"),
                "-n", str(len(names)), "-t", str(threads), "-c", ",".join(names)]  # fmt: skip
    train_s = run_workflow(simulate, run_dir / "simulator.log", echo=_progress_echo(f"{algorithm} seed {seed}"))
    server = run_dir / "workspace" / "server" / "simulate_job" / "app_server"
    # the best global model by the sites' validation metric; the last one when no round was validated
    found = [server / m for m in ("best_FL_global_model.pt", "FL_global_model.pt") if (server / m).is_file()]
    if not found:
        raise RuntimeError(f"{run_dir / 'simulator.log'}: the federation ended without a global model (a site failed?)")
    model = found[0]
    # the global model beside the first site's trained configuration (the test split is every site's)
    trained = export_global_model(model, run_dir / "workspace" / names[0] / "models", run_dir / "global")
    eval_overrides = {
        "ckpt_dir": str(trained),
        "output_dir": str(run_dir),
        "eval_split": "test",
        "eval_output_dir": str(run_dir / "eval_test"),
        **spec.overrides,
    }
    eval_cmd = workflow_command(find_bundle(spec.bundle), "evaluating", overrides=eval_overrides)
    eval_s = run_workflow(eval_cmd, run_dir / "evaluate.log")
    report = json.loads((run_dir / "eval_test" / "metrics.json").read_text())
    summaries = [
        json.loads(path.read_text())
        for name in names
        for path in sorted((run_dir / "workspace" / name).glob("**/train_summary.json"))
    ]
    speeds = [s["train_images_per_s"] for s in summaries if s.get("train_images_per_s")]
    memory = [s["peak_memory_mb"] for s in summaries if s.get("peak_memory_mb")]
    return {
        "bundle": find_bundle(spec.bundle).name,
        "algorithm": algorithm,
        "dataset": "federated",
        "labels": "+".join(str(site.label_budget) for site in sites.values()),
        "seed": seed,
        "profile": spec.profile,
        "metrics": headline_metrics(report),
        "per_class_recall": per_class_recall(report),
        # a site's training speed (mean over the sites) and the largest site's memory
        "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "peak_memory_mb": max(memory) if memory else None,
        "wall_s": train_s,
        "eval_wall_s": eval_s,
        "iterations": spec.rounds * local_iterations,
        "rounds": spec.rounds,
        "global_model": model.name,
        "run_dir": str(run_dir),
        "eval_dir": str(run_dir / "eval_test"),
    }


def _run_federated_arm(spec: FederatedBenchmarkSpec, sites_file: Path, sites: dict, out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with _only_writer(out_dir):
        results_path = out_dir / "results.json"
        results = load_results(results_path)
        done = {(r["algorithm"], r["seed"], r["profile"]) for r in results}
        runs = [(a, s) for a in spec.algorithms for s in spec.seeds if (a, s, spec.profile) not in done]
        started = time.perf_counter()
        for n, (algorithm, seed) in enumerate(runs, 1):
            run_dir = out_dir / algorithm / f"seed{seed}"
            eta = (time.perf_counter() - started) / (n - 1) * (len(runs) - n + 1) if n > 1 else float("nan")
            logger.info(f"[federated {n}/{len(runs)}] {algorithm} seed {seed}: {len(sites)} sites, "
                        f"{spec.rounds} rounds ({run_dir}) | ETA {format_duration(eta)}")  # fmt: skip
            results.append(_federated_run(spec, sites_file, sites, algorithm, seed, run_dir))
            save_results(results_path, results)
        return results


def _combined(spec: FederatedBenchmarkSpec, sites: dict, arms: dict[str, list[dict]]) -> list[dict]:
    """The arms' records of the algorithms and seeds asked for, renamed ``algorithm (arm)`` into one group."""
    from monai_ssl_ext.data import Manifest

    first = Manifest.load(next(iter(sites.values())).datalist)
    dataset = f"{first.source.get('partition_of', first.name)}, {len(sites)} sites"
    labels = "+".join(str(site.label_budget) for site in sites.values())
    combined = []
    for arm, records in arms.items():
        for record in records:
            if record["algorithm"] in spec.algorithms and record["seed"] in spec.seeds:
                combined.append({**record, "algorithm": arm_name(record["algorithm"], arm), "dataset": dataset,
                                 "labels": labels})  # fmt: skip
    order = {arm: k for k, arm in enumerate(arms)}
    return sorted(combined, key=lambda r: (spec.algorithms.index(r["algorithm"].rsplit(" (", 1)[0]),
                                           order[r["algorithm"].rsplit(" (", 1)[1][:-1]], r["seed"]))  # fmt: skip


def run_federated_benchmark(spec: FederatedBenchmarkSpec) -> list[dict]:
    """Run the three arms for every algorithm and seed; return the combined records (also in ``results.json``).

    ``output_dir`` gets ``alone/<site>/``, ``centralised/`` and ``federated/`` (each a benchmark folder of its own,
    resumable), then ``results.json`` and ``results.md``: one table of every arm, and per algorithm the paired
    difference of each arm to its federated arm on the same test images.

    Raises:
        FileNotFoundError: the sites file, a site's manifest or data root, or a seed's pooled manifest is missing
            (checked before anything trains).
        ValueError: the profile's iterations do not divide into the rounds.
    """
    sites_file, sites = _site_files(spec)
    out = Path(spec.output_dir)
    configs = ["train.json", f"profiles/{spec.profile}.json"]
    _local_iterations(spec, configs)  # before hours of training, not after
    arms: dict[str, list[dict]] = {}
    for name, site in sites.items():
        alone = BenchmarkSpec(
            bundle=spec.bundle, algorithms=spec.algorithms, seeds=spec.seeds, labels=site.label_budget,
            profile=spec.profile, datalist=site.datalist, data_root=site.data_root,
            # a site's own settings win, as in the job
            output_dir=str(out / "alone" / name), overrides={**spec.overrides, **site.settings}, command=spec.command,
        )  # fmt: skip
        arms[f"{name} alone"] = run_benchmark(alone)
    arms[CENTRALISED] = []
    data_root = next(iter(sites.values())).data_root  # the pooled manifest names the sites' images
    for seed in spec.seeds:
        pooled = BenchmarkSpec(
            bundle=spec.bundle, algorithms=spec.algorithms, seeds=[seed], labels="all", profile=spec.profile,
            datalist=str(Path(spec.sites_dir) / f"pooled_seed{seed}.json"), data_root=data_root,
            output_dir=str(out / CENTRALISED / f"seed{seed}"), overrides=spec.overrides, command=spec.command,
        )  # fmt: skip
        arms[CENTRALISED] += run_benchmark(pooled)
    arms[FEDERATED] = _run_federated_arm(spec, sites_file, sites, out / FEDERATED)
    combined = _combined(spec, sites, arms)
    save_results(out / "results.json", combined)
    baselines = [arm_name(a, FEDERATED) for a in spec.algorithms]
    write_text(out / "results.md", results_markdown(combined, command=spec.command, baselines=baselines))
    logger.info(f"results: {out / 'results.json'} and {out / 'results.md'}")
    return combined
