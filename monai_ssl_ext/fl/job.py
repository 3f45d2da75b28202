"""A FLARE FedAvg (or FedProx) job for a bundle and its sites: ``monai-ssl fl_job``.

The job is FLARE 2.9's PyTorch ``FedAvgRecipe`` exported to a folder: the server holds the bundle's training
network (built from the bundle and the class names, without data: :func:`bundle_network`), each site runs
``python -m monai_ssl_ext.fl.client`` through a three-line launcher, and ``monai_ssl_ext`` is declared an app
package, so FLARE imports it from each site's installation instead of copying its files into the job.

Lengths: ``rounds`` rounds of ``local_iterations`` iterations each; every site's bundle is told
``val_interval = local_iterations`` (one epoch per round) and ``num_iterations = rounds * local_iterations``, so
its learning-rate schedule and the algorithm's ramp-ups span the federation's whole run, as in one training of
that length.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from monai_ssl_ext.bundle.literal import inert
from monai_ssl_ext.bundle.runner import find_bundle
from monai_ssl_ext.fl.algo import TEACHER_POLICIES
from monai_ssl_ext.fl.sites import load_sites

__all__ = ["LAUNCHER", "bundle_network", "bundle_setting", "write_job"]

#: the script each site runs (FLARE's ScriptRunner takes a file); the code is the installed package's
LAUNCHER_NAME = "site_train.py"
LAUNCHER = "from monai_ssl_ext.fl.client import main\n\nmain()\n"


def bundle_network(bundle: str, configs: Sequence[str], settings: Mapping[str, Any]) -> nn.Module:
    """The bundle's training network (``network_def``), built without data: ``settings`` give the class names.

    Args:
        bundle: bundle folder or name.
        configs: files under its ``configs/`` (``train.json`` and a profile).
        settings: bundle settings, ``class_names`` among them; strings are data and made inert.
    """
    return bundle_setting(bundle, configs, settings, "network_def")


def bundle_setting(bundle: str | os.PathLike, configs: Sequence[str], settings: Mapping[str, Any], key: str) -> Any:
    """The parsed value of ``key`` in the bundle's ``configs`` with ``settings`` applied (made inert), without data.

    For what a job needs to know before any site trains: the validation key metric the server selects on
    (``validate#key_metric``), the profile's ``num_iterations``.
    """
    from monai.bundle import ConfigParser

    root = find_bundle(bundle)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(root), **inert(dict(settings))})
    return parser.get_parsed_content(key)


def write_job(
    bundle: str,
    sites_file: str | os.PathLike,
    output: str | os.PathLike,
    rounds: int,
    local_iterations: int,
    configs: Sequence[str] = ("train.json",),
    settings: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    teacher: str = "global",
    fedprox_mu: float = 0.0,
) -> Path:
    """Export the job folder; returns it.

    Args:
        bundle: bundle folder or name.
        sites_file: the sites file (:mod:`~monai_ssl_ext.fl.sites`); its site names are FLARE's client names.
        output: the job folder to write.
        rounds: FedAvg rounds.
        local_iterations: iterations each site trains per round.
        configs: files under the bundle's ``configs/`` every site trains with (``train.json``, a profile...).
        settings: further bundle settings of every site (``algorithm_name``...); a site's own entries win.
        class_names: the classes; by default those of the first site's manifest (read here, so the job's
            author needs that manifest; give them when it is elsewhere).
        teacher: ``"global"`` or ``"local"`` (see :mod:`~monai_ssl_ext.fl.algo`).
        fedprox_mu: FedProx's proximal weight; 0 is FedAvg.
    """
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    if rounds < 1 or local_iterations < 1:
        raise ValueError(f"rounds and local_iterations must be >= 1, got {rounds} and {local_iterations}")
    if teacher not in TEACHER_POLICIES:
        raise ValueError(f"teacher must be one of {TEACHER_POLICIES}, got {teacher!r}")
    root = find_bundle(bundle)
    sites_path = Path(sites_file).resolve()
    sites = load_sites(sites_path)
    if class_names is None:
        from monai_ssl_ext.data import load_manifest

        first = next(iter(sites.values()))
        class_names = load_manifest(first.datalist, first.data_root).classes
    lengths = {"val_interval": local_iterations, "num_iterations": rounds * local_iterations}
    common = {**dict(settings or {}), **lengths, "class_names": list(class_names)}
    # a bundle of this package is named, so that the server and each site find their own installation's copy
    bundle_ref = root.name if root.parent == Path(__file__).resolve().parents[2] / "bundles" else str(root)
    client_args = [
        "--bundle", bundle_ref, "--sites", str(sites_path), "--configs", ",".join(configs),
        "--teacher", teacher, "--fedprox_mu", str(fedprox_mu),
        "--settings", json.dumps({**dict(settings or {}), **lengths}, separators=(",", ":")),
    ]  # fmt: skip
    spaced = [a for a in client_args if any(c.isspace() for c in a)]
    if spaced:  # FLARE splits a script's arguments on white space, without quoting
        raise ValueError(f"FLARE passes site arguments split on spaces; without spaces, please: {spaced}")
    output = Path(output).resolve()
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        # a script named relative to the working folder goes to the job's custom/ and is run from there
        Path(LAUNCHER_NAME).write_text(LAUNCHER)
        recipe = FedAvgRecipe(
            name=output.name,
            model={
                "path": f"{__name__}.bundle_network",
                "args": {"bundle": bundle_ref, "configs": list(configs), "settings": common},
            },
            min_clients=len(sites),
            num_rounds=rounds,
            train_script=LAUNCHER_NAME,
            train_args=" ".join(client_args),
            key_metric=next(iter(bundle_setting(root, configs, common, "validate#key_metric"))),
        )
        # the recipe has no accessor for its job; without this FLARE copies the package's files into the job
        recipe._job.set_app_packages(["monai_ssl_ext"])
        recipe.export(str(output.parent))
    return output
