"""The committed HAM10000 and chest X-ray label-budget splits are what the code draws from the committed manifests
(the BUSI ones are checked in test_label_budget.py): same labeled images, per-class counts, whole groups."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from monai_ssl_ext.data import Manifest
from monai_ssl_ext.keys import DataKeys

MANIFESTS = REPO_ROOT / "data_manifests"
CASES = {
    ("ham10000", "ham10000", 0.2): {"akiec": 46, "bcc": 72, "bkl": 154, "df": 16, "mel": 155, "nv": 939, "vasc": 20},
    ("ham10000", "ham10000", 0.05): {"akiec": 11, "bcc": 18, "bkl": 39, "df": 4, "mel": 39, "nv": 234, "vasc": 5},
    ("chest_xray", "kermany_pneumonia128", 0.05): {"normal": 60, "pneumonia": 174},
}


@pytest.fixture(scope="module")
def manifests() -> dict[str, Manifest]:
    return {
        "ham10000": Manifest.load(MANIFESTS / "ham10000" / "ham10000.json"),
        "chest_xray": Manifest.load(MANIFESTS / "chest_xray" / "kermany_pneumonia128.json"),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(CASES), ids=lambda c: f"{c[1]}_labels{c[2]}")
def test_committed_label_budget_split_is_reproduced_by_the_code(manifests, case, seed):
    folder, name, budget = case
    manifest = manifests[folder]
    committed = json.loads((MANIFESTS / folder / "splits" / f"{name}_labels{budget}_seed{seed}.json").read_text())
    split = manifest.label_split(budget, seed=seed)
    assert committed == {"manifest": f"{name}.json", **split.to_dict()}
    assert committed["per_class"] == CASES[case]
    assert committed["budget"] == round(budget * len(manifest.training)) == sum(CASES[case].values())
    # a labeled patient or lesion has all its training images labeled
    labeled = set(committed["labeled"])
    group_of = {e[DataKeys.IMAGE]: e[DataKeys.GROUP] for e in manifest.training}
    labeled_groups = {group_of[p] for p in labeled}
    assert {p for p, g in group_of.items() if g in labeled_groups} == labeled
