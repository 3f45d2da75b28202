"""One data set dealt to simulated hospitals, and the centralised manifest that pools their labels.

To measure what federation gives, one labelled data set stands in for several hospitals: each *site* gets a share
of its patients (whole groups, stratified by class) for training and validation, and every site keeps the whole
test split so that all arms are tested on the same images. Three arms are then compared at the same labeled
images (docs/federated.md):

- *each site alone*: the site's manifest and label budget, trained on its own;
- *federated*: the same manifests and budgets in a FLARE job (``monai-ssl fl_job``), each site drawing the same
  labeled subset for the same seed (the draw is a pure function of the site's training split, budget and seed);
- *centralised*: :func:`pooled_manifest`, the union of the sites' labeled draws as ``training`` (label budget
  ``all``) and the union of their unlabeled rest as the ``unlabeled`` list, validation pooled.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.label_budget import stratified_group_split
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.atomic import write_json

__all__ = ["partition_sites", "pooled_manifest", "write_site_manifests"]


def partition_sites(manifest: Manifest, num_sites: int, seed: int = 0) -> list[Manifest]:
    """Deal ``manifest``'s training and validation splits to ``num_sites`` sites; each keeps the whole test split.

    Whole groups (patients, or near-duplicate captures of a lesion) go to one site, stratified by class
    (:func:`~monai_ssl_ext.data.label_budget.stratified_group_split` with equal shares). A manifest with an
    ``unlabeled`` list is refused: each hospital lists its own archive.

    Raises:
        ValueError: fewer than two sites.
        ManifestError: an ``unlabeled`` list, or a site left without training or validation images.
    """
    where = manifest.path or manifest.name
    if num_sites < 2:
        raise ValueError(f"a federation needs at least two sites, got {num_sites}.")
    if manifest.unlabeled:
        raise ManifestError(
            f"{where}: has an 'unlabeled' list; partition the labelled manifest, each site adds its own."
        )
    shares = [1.0 / num_sites] * num_sites
    training = stratified_group_split(manifest.training, shares, seed=seed)
    validation = stratified_group_split(manifest.validation, shares, seed=seed)
    sites = []
    for k, (train, val) in enumerate(zip(training, validation, strict=True), start=1):
        if not train or not val:
            raise ManifestError(f"{where}: site {k} of {num_sites} gets no training or no validation image.")
        site = copy.deepcopy(manifest)
        site.name = f"{manifest.name}_site{k}"
        site.description = f"Site {k} of {num_sites} of {manifest.name} (whole groups, by class); its test split whole."
        site.source = {"partition_of": manifest.name, "site": k, "sites": num_sites, "partition_seed": seed}
        site.training, site.validation, site.path = train, val, None
        sites.append(site)
    return sites


def pooled_manifest(sites: Sequence[Manifest], budgets: Sequence[int | float], seed: int) -> Manifest:
    """The centralised arm: each site's labeled draw for ``seed`` pooled as ``training``, the rest as ``unlabeled``.

    Train it with label budget ``all`` (every pooled labeled image, no new draw). Validation is the sites' pooled;
    the test split is theirs (the same in each).
    """
    if len(budgets) != len(sites):
        raise ValueError(f"{len(sites)} sites need {len(sites)} label budgets, got {len(budgets)}.")
    pooled = copy.deepcopy(sites[0])
    pooled.name = f"{sites[0].source.get('partition_of', sites[0].name)}_pooled_seed{seed}"
    pooled.description = f"The labeled draws (seed {seed}, budgets {list(budgets)}) of {len(sites)} sites pooled."
    pooled.source = {
        "pooled_sites": [s.name for s in sites],
        "partition_seed": sites[0].source.get("partition_seed"),
        "label_budgets": list(budgets),
        "label_seed": seed,
    }
    pooled.training, pooled.validation, pooled.unlabeled, pooled.path = [], [], [], None
    for site, budget in zip(sites, budgets, strict=True):
        split = site.label_split(budget, seed=seed)
        pooled.training.extend(split.labeled)
        pooled.unlabeled.extend({k: v for k, v in e.items() if k != DataKeys.MASK} for e in split.unlabeled)
        pooled.validation.extend(copy.deepcopy(site.validation))
    return pooled


def write_site_manifests(
    manifest: Manifest,
    output: str | os.PathLike,
    data_root: str,
    budgets: Sequence[int | float],
    seeds: Sequence[int] = (0,),
    partition_seed: int = 0,
) -> Path:
    """Write ``site-<k>.json`` per site, ``sites.json`` for ``monai-ssl fl_job`` and ``pooled_seed<s>.json``.

    ``data_root`` is written into ``sites.json`` as given (an absolute path, or one relative to ``output``).
    Returns the path of ``sites.json``.
    """
    out = Path(output)
    sites = partition_sites(manifest, len(budgets), seed=partition_seed)
    pooled = [pooled_manifest(sites, budgets, seed) for seed in seeds]  # a budget a site cannot meet stops here
    entries = {}
    for k, (site, budget) in enumerate(zip(sites, budgets, strict=True), start=1):
        site.save(out / f"site-{k}.json")
        entries[f"site-{k}"] = {"datalist": f"site-{k}.json", "data_root": data_root, "label_budget": budget}
    for seed, manifest_of_seed in zip(seeds, pooled, strict=True):
        manifest_of_seed.save(out / f"pooled_seed{seed}.json")
    return write_json(out / "sites.json", entries, indent=2)
