"""The sites of a federation: each site's own manifest, data root and label budget.

A sites file is JSON, one entry per site name::

    {
      "site-1": {"datalist": "/data/busi_site1.json", "data_root": "/data/busi", "label_budget": 40},
      "site-2": {"datalist": "...", "data_root": "...", "label_budget": 80, "settings": {"num_workers": 2}}
    }

``label_budget`` is a count or a fraction below 1 of the site's training split; ``settings`` are further
bundle settings of that site. At a real federation each hospital keeps its own entry (its paths); in the
simulator one file names them all. Every string here is data: it reaches the bundle as a literal, never as
an expression.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Site", "check_site", "load_sites"]

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = {"datalist", "data_root", "label_budget", "settings"}


@dataclass(frozen=True)
class Site:
    """One site: its name, manifest, data root, label budget and further bundle settings."""

    name: str
    datalist: str
    data_root: str
    label_budget: int | float
    settings: dict[str, Any] = field(default_factory=dict)

    def bundle_settings(self) -> dict[str, Any]:
        """The bundle settings of this site (before they are made inert)."""
        return {
            **self.settings,
            "datalist": self.datalist,
            "data_root": self.data_root,
            "label_budget": self.label_budget,
        }


def load_sites(path: str | os.PathLike) -> dict[str, Site]:
    """Read and check the shape of a sites file (not the data: see :func:`check_site`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON object of sites, a site name that is not a plain name, a missing or unknown key,
            a label budget that is not a positive number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sites file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f'{path}: expected an object of sites, {{"site-1": {{...}}, ...}}')
    sites = {}
    for name, entry in raw.items():
        if not _SITE_NAME.match(name):
            raise ValueError(f"{path}: site name {name!r} must be letters, digits, '_', '-' or '.'")
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: site {name}: expected an object")
        missing, unknown = {"datalist", "data_root", "label_budget"} - entry.keys(), entry.keys() - _KEYS
        if missing or unknown:
            raise ValueError(f"{path}: site {name}: missing {sorted(missing)}, unknown {sorted(unknown)}")
        budget = entry["label_budget"]
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
            raise ValueError(f"{path}: site {name}: label_budget must be a positive count or fraction, got {budget!r}")
        settings = entry.get("settings", {})
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: site {name}: settings must be an object")
        base = path.parent
        sites[name] = Site(
            name=name,
            datalist=str((base / str(entry["datalist"])).resolve()),
            data_root=str((base / str(entry["data_root"])).resolve()),
            label_budget=budget,
            settings=settings,
        )
    return sites


def check_site(site: Site) -> None:
    """Fail with one line naming the site and the path when its manifest or data root is missing."""
    if not Path(site.datalist).is_file():
        raise FileNotFoundError(f"site {site.name}: manifest {site.datalist} does not exist")
    if not Path(site.data_root).is_dir():
        raise FileNotFoundError(f"site {site.name}: data root {site.data_root} does not exist")
