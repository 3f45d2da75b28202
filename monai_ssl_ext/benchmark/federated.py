"""What federation gives: each site alone, federated (FLARE's simulator) and centralised, on the same test images.

The sites come from ``monai-ssl fl_sites`` (:mod:`monai_ssl_ext.fl.partition`): ``sites.json``, a manifest per
site (each with the whole test split) and, per label seed, ``pooled_seed<s>.json``. For every algorithm and seed
:func:`run_federated_benchmark` trains and tests three arms under one profile:

- *alone*: each site on its own manifest and label budget (the benchmark harness, a folder per site);
- *centralised*: the pooled manifest of the seed, label budget ``all`` (the union of the sites' labeled draws);
- *federated*: the FedAvg job of ``monai-ssl fl_job`` over the same sites, budgets and seed, run in FLARE's
  simulator, its global model tested on the test split.

A site's labeled draw is a pure function of its training split, budget and seed, so the arms train on the same
labeled images. Each site trains the profile's iterations in every arm: the federated arm runs ``rounds`` rounds of
``num_iterations / rounds`` iterations at each site.

Model selection is on validation in every arm. The alone and centralised arms keep their best validated
checkpoint; in the federation each site validates the global model it receives at the start of a round, so FLARE's
"best" global model is one from before the last round's training, and the final one is never validated. Both are
therefore validated here on the sites' pooled validation split and the better one is tested.

Every arm is resumable (finished runs are skipped); ``results.md`` compares every arm with the federated one of
each algorithm, paired on the test images.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_ssl_ext.benchmark.harness import (
    BenchmarkSpec,
    evaluate_model,
    load_results,
    only_writer,
    progress_echo,
    run_benchmark,
    save_results,
)
from monai_ssl_ext.benchmark.merge import variant_name
from monai_ssl_ext.benchmark.tables import results_markdown
from monai_ssl_ext.bundle.runner import find_bundle, run_workflow
from monai_ssl_ext.engines.handlers import format_duration
from monai_ssl_ext.metrics.report import headline_metrics, per_class_recall, selection_value
from monai_ssl_ext.utils.atomic import write_text

__all__ = ["FederatedBenchmarkSpec", "FederatedRunError", "arm_name", "run_federated_benchmark"]

logger = logging.getLogger("monai_ssl_ext.benchmark")

FEDERATED, CENTRALISED = "federated", "centralised"
#: what the benchmark sets per arm: an override or a site's own setting of these would make the arms differ
RESERVED_SETTINGS = ("algorithm_name", "seed", "datalist", "data_root", "label_budget", "ckpt_dir", "output_dir")
#: what the job sets at every site (the round lengths)
ROUND_SETTINGS = ("num_iterations", "val_interval")
GLOBAL_MODELS = ("best_FL_global_model.pt", "FL_global_model.pt")


class FederatedRunError(RuntimeError):
    """The federated arm cannot run (no NVIDIA FLARE) or did not finish (no global model, or a site trained fewer
    iterations than the rounds ask)."""


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
        output_dir: folder of the three arms' folders and the combined ``results.json`` and ``results.md``; it
            belongs to one partition (``fl_sites`` into another folder for another).
        threads: sites the simulator trains at once (default: all of them).
        teacher: the EMA teacher's policy across rounds (``global`` or ``local``, docs/federated.md).
        fedprox_mu: FedProx's proximal weight (0: FedAvg).
        overrides: further bundle settings of every arm (a site's own ``settings`` apply to it alone and in the
            federation; the centralised arm has only these).
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

    @property
    def configs(self) -> list[str]:
        """The bundle configs every arm trains with."""
        return ["train.json", f"profiles/{self.profile}.json"]

    def federation(self) -> dict[str, Any]:
        """The settings that make one federated run differ from another of the same algorithm and seed."""
        return {"rounds": self.rounds, "teacher": self.teacher, "fedprox_mu": float(self.fedprox_mu)}


def _check_settings(spec: FederatedBenchmarkSpec, sites: Mapping) -> None:
    reserved = sorted(set(spec.overrides) & set(RESERVED_SETTINGS))
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by the benchmark for each arm, not an override")
    for site in sites.values():
        clash = sorted(set(site.settings) & {*RESERVED_SETTINGS, *ROUND_SETTINGS})
        if clash:
            raise ValueError(f"site {site.name}: its settings {', '.join(clash)} are set by the benchmark for each arm")


def _check_pooled(spec: FederatedBenchmarkSpec, sites: Mapping) -> None:
    """Every seed's pooled manifest exists and pools these sites at these budgets, from the same partition."""
    from monai_ssl_ext.data import Manifest

    site_manifests = [Manifest.load(site.datalist) for site in sites.values()]
    expected = {
        "pooled_sites": [m.name for m in site_manifests],
        "partition_seed": site_manifests[0].source.get("partition_seed"),
        "label_budgets": [site.label_budget for site in sites.values()],
    }
    for seed in spec.seeds:
        path = Path(spec.sites_dir) / f"pooled_seed{seed}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no pooled manifest for seed {seed}; write it with monai-ssl fl_sites ... --seeds "
                f"{','.join(str(s) for s in spec.seeds)}"
            )
        source = Manifest.load(path).source
        differ = [k for k, v in expected.items() if source.get(k) != v]
        if differ or source.get("label_seed") != seed:
            raise ValueError(
                f"{path}: pools other sites than sites.json ({', '.join(differ) or 'label_seed'} differ); write the "
                "sites and pooled manifests again with one monai-ssl fl_sites call"
            )


