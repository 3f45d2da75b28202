"""The ``monai-ssl`` command.

    monai-ssl demo                       train and test a baseline on generated data (no data needed)
    monai-ssl train BUNDLE ...           run a bundle's training workflow (prints the monai.bundle command)
    monai-ssl evaluate BUNDLE ...        test the selected checkpoint
    monai-ssl infer BUNDLE --input PATH  predict on images
    monai-ssl benchmark ...              algorithms x seeds at a label budget and a profile
    monai-ssl benchmark_merge A B --output C   one table for bundles that train the same network
    monai-ssl fl_job SITES OUT ...       a NVIDIA FLARE FedAvg/FedProx job of a bundle across sites
    monai-ssl split MANIFEST ...         write a label-budget split
    monai-ssl synthetic --output DIR     generate the synthetic ultrasound data set
    monai-ssl check_bundle BUNDLE        model-zoo checks: files, metadata, properties, shapes, TorchScript export
    monai-ssl render_bundles [--check]   write the bundle folders from their one definition
    monai-ssl export CKPT OUT            TorchScript export described by the trained configuration
    monai-ssl deploy_app DIR --model TS  a MONAI Deploy application folder (SR, and SEG for a model that segments)
    monai-ssl manifest SOURCE PATH OUT   build a manifest (busi, ham10000, nct_crc, folder, csv, dicom, medmnist)
    monai-ssl inspect PATH [--json]      what the pipeline sees of a file or a folder (DICOM, NIfTI, PNG...)

Errors caused by input (missing files, bad manifests, impossible label budgets, unreadable images)
print one line naming the problem and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fire

__all__ = ["Commands", "main"]

logger = logging.getLogger("monai_ssl_ext.cli")


def _invocation() -> str:
    """This command line as a shell would take it again (an argument with spaces or quotes stays one argument), for
    the "Produced by" line of a results table."""
    return shlex.join(["monai-ssl", *sys.argv[1:]])


_DEFAULT_BUNDLE = "baselines_ultrasound"
# whether the running command was given --debug (commands that report errors themselves consult it)
_DEBUG = contextvars.ContextVar("monai_ssl_debug", default=False)


def _user_errors() -> tuple[type[BaseException], ...]:
    from monai_ssl_ext.benchmark.federated import FederatedRunError
    from monai_ssl_ext.benchmark.harness import OutputFolderBusyError
    from monai_ssl_ext.bundle import BundleRunError
    from monai_ssl_ext.data import LabelBudgetError, ManifestError
    from monai_ssl_ext.io import ImageReadError

    return (
        FileNotFoundError,
        ManifestError,
        LabelBudgetError,
        ImageReadError,
        BundleRunError,
        OutputFolderBusyError,
        FederatedRunError,
        KeyError,
        ValueError,
    )


#: the JSON literals a bundle user writes in configs; Fire would pass them on as the strings "true", "false", "null"
_JSON_LITERALS = {"true": True, "false": False, "null": None}


def _json_literal(value: Any) -> Any:
    return _JSON_LITERALS[value] if isinstance(value, str) and value in _JSON_LITERALS else value


def _friendly(func: Callable) -> Callable:
    """Turn input errors into one line on stderr and exit status 2 (tracebacks with ``--debug``).

    Command-line values ``true``, ``false`` and ``null`` (as in the bundle's JSON) become ``True``, ``False``
    and ``None``, as ``True``/``False``/``None`` already do.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        _setup_logging(debug)
        token = _DEBUG.set(debug)
        try:
            return func(*args, **{k: _json_literal(v) for k, v in kwargs.items()})
        except _user_errors() as e:
            if debug:
                raise
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            if hasattr(e, "one_line"):  # a failed workflow: its cause and the log, not the log's tail
                message = e.one_line()
            print(f"monai-ssl {func.__name__}: error: {message}", file=sys.stderr)
            sys.exit(2)
        finally:
            _DEBUG.reset(token)

    # show --debug in the command's help and let fire accept it for every command
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    debug = inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")
    position = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(position, debug)
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _workflow_echo() -> Callable[[str], None]:
    """Print a workflow's output as it comes, up to a traceback; all of it with ``--debug``.

    A failed workflow is reported in one line (its cause and the full log's path) by the command's error
    handler; the traceback stays in the log.
    """
    debug = _DEBUG.get()
    state = {"in_traceback": False}

    def echo(line: str) -> None:
        state["in_traceback"] = state["in_traceback"] or line.startswith("Traceback (most recent call last)")
        if debug or not state["in_traceback"]:
            print(line, flush=True)

    return echo


def _run_inference(input: str, bundle: str, output: str | None, overrides: dict[str, Any]) -> None:
    """The inference workflow of ``bundle`` on ``input`` (``infer`` and ``predict``)."""
    from monai_ssl_ext.bundle import find_bundle, run_workflow, workflow_command

    bundle_dir = find_bundle(bundle)
    settings = {"input_dir": str(Path(input).resolve()), **overrides}
    if output:
        settings["output_dir"] = str(Path(output).resolve())
    cmd = workflow_command(bundle_dir, "inference", overrides=settings)
    print("$ " + " ".join(cmd), flush=True)
    log = Path(settings.get("output_dir", bundle_dir / "eval" / "inference")) / "inference.log"
    run_workflow(cmd, log, echo=_workflow_echo())


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _data_overrides(datalist: str | None, data_root: str | None, classes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if datalist is not None:
        out["datalist"] = datalist if datalist == "synthetic" else str(Path(datalist).resolve())
    if data_root is not None:
        out["data_root"] = str(Path(data_root).resolve())
    if classes is not None:
        out["classes"] = _as_list(classes)
    return out


def _label_budget(value: Any) -> int | float | str:
    """A label budget from the command line: a whole count (``216``), a fraction below 1 (``0.2``) or ``all``.

    ``2.5`` used to become 2 images without a word; a count that is not whole is refused.
    """
    from monai_ssl_ext.data import LabelBudgetError

    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LabelBudgetError(f"label budget {value!r} is not a count or a fraction.") from None
    if number < 1:
        return number
    if not number.is_integer():
        raise LabelBudgetError(f"label budget {value}: a count must be a whole number (a fraction is below 1).")
    return int(number)


class Commands:
    """Semi-supervised medical image models for MONAI."""

    @staticmethod
    @_friendly
    def demo(
        algorithm: str = "fixmatch",
        baseline: str = "supervised",
        output: str = "runs/demo",
        profile: str = "smoke",
        seed: int = 0,
        labels: float = 42,
        num_images: int = 2400,
        render_size: int | None = None,
        overlap: float = 0.5,
        lesion_scale: float = 1.6,
        bundle: str = _DEFAULT_BUNDLE,
        **overrides: Any,
    ) -> None:
        """Train supervised-only and a semi-supervised method on the same generated data and labeled subset.

        Generates the synthetic ultrasound data set, trains and tests both runs (checkpoints chosen on the
        validation split), prints their test figures side by side with the paired difference and its 95 %
        bootstrap interval, and draws the validation curves of both in ``comparison_curves.png``.

        The defaults were chosen on the validation split (docs/benchmarks.md, "The embedded default"): 2400
        generated images (1680 training, 240 validation, 480 test), 42 of the training images labeled, half
        of the lesions textbook cases of their class and lesions 1.6 times the realistic size, so that at
        64 px a model trained on every label is clearly better than one trained on 42: the room the unlabeled
        images can fill.

        Args:
            algorithm: the semi-supervised method (``fixmatch``, ``flexmatch``, ``mean_teacher``...).
            baseline: what it is compared with (supervised-only: the labeled images alone).
            output: folder for the runs, curves and ``results.md``.
            profile: bundle profile (``smoke``: a few minutes on 2 CPU cores).
            seed: run seed; it also draws the labeled subset, the same for both runs.
            labels: label budget, a count or a fraction of the training split.
            num_images: images of the generated data set (70 % training, 10 % validation, 20 % test).
            render_size: side of the generated images in pixels (default: that of
                :func:`~monai_ssl_ext.data.synthetic.ensure_synthetic_dataset`).
            overlap: share of lesions whose class features overlap, the others textbook cases of their
                class (1: the realistic set that ``datalist: synthetic`` trains on).
            lesion_scale: factor on the lesions' size.
            bundle: bundle folder or name.
            overrides: further bundle config overrides for both runs (``--num_iterations 100``).
        """
        from monai_ssl_ext.benchmark import BenchmarkSpec, run_benchmark
        from monai_ssl_ext.benchmark.comparison import comparison_table, plot_run_comparison
        from monai_ssl_ext.bundle import find_bundle
        from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

        bundle_dir = find_bundle(bundle)
        budget = _label_budget(labels)
        data_root = Path(output) / "data" / "synthetic_ultrasound"
        size = {"image_size": int(render_size)} if render_size is not None else {}
        manifest = ensure_synthetic_dataset(
            data_root, int(num_images), overlap=float(overlap), lesion_scale=float(lesion_scale), **size
        )
        spec = BenchmarkSpec(
            bundle=str(bundle_dir),
            algorithms=[baseline, algorithm],
            seeds=[int(seed)],
            labels=budget,
            profile=profile,
            datalist=str(manifest),
            data_root=str(data_root),
            output_dir=output,
            overrides=overrides,
            command=_invocation(),
        )
        logger.info(f"[demo] {baseline} and {algorithm} on the synthetic ultrasound set, {budget} labels, seed {seed}")
        records = run_benchmark(spec)
        run_dirs = {r["algorithm"]: r["run_dir"] for r in records if r["seed"] == int(seed)}
        figure = plot_run_comparison(
            {name: run_dirs[name] for name in (baseline, algorithm)},
            Path(output) / "comparison_curves.png",
            title=f"validation: {baseline} vs {algorithm} (same labeled subset)",
        )
        print(f"\nTest split, {baseline} vs {algorithm} (same data, same labeled subset, seed {seed}):")
        print(comparison_table(records, algorithm, baseline, int(seed)))
        print(f"\nCurves of both: {figure}")
        print(f"Each run's own curves, confusion matrix and metrics: {run_dirs[baseline]}, {run_dirs[algorithm]}")

    @staticmethod
    @_friendly
    def train(
        bundle: str = _DEFAULT_BUNDLE,
        algorithm: str | None = None,
        profile: str | None = None,
        datalist: str | None = None,
        data_root: str | None = None,
        classes: Any = None,
        nproc: int = 1,
        overlays: Any = None,
        **overrides: Any,
    ) -> None:
        """Train a bundle (``python -m monai.bundle run training`` with the given overrides).

        Args:
            bundle: bundle folder or name.
            algorithm: value of ``algorithm_name``.
            profile: ``smoke`` or ``full`` overlay (default: the bundle's own settings).
            datalist: manifest JSON or ``synthetic``.
            data_root: folder the manifest's paths are relative to.
            classes: keep only these classes (comma-separated).
            nproc: processes (torchrun) for multi-GPU training.
            overlays: further configs of the bundle, comma-separated (``ham10000.json``).

        The settings the model is trained with are written to ``<ckpt_dir>/train_config.json``;
        ``evaluate``, ``infer`` and ``export`` read them from there.
        """
        from monai_ssl_ext.bundle import find_bundle, run_workflow, workflow_command

        bundle_dir = find_bundle(bundle)
        settings = {**_data_overrides(datalist, data_root, classes), **overrides}
        if algorithm:
            settings["algorithm_name"] = algorithm
        cmd = workflow_command(bundle_dir, "training", profile, _as_list(overlays), settings, nproc=nproc)
        print("$ " + " ".join(cmd), flush=True)
        log = Path(settings.get("output_dir", bundle_dir / "runs" / (algorithm or "default"))) / "train.log"
        run_workflow(cmd, log, echo=_workflow_echo())

    @staticmethod
    @_friendly
    def evaluate(
        bundle: str = _DEFAULT_BUNDLE,
        split: str = "test",
        ckpt_dir: str | None = None,
        output: str | None = None,
        **overrides: Any,
    ) -> None:
        """Evaluate the selected checkpoint on a split (``test`` by default) and print the metrics.

        The data, classes, image size and network are those the model was trained with (read from
        ``train_config.json`` beside ``model.pt``); an override such as ``--datalist`` replaces one.

        Args:
            bundle: bundle folder or name.
            split: ``test`` or ``validation``.
            ckpt_dir: folder of ``model.pt`` (default: the bundle's ``models/``).
            output: folder for metrics.json and figures (default: ``eval_<split>`` in the run folder).
        """
        from monai_ssl_ext.bundle import find_bundle, run_workflow, workflow_command

        bundle_dir = find_bundle(bundle)
        settings: dict[str, Any] = {"eval_split": split, **overrides}
        if ckpt_dir:
            settings["ckpt_dir"] = str(Path(ckpt_dir).resolve())
        if output:
            settings["eval_output_dir"] = str(Path(output).resolve())
        elif ckpt_dir:
            settings["eval_output_dir"] = str(Path(ckpt_dir).resolve().parent / f"eval_{split}")
        cmd = workflow_command(bundle_dir, "evaluating", overrides=settings)
        print("$ " + " ".join(cmd), flush=True)
        log_dir = Path(settings.get("eval_output_dir", bundle_dir / "runs"))
        run_workflow(cmd, log_dir / f"evaluate_{split}.log", echo=_workflow_echo())

    @staticmethod
    @_friendly
    def infer(input: str, bundle: str = _DEFAULT_BUNDLE, output: str | None = None, **overrides: Any) -> None:
        """Predict on an image, a folder of images or a manifest's test split; writes predictions.csv/json.

        Classes, modality, image size and network come from ``train_config.json`` beside the checkpoint
        (``--checkpoint``, default the bundle's ``models/model.pt``).
        """
        _run_inference(input, bundle, output, overrides)

    @staticmethod
    @_friendly
    def predict(input: str, bundle: str = _DEFAULT_BUNDLE, output: str | None = None, **overrides: Any) -> None:
        """Predict on a DICOM export and write results a PACS can display, beside predictions.csv/json.

        As ``infer`` (every input read before inference, unreadable inputs and other modalities named and
        skipped), and for each DICOM image: a DICOM SR with the finding and every class probability and, from a
        model that segments, a DICOM SEG of the lesion on the image's grid, both new research-use series in the
        image's study, under ``<output>/dicom/``; each row of ``predictions.csv`` gains the image's Study, Series
        and SOP Instance UIDs. Other inputs keep the outputs of ``infer``.
        """
        _run_inference(input, bundle, output, {**overrides, "dicom_results": True})

    @staticmethod
    @_friendly
    def benchmark(
        bundle: str = _DEFAULT_BUNDLE,
        algorithms: Any = "supervised,mean_teacher,fixmatch,flexmatch",
        seeds: Any = "0,1,2",
        labels: float = 216,
        profile: str = "smoke",
        datalist: str = "synthetic",
        data_root: str | None = None,
        classes: Any = None,
        output: str | None = None,
        nproc: int = 1,
        **overrides: Any,
    ) -> str:
        """Train and test every algorithm for every seed; write results.json and results.md.

        The same command again resumes: finished runs are skipped and a training that was cut off continues
        from its newest checkpoint (delete a run's folder to train it from the start).

        Args:
            bundle: bundle folder or name.
            algorithms: comma-separated algorithm names.
            seeds: comma-separated seeds.
            labels: label budget (count, or a fraction below 1).
            profile: ``smoke`` (minutes on a CPU) or ``full`` (paper-scale, for a GPU).
            datalist: manifest JSON or ``synthetic``.
            data_root: data root of the manifest.
            classes: keep only these classes.
            output: results folder (default ``runs/benchmark_<profile>``).
            nproc: processes per run.
        """
        from monai_ssl_ext.benchmark import BenchmarkSpec, run_benchmark

        labels_value = _label_budget(labels)
        spec = BenchmarkSpec(
            bundle=bundle,
            algorithms=_as_list(algorithms),
            seeds=[int(s) for s in _as_list(seeds)],
            labels=labels_value,
            profile=profile,
            datalist=datalist,
            data_root=data_root,
            output_dir=output or f"runs/benchmark_{profile}",
            classes=_as_list(classes) or None,
            overrides=overrides,
            nproc=nproc,
            command=_invocation(),
        )
        run_benchmark(spec)
        return str(Path(spec.output_dir) / "results.md")

    @staticmethod
    @_friendly
    def benchmark_merge(*results: str, output: str, baselines: Any = "supervised") -> str:
        """One table from the benchmark folders of bundles that train the same network (the baselines run once).

        An ablation's folder (the bundle's settings changed on the command line) is given as ``NAME=FOLDER``:
        its runs are shown as ``algorithm (NAME)`` and compared with the others on the same labeled subsets.

        Args:
            results: benchmark output folders, each with its results.json, or ``NAME=FOLDER``; a run found in
                two must have predicted every test image identically, or the merge is refused.
            output: folder for the merged results.json and results.md.
            baselines: comma-separated algorithms that every other one is compared with (a table each).
        """
        from monai_ssl_ext.benchmark.merge import merge_results

        folders, variants = [], {}
        for entry in map(str, results):
            name, sep, folder = entry.rpartition("=")
            if sep and not Path(entry).is_dir():
                if not name or not folder:
                    raise ValueError(f"{entry}: give an ablation's folder as NAME=FOLDER, both non-empty")
                variants[folder] = name
                entry = folder
            if Path(entry).resolve() in {Path(f).resolve() for f in folders}:
                raise ValueError(f"{entry}: given twice")
            folders.append(entry)
        command = _invocation()
        merge_results(folders, output, command=command, baselines=_as_list(baselines), variants=variants)
        return str(Path(output) / "results.md")

    @staticmethod
    @_friendly
    def fl_job(
        sites: str,
        output: str,
        bundle: str = _DEFAULT_BUNDLE,
        algorithm: str | None = None,
        rounds: int = 10,
        local_iterations: int = 150,
        profile: str | None = None,
        overlays: Any = None,
        classes: Any = None,
        teacher: str = "global",
        fedprox_mu: float = 0.0,
        **overrides: Any,
    ) -> str:
        """Write a NVIDIA FLARE FedAvg job (FedProx with ``--fedprox_mu``) that trains a bundle across sites.

        Run it with FLARE's simulator, ``nvflare simulator OUTPUT -w WORKSPACE -n N -t N -c SITE,...``, or submit
        it to a federation; every site needs this package (the ``fl`` extra) and its entry in the sites file.

        Args:
            sites: the sites file: per site name its manifest, data root and label budget (docs/federated.md).
            output: the job folder to write (its name is the job's).
            bundle: bundle folder or name.
            algorithm: value of ``algorithm_name``.
            rounds: FedAvg rounds.
            local_iterations: iterations each site trains per round.
            profile: ``smoke``, ``cpu`` or ``full``.
            overlays: further configs of the bundle, comma-separated.
            classes: the class names, comma-separated (default: those of the first site's manifest).
            teacher: ``global`` (an EMA teacher starts each round from the global model) or ``local``.
            fedprox_mu: FedProx's proximal weight (0: FedAvg).
        """
        from monai_ssl_ext.fl.job import write_job

        settings = {**overrides, **({"algorithm_name": algorithm} if algorithm else {})}
        configs = ["train.json", *([f"profiles/{profile}.json"] if profile else []), *_as_list(overlays)]
        job = write_job(
            bundle, sites, output, rounds=rounds, local_iterations=local_iterations, configs=configs,
            settings=settings, class_names=_as_list(classes) or None, teacher=teacher, fedprox_mu=fedprox_mu,
        )  # fmt: skip
        print(f"job: {job}\nrun it: nvflare simulator {job} -w runs/fl_workspace -n N -t N -c SITE,SITE,...")
        return str(job)

    @staticmethod
    @_friendly
    def fl_model(global_model: str, site_ckpt_dir: str, output: str) -> str:
        """Make a federation's global model a trained model of the bundle, for ``evaluate``, ``infer`` and ``export``.

        Args:
            global_model: the server's ``best_FL_global_model.pt`` or ``FL_global_model.pt`` (in the simulator:
                ``<workspace>/server/simulate_job/app_server/``).
            site_ckpt_dir: a site's ``ckpt_dir`` (in the simulator ``<workspace>/<site>/models``): its
                ``train_config.json`` says the network, classes, preprocessing and data.
            output: folder for ``model.pt`` and ``train_config.json``; then ``monai-ssl evaluate --bundle B
                --ckpt_dir OUTPUT`` tests it on that site's test split.
        """
        from monai_ssl_ext.fl.global_model import export_global_model

        out = export_global_model(global_model, site_ckpt_dir, output)
        print(f"global model: {out / 'model.pt'}\ntest it: monai-ssl evaluate --bundle BUNDLE --ckpt_dir {out}")
        return str(out)

    @staticmethod
    @_friendly
    def fl_sites(
        manifest: str,
        output: str,
        label_budgets: Any,
        data_root: str,
        seeds: Any = 0,
        partition_seed: int = 0,
    ) -> str:
        """Deal a labelled manifest to simulated sites, for measuring federation against each site and pooling.

        Writes ``site-<k>.json`` per site (whole groups, by class; every site keeps the whole test split), the sites
        file ``sites.json`` for ``monai-ssl fl_job`` and ``pooled_seed<s>.json`` per seed: the sites' labeled
        draws pooled (train it with ``--labels all``), their unlabeled rest as its ``unlabeled`` list.

        Args:
            manifest: the labelled manifest (BUSI: ``data_manifests/busi/busi_binary_grouped.json``).
            output: folder to write into.
            label_budgets: one per site, comma-separated (``40,80,96``); their number is the number of sites.
            data_root: the data root, written into ``sites.json`` (absolute, or relative to ``output``).
            seeds: label seeds to pool for, comma-separated (each site draws its labeled subset with the seed).
            partition_seed: seed of the dealing of patients to sites.
        """
        from monai_ssl_ext.data import Manifest
        from monai_ssl_ext.fl.partition import write_site_manifests

        budgets = [_label_budget(b) for b in _as_list(label_budgets)]
        seed_list = [int(s) for s in _as_list(seeds)]
        written = write_site_manifests(
            Manifest.load(manifest), output, data_root, budgets, seeds=seed_list, partition_seed=partition_seed
        )
        print(f"sites file: {written}")
        return str(written)

    @staticmethod
    @_friendly
    def fl_benchmark(
        sites_dir: str,
        bundle: str = _DEFAULT_BUNDLE,
        algorithms: Any = "fixmatch",
        seeds: Any = "0,1,2",
        profile: str = "cpu",
        rounds: int = 10,
        output: str | None = None,
        threads: int | None = None,
        teacher: str = "global",
        fedprox_mu: float = 0.0,
        **overrides: Any,
    ) -> str:
        """Each site alone, federated and centralised, for every algorithm and seed; write results.json and results.md.

        Args:
            sites_dir: the folder ``monai-ssl fl_sites`` wrote (with a pooled manifest for every seed).
            bundle: bundle folder or name.
            algorithms: comma-separated algorithm names.
            seeds: comma-separated label seeds.
            profile: ``smoke``, ``cpu`` or ``full``; every site trains its iterations, alone or over the rounds.
            rounds: FedAvg rounds of the federated arm.
            output: results folder (default ``<sites_dir>/benchmark_<profile>``).
            threads: sites FLARE's simulator trains at once (default: all).
            teacher: ``global`` or ``local`` (docs/federated.md).
            fedprox_mu: FedProx's proximal weight (0: FedAvg).
        """
        from monai_ssl_ext.benchmark.federated import FederatedBenchmarkSpec, run_federated_benchmark

        spec = FederatedBenchmarkSpec(
            sites_dir=sites_dir, bundle=bundle, algorithms=_as_list(algorithms),
            seeds=[int(s) for s in _as_list(seeds)], profile=profile, rounds=rounds,
            output_dir=output or str(Path(sites_dir) / f"benchmark_{profile}"), threads=threads, teacher=teacher,
            fedprox_mu=fedprox_mu, overrides=overrides, command=_invocation(),
        )  # fmt: skip
        run_federated_benchmark(spec)
        return str(Path(spec.output_dir) / "results.md")

    @staticmethod
    @_friendly
    def split(manifest: str, budget: float, seed: int = 0, output: str | None = None, classes: Any = None) -> dict:
        """Write the labeled subset of a manifest's training split for a label budget and a seed."""
        from monai_ssl_ext.data import Manifest
        from monai_ssl_ext.utils.atomic import write_json

        m = Manifest.load(manifest)
        if classes is not None:
            m = m.with_classes(_as_list(classes))
        budget_value = _label_budget(budget)
        result = m.label_split(budget_value, seed=seed, require_validation=False)  # a budget needs no validation split
        record = {"manifest": Path(manifest).name, **result.to_dict()}
        if output:
            write_json(output, record, indent=1)
        print(result.summary())
        return {"budget": result.budget, "per_class": result.per_class}

    @staticmethod
    @_friendly
    def manifest(
        source: str,
        path: str,
        output: str,
        classes: Any = None,
        seed: int = 0,
        name: str | None = None,
        on_error: str = "raise",
        report: str | None = None,
        verify: bool = False,
        unlabeled: str | None = None,
        **options: Any,
    ) -> str:
        """Build a manifest from a data set as distributed and write it to ``output``.

        Args:
            source: ``busi``, ``ham10000``, ``chest_xray``, ``nct_crc``, ``folder`` (class sub-folders), ``csv``
                (``path,label[,mask][,group]``), ``dicom`` (a DICOM folder; ``--labels labels.csv``) or
                ``medmnist`` (a ``.npz`` file; its images are written as PNG files beside ``output``).
            path: the data set folder (the manifest's data root), the ``.npz`` or the CSV file.
            output: the manifest JSON to write.
            classes: keep only these classes (comma-separated); for ``csv`` and ``dicom`` the class list.
            seed: split seed (data sets without official splits are split 70/10/20, stratified, by group).
            name: manifest name.
            on_error: ``raise`` stops at the first bad file; ``skip`` leaves it out and lists it in the report.
            report: where to write the skip report (default ``<output stem>.skipped.csv`` beside ``output``).
            verify: load every image and mask as training will; unreadable files, masks that do not fit
                their image and empty lesion masks are errors (or skips with ``--on_error skip``).
            unlabeled: a folder of images without labels (under the data root, or absolute): listed in the
                manifest's ``unlabeled`` list, which training adds to the unlabeled stream.
            options: builder options (``--labels``, ``--key``, ``--group_by``...).
        """
        from monai_ssl_ext.data.builders import build_manifest

        build_manifest(  # logs the class counts per split and where the manifest and its report went
            source,
            path,
            output,
            classes=_as_list(classes) or None,
            seed=seed,
            name=name,
            on_error=on_error,
            report=report,
            verify=verify,
            unlabeled=unlabeled,
            **options,
        )
        return str(output)

    @staticmethod
    @_friendly
    def inspect(path: str, json: bool = False) -> None:
        """What the pipeline sees of a file or of every image in a folder.

        Format, modality, photometric interpretation, transfer syntax, frames, array shape after loading,
        spacing and the ultrasound region used. A bad file is reported in one line naming it and the cause,
        and the command exits with status 2 when any file could not be read.

        Args:
            path: an image file or a folder.
            json: print JSON records instead of a table.
        """
        import json as json_module

        from monai_ssl_ext.io import format_inspection, inspect_path

        records = inspect_path(path)
        if json:
            print(json_module.dumps(records, indent=1, default=str))
        else:
            print(format_inspection(records))
        bad = [r for r in records if r.get("error")]
        if bad and _DEBUG.get():
            from monai_ssl_ext.io import read_image

            read_image(bad[0]["path"])  # --debug: raise the first failure again, with its traceback
        if bad:
            for r in bad:
                print(f"monai-ssl inspect: error: {r['error']}", file=sys.stderr)
            sys.exit(2)

    @staticmethod
    @_friendly
    def synthetic(output: str, **options: Any) -> str:
        """Generate the synthetic ultrasound-like data set (images, masks, datalist.json) into ``output``.

        Options, with the defaults of :func:`~monai_ssl_ext.data.synthetic.write_synthetic_dataset`:
        ``--num_images``, ``--image_size``, ``--seed``, ``--force``, ``--overlap`` (share of lesions whose class
        features overlap, the others textbook cases of their class; 1 is the realistic set) and
        ``--lesion_scale`` (factor on the lesions' size).
        """
        from monai_ssl_ext.data.synthetic import write_synthetic_dataset

        known = [name for name in inspect.signature(write_synthetic_dataset).parameters if name != "output"]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown option {', '.join('--' + u for u in unknown)}; the options are "
                + ", ".join("--" + k for k in known)
            )
        return write_synthetic_dataset(output, **options)

    @staticmethod
    @_friendly
    def export(
        ckpt: str,
        output: str,
        bundle: str = _DEFAULT_BUNDLE,
        configs: Any = "inference.json",
        metadata: Any = "metadata.json",
        **overrides: Any,
    ) -> str:
        """Export a checkpoint to TorchScript, described by the settings it was trained with.

        The trained configuration beside ``ckpt`` (``train_config.json``) gives the image size,
        channels, network and classes; the exported model embeds them in its config and metadata.

        Args:
            ckpt: state dict of the network (``models/model.pt``).
            output: TorchScript file to write (``models/model.ts``).
            bundle: bundle folder or name.
            configs: comma-separated config files under the bundle's ``configs/`` (or paths).
            metadata: comma-separated metadata files, merged in order and embedded in the model.
            overrides: config values for a checkpoint without a trained configuration
                (``--image_size 64 --backbone resnet10``).
        """
        from monai_ssl_ext.bundle import find_bundle
        from monai_ssl_ext.deploy import export_bundle

        path = export_bundle(
            find_bundle(bundle), ckpt, output, configs=_as_list(configs), metadata=_as_list(metadata), **overrides
        )
        return str(path)

    @staticmethod
    @_friendly
    def deploy_app(
        output: str, model: str | None = None, kind: str = "auto", vendor: bool = True, name: str | None = None
    ) -> str:
        """Write a MONAI Deploy application folder for a model exported by ``monai-ssl export``.

        The folder holds ``app.py`` (runnable as ``python app.py -i DICOM_FOLDER -o OUT -m model.ts``),
        ``__main__.py``, ``app.yaml``, ``requirements.txt``, a copy of this package and a README; package it as a
        MONAI Application Package with the command printed (``monai-deploy package``, which needs Docker).

        Args:
            output: the application folder to write.
            model: the exported model (``model.ts``); it decides the kind of application and names it.
            kind: ``classification`` (a DICOM SR per image), ``segmentation`` (SR and SEG) or ``auto`` (from the
                model).
            vendor: copy this package into the folder (the package image then needs no index that holds it).
            name: the application's name (default: the model's bundle).
        """
        from monai_ssl_ext.deploy.app_package import write_app_folder

        written = write_app_folder(output, model=model, kind=kind, vendor=vendor, name=name)
        print(f"{written['kind']} application written to {written['folder']}; package it (Docker needed) with:")
        print(written["package_command"])
        return written["folder"]

    @staticmethod
    @_friendly
    def check_bundle(*bundles: str, schema: str | None = None) -> list:
        """Model-zoo checks for each bundle: files, metadata, workflow properties, README, shapes, export."""
        from monai_ssl_ext.bundle import find_bundle
        from monai_ssl_ext.bundle.checks import check_bundle

        names: Sequence[str] = bundles or [_DEFAULT_BUNDLE]
        return [check_bundle(find_bundle(b), schema=schema) for b in names]

    @staticmethod
    @_friendly
    def render_bundles(*names: str, bundles_dir: str = "bundles", check: bool = False) -> list:
        """Write the bundle folders from their definition (``monai_ssl_ext/bundle/definition``).

        Args:
            names: bundles to render (default: every defined bundle).
            bundles_dir: folder holding the bundle folders.
            check: write nothing; list the files that differ from their rendering and exit with
                status 2 if any does (a hand edit of a rendered file, or a definition not rendered).
        """
        from monai_ssl_ext.bundle import bundle_names, check_rendered, write_bundle

        chosen = list(names) or bundle_names()
        if check:
            stale = [f"{name}/{rel}" for name in chosen for rel in check_rendered(name, bundles_dir)]
            for rel in stale:
                print(
                    f"monai-ssl render_bundles: differs from the definition: {Path(bundles_dir) / rel}", file=sys.stderr
                )
            if stale:
                sys.exit(2)
            return []
        return [str(p) for name in chosen for p in write_bundle(name, bundles_dir)]


def _with_help_flag(args: list[str]) -> list[str]:
    """``--help`` / ``-h`` as Fire's help flag, which goes after ``--``.

    Commands that take ``**overrides`` would otherwise receive ``--help`` as a setting named ``help`` and
    start running (``monai-ssl benchmark --help`` started a benchmark).
    """
    cut = args.index("--") if "--" in args else len(args)
    head, tail = args[:cut], args[cut + 1 :]
    if not any(a in ("--help", "-h") for a in head):
        return args
    return [a for a in head if a not in ("--help", "-h")] + ["--", "--help", *[a for a in tail if a != "--help"]]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``monai-ssl`` console script."""
    args = list(argv) if argv is not None else sys.argv[1:]
    fire.Fire(Commands, command=_with_help_flag(args), name="monai-ssl")


if __name__ == "__main__":
    main()
