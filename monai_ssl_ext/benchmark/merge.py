"""One results table from the benchmarks of several bundles that train the same network.

A method bundle carries the baselines on its own network (HSC and CLCP-MT both run supervised-only, Mean
Teacher and FixMatch on the same classifier with a projection head). Run in each bundle, those baselines
are the same training, repeated. :func:`merge_results` lets the baselines be run once, in one bundle, and
every method be compared with them in one table, with paired differences, as if one bundle had run
everything. That is only right when the bundles do train the same model: a run present in two inputs
(same data set, label budget, profile, algorithm and seed) must have predicted every test image
identically, and every input must share such a run with the ones before it, or the merge is refused.

An ablation run with the bundle's settings changed on the command line (``monai-ssl benchmark ...
--per_branch_optimizers false``) keeps its algorithm's name in its own folder; merged under a variant name, its
runs appear as ``hermes (one_optimizer)`` and are compared with the baselines and the method itself, paired on
the same labeled subsets and test images; it needs no shared run, but its bundle must be one merged before it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from monai_ssl_ext.benchmark.harness import load_results, save_results
from monai_ssl_ext.benchmark.tables import BASELINE_ALGORITHM, predictions_path, results_markdown
from monai_ssl_ext.metrics.predictions import load_predictions
from monai_ssl_ext.utils.atomic import write_text

__all__ = ["merge_results", "variant_name"]


def variant_name(algorithm: str, variant: str) -> str:
    """How a run of ``algorithm`` trained with changed settings is named in a merged table."""
    return f"{algorithm} ({variant})"


def _run_key(record: dict) -> tuple:
    return record["dataset"], str(record["labels"]), record["profile"], record["algorithm"], record["seed"]


def _same_predictions(a: dict, b: dict) -> bool:
    """Whether two runs gave every test image the same class probabilities (bit for bit)."""
    path_a, path_b = predictions_path(a), predictions_path(b)
    if path_a is None or path_b is None:
        missing = a if path_a is None else b
        raise ValueError(f"{missing.get('run_dir')}: no per-image test predictions, cannot check the runs agree")
    pa, pb = load_predictions(path_a), load_predictions(path_b)
    return (
        list(pa.image_ids) == list(pb.image_ids)
        and np.array_equal(pa.labels, pb.labels)
        and np.array_equal(pa.probs, pb.probs)
    )


def merge_results(
    results_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    command: str = "",
    baselines: Sequence[str] = (BASELINE_ALGORITHM,),
    variants: Mapping[str | os.PathLike, str] | None = None,
) -> list[dict]:
    """Merge the ``results.json`` of several benchmark folders into ``output_dir`` (``results.json``, ``results.md``).

    Args:
        results_dirs: benchmark output folders (each with its ``results.json``), in the order their
            algorithms should appear; a run found in an earlier folder is kept, its repeat checked and dropped.
        output_dir: where the merged ``results.json`` and ``results.md`` go; its records point at the
            original run folders (relative where they lie below it), nothing is copied.
        command: shown at the top of ``results.md``.
        baselines: the algorithms every other one is compared with, a table each (paired differences).
        variants: a name per folder whose runs changed the bundle's settings (an ablation): its algorithms are
            shown as :func:`variant_name` ``(algorithm, name)``. Such a folder shares no run (its runs are
            renamed) and must hold runs of a bundle given before it; every other folder after the first must
            share a run with the ones before it.

    Returns:
        The merged run records; each names the bundles merged, joined by ``" + "``.

    Raises:
        FileNotFoundError: a folder has no ``results.json``.
        ValueError: a run present in two folders predicted differently; a folder holds no runs; a folder
            shares no run with the ones before it (nothing shows the bundles train the same network); a named
            folder's bundle was not given before it; ``variants`` names a folder not given or gives an empty name.
    """
    if len(results_dirs) < 2:
        raise ValueError("give two or more benchmark folders to merge")
    named = {Path(folder).resolve(): str(name) for folder, name in (variants or {}).items()}
    if not all(named.values()):
        raise ValueError("a variant name must not be empty")
    unknown = set(named) - {Path(folder).resolve() for folder in results_dirs}
    if unknown:
        raise ValueError(f"variant names for folders not merged: {', '.join(sorted(map(str, unknown)))}")
    kept: dict[tuple, dict] = {}
    bundles: list[str] = []
    for n, folder in enumerate(results_dirs):
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results.json (is {folder} a benchmark output folder?)")
        variant = named.get(Path(folder).resolve())
        shared = 0
        earlier_bundles = set(bundles)
        folder_bundles = set()
        records = load_results(path)
        if not records:
            raise ValueError(f"{path}: holds no runs")
        for record in records:
            if variant:
                record["algorithm"] = variant_name(record["algorithm"], variant)
            bundles.append(record.get("bundle", ""))
            folder_bundles.add(record.get("bundle", ""))
            key = _run_key(record)
            if key not in kept:
                kept[key] = record
                continue
            if not _same_predictions(kept[key], record):
                raise ValueError(
                    f"{record['algorithm']} seed {record['seed']}: the runs in {kept[key]['run_dir']} and "
                    f"{record['run_dir']} predict the test images differently, so their bundles do not train the "
                    "same model; report them in separate tables"
                )
            shared += 1
        if variant and ("" in folder_bundles or not folder_bundles <= earlier_bundles):
            # its runs are renamed, so it can share none: its bundle must be one merged before it
            raise ValueError(
                f"{path}: an ablation's folder ({variant}={folder}) must hold runs of a bundle given before it "
                f"({', '.join(sorted(b for b in earlier_bundles if b)) or 'none'}), not of "
                f"{', '.join(sorted(b or 'no bundle' for b in folder_bundles))}"
            )
        if n and not variant and not shared:
            raise ValueError(
                f"{path}: shares no run with the folders before it, so nothing shows its bundle trains the same "
                "network; run one algorithm and seed (supervised-only, seed 0) in both, then merge (an ablation of "
                "a bundle given before it: NAME=FOLDER)"
            )
    name = " + ".join(dict.fromkeys(b for b in bundles if b))
    records = [{**record, "bundle": name} for record in kept.values()]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_results(out / "results.json", records)
    write_text(out / "results.md", results_markdown(records, command=command, baselines=baselines))
    return records