def _check_federation(spec: FederatedBenchmarkSpec, sites_file: Path) -> int:
    """What would fail the federated arm after hours of the others: FLARE, the rounds, the job. Its round length."""
    from monai_ssl_ext.fl.job import bundle_setting, write_job

    if importlib.util.find_spec("nvflare") is None:
        raise FederatedRunError("the federated arm needs NVIDIA FLARE: pip install -e '.[fl]'")
    if spec.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {spec.rounds}")
    total = int(bundle_setting(spec.bundle, spec.configs, spec.overrides, "num_iterations"))
    if total % spec.rounds:
        raise ValueError(f"{total} iterations of the profile {spec.profile} do not divide into {spec.rounds} rounds")
    with tempfile.TemporaryDirectory() as folder:
        for algorithm in spec.algorithms:  # a value FLARE cannot pass (white space), the key metric
            write_job(spec.bundle, sites_file, Path(folder) / "job", rounds=spec.rounds,
                      local_iterations=total // spec.rounds, configs=spec.configs,
                      settings={**spec.overrides, "algorithm_name": algorithm})  # fmt: skip
    return total // spec.rounds


def _federated_run(
    spec: FederatedBenchmarkSpec, sites_file: Path, sites: Mapping, local_iterations: int, algorithm: str, seed: int,
    run_dir: Path,
) -> dict:  # fmt: skip
    """Write the job, simulate it, select and test its global model; return the run's record."""
    from monai_ssl_ext.fl.global_model import export_global_model
    from monai_ssl_ext.fl.job import bundle_setting, write_job

    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again
    settings = {**spec.overrides, "algorithm_name": algorithm, "seed": seed}
    job = write_job(
        spec.bundle, sites_file, run_dir / "job", rounds=spec.rounds, local_iterations=local_iterations,
        configs=spec.configs, settings=settings, teacher=spec.teacher, fedprox_mu=spec.fedprox_mu,
    )  # fmt: skip
    names = list(sites)
    simulate = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(run_dir / "workspace"),
                "-n", str(len(names)), "-t", str(spec.threads or len(names)), "-c", ",".join(names)]  # fmt: skip
    train_s = run_workflow(simulate, run_dir / "simulator.log", echo=progress_echo(f"{algorithm} seed {seed}"))

    iterations = spec.rounds * local_iterations
    summaries = site_summaries(run_dir / "workspace", names, iterations, run_dir / "simulator.log")
    server = run_dir / "workspace" / "server" / "simulate_job" / "app_server"
    candidates = [server / m for m in GLOBAL_MODELS if (server / m).is_file()]
    if not candidates:
        raise FederatedRunError(f"{run_dir / 'simulator.log'}: the federation ended without a global model")

    # FLARE's best was validated before the last round's training, the final one never: validate both (the sites'
    # validation splits, pooled) and test the better one, as the other arms test their best validated checkpoint
    key_metric = str(bundle_setting(spec.bundle, spec.configs, spec.overrides, "key_metric"))
    pooled = {"datalist": str(Path(spec.sites_dir).resolve() / f"pooled_seed{seed}.json"),
              "data_root": next(iter(sites.values())).data_root}  # fmt: skip
    validation = {}
    for model in candidates:  # beside the first site's trained configuration (network, classes, preprocessing)
        folder = export_global_model(model, run_dir / "workspace" / names[0] / "models", run_dir / model.stem)
        report = evaluate_model(spec.bundle, folder, "validation", folder / "eval_validation",
                                {**pooled, **spec.overrides}, folder / "eval_validation.log")  # fmt: skip
        validation[model.name] = selection_value(report, key_metric)
    chosen = max(validation, key=validation.get)  # the first (FLARE's best) on a tie
    test_started = time.perf_counter()
    report = evaluate_model(spec.bundle, run_dir / Path(chosen).stem, "test", run_dir / "eval_test", spec.overrides,
                            run_dir / "evaluate.log")  # fmt: skip
    speeds = [s["train_images_per_s"] for s in summaries.values() if s.get("train_images_per_s")]
    memory = [s["peak_memory_mb"] for s in summaries.values() if s.get("peak_memory_mb")]
    return {
        "bundle": find_bundle(spec.bundle).name,
        "algorithm": algorithm,
        "dataset": FEDERATED,
        "labels": _labels(sites),
        "seed": seed,
        "profile": spec.profile,
        "metrics": headline_metrics(report),
        "per_class_recall": per_class_recall(report),
        # a site's training speed (mean over the sites) and the largest site's memory
        "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "peak_memory_mb": max(memory) if memory else None,
        "wall_s": train_s,  # the whole simulation: every site's rounds and the server's
        "eval_wall_s": time.perf_counter() - test_started,
        "iterations": iterations,
        **spec.federation(),
        "global_model": chosen,
        "best_val_metric": {f"val_{key_metric}": validation[chosen]},
        "validation_of_global_models": validation,
        "run_dir": str(run_dir),
        "eval_dir": str(run_dir / "eval_test"),
    }


def site_summaries(workspace: Path, names: Sequence[str], iterations: int, log: Path) -> dict[str, dict]:
    """Each site's ``train_summary.json`` in the simulator's workspace, each of ``iterations`` iterations.

    A site that failed leaves FLARE's controller ending early, the simulator possibly with exit status 0 and a
    global model of the rounds before.

    Raises:
        FederatedRunError: a site without a summary, or with fewer iterations; the message names it and ``log``.
    """
    summaries = {}
    for name in names:
        found = sorted((workspace / name).glob("**/train_summary.json"))
        summaries[name] = json.loads(found[0].read_text()) if found else {}
        if summaries[name].get("iterations") != iterations:
            raise FederatedRunError(
                f"site {name} trained {summaries[name].get('iterations', 0)} of {iterations} iterations: the "
                f"federation did not finish (see {log})"
            )
    return summaries


def _labels(sites: Mapping) -> str:
    return "+".join(str(site.label_budget) for site in sites.values())


def _federated_dir(spec: FederatedBenchmarkSpec, sites: Mapping) -> str:
    """The folder name of one federation's settings: ``labels40+80+96_rounds10_global_mu0``."""
    return f"labels{_labels(sites)}_rounds{spec.rounds}_{spec.teacher}_mu{spec.fedprox_mu:g}"


def _is_this_federation(record: Mapping, spec: FederatedBenchmarkSpec, sites: Mapping) -> bool:
    federation = {k: record.get(k) for k in spec.federation()}
    return (record["profile"], str(record["labels"])) == (spec.profile, _labels(sites)) and (
        federation == spec.federation()
    )


def _run_federated_arm(
    spec: FederatedBenchmarkSpec, sites_file: Path, sites: Mapping, local_iterations: int, out_dir: Path
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with only_writer(out_dir):
        results_path = out_dir / "results.json"
        results = load_results(results_path)
        done = {(r["algorithm"], r["seed"]) for r in results if _is_this_federation(r, spec, sites)}
        runs = [(a, s) for a in spec.algorithms for s in spec.seeds if (a, s) not in done]
        started = time.perf_counter()
        for n, (algorithm, seed) in enumerate(runs, 1):
            run_dir = out_dir / algorithm / _federated_dir(spec, sites) / f"seed{seed}"
            eta = (time.perf_counter() - started) / (n - 1) * (len(runs) - n + 1) if n > 1 else float("nan")
            logger.info(f"[federated {n}/{len(runs)}] {algorithm} seed {seed}: {len(sites)} sites, "
                        f"{spec.rounds} rounds ({run_dir}) | ETA {format_duration(eta)}")  # fmt: skip
            results.append(_federated_run(spec, sites_file, sites, local_iterations, algorithm, seed, run_dir))
            save_results(results_path, results)


def _combined(spec: FederatedBenchmarkSpec, sites: Mapping, out: Path) -> list[dict]:
    """Every finished run of these sites, budgets, profile and federation, named ``algorithm (arm)``, one group."""
    from monai_ssl_ext.data import Manifest

    first = Manifest.load(next(iter(sites.values())).datalist)
    group = {"dataset": f"{first.source.get('partition_of', first.name)}, {len(sites)} sites", "labels": _labels(sites)}
    arms: dict[str, list[dict]] = {}
    for name, site in sites.items():
        arms[f"{name} alone"] = [
            r for r in load_results(out / "alone" / name / "results.json")
            if (r["profile"], str(r["labels"])) == (spec.profile, str(site.label_budget))
        ]  # fmt: skip
    centralised = sorted((out / CENTRALISED / f"labels{_labels(sites)}").glob("seed*/results.json"))
    arms[CENTRALISED] = [r for path in centralised for r in load_results(path) if r["profile"] == spec.profile]
    arms[FEDERATED] = [r for r in load_results(out / FEDERATED / "results.json") if _is_this_federation(r, spec, sites)]
    algorithms = list(dict.fromkeys([*spec.algorithms, *(r["algorithm"] for rs in arms.values() for r in rs)]))
    return [
        {**record, "algorithm": arm_name(algorithm, arm), **group}
        for algorithm in algorithms
        for arm, records in arms.items()
        for record in sorted(records, key=lambda r: r["seed"])
        if record["algorithm"] == algorithm
    ]


def run_federated_benchmark(spec: FederatedBenchmarkSpec) -> list[dict]:
    """Run the three arms for every algorithm and seed; return the combined records (also in ``results.json``).

    ``output_dir`` gets ``alone/<site>/``, ``centralised/labels<budgets>/seed<s>/`` and ``federated/`` (each a
    benchmark folder of its own, resumable), then ``results.json`` and ``results.md``: one table of every finished
    run of these sites, budgets and federation settings, and for each algorithm the paired difference of every
    other row to its federated arm on the same test images.

    Raises:
        FileNotFoundError: the sites file, a site's manifest or data root, or a seed's pooled manifest is missing.
        ValueError: a pooled manifest of other sites or budgets; the profile's iterations do not divide into the
            rounds; an override or a site's setting the benchmark sets itself. All checked before anything trains.
        FederatedRunError: NVIDIA FLARE is not installed (checked before anything trains); the federation did not
            finish.
    """
    from monai_ssl_ext.fl.sites import check_site, load_sites

    sites_file = Path(spec.sites_dir) / "sites.json"
    sites = load_sites(sites_file)
    for site in sites.values():
        check_site(site)
    _check_settings(spec, sites)
    _check_pooled(spec, sites)
    local_iterations = _check_federation(spec, sites_file)
    out = Path(spec.output_dir)
    for name, site in sites.items():
        run_benchmark(BenchmarkSpec(
            bundle=spec.bundle, algorithms=spec.algorithms, seeds=spec.seeds, labels=site.label_budget,
            profile=spec.profile, datalist=site.datalist, data_root=site.data_root,
            output_dir=str(out / "alone" / name), overrides={**spec.overrides, **site.settings}, command=spec.command,
        ))  # fmt: skip
    for seed in spec.seeds:
        run_benchmark(BenchmarkSpec(
            bundle=spec.bundle, algorithms=spec.algorithms, seeds=[seed], labels="all", profile=spec.profile,
            datalist=str(Path(spec.sites_dir) / f"pooled_seed{seed}.json"),
            data_root=next(iter(sites.values())).data_root,  # the pooled manifest names the sites' images
            output_dir=str(out / CENTRALISED / f"labels{_labels(sites)}" / f"seed{seed}"), overrides=spec.overrides,
            command=spec.command,
        ))  # fmt: skip
    _run_federated_arm(spec, sites_file, sites, local_iterations, out / FEDERATED)
    combined = _combined(spec, sites, out)
    with only_writer(out):
        save_results(out / "results.json", combined)
        algorithms = dict.fromkeys(r["algorithm"].rsplit(" (", 1)[0] for r in combined)
        baselines = [arm_name(a, FEDERATED) for a in algorithms]
        write_text(out / "results.md", results_markdown(combined, command=spec.command, baselines=baselines))
    logger.info(f"results: {out / 'results.json'} and {out / 'results.md'}")
    return combined
