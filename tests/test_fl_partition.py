"""Simulated hospitals from one labelled data set: the sites' manifests, the sites file and the pooled manifest."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from monai_ssl_ext.cli import main
from monai_ssl_ext.data import Manifest, ManifestError
from monai_ssl_ext.fl.partition import partition_sites, pooled_manifest
from monai_ssl_ext.fl.sites import load_sites

# the committed BUSI manifest whose near-duplicate captures of a lesion share a group: the proxy for whole patients
BUSI = Path(__file__).resolve().parents[1] / "data_manifests" / "busi" / "busi_binary_grouped.json"


def _images(entries) -> list[str]:
    return sorted(e["image"] for e in entries)


def test_sites_share_out_training_and_validation_by_whole_groups_and_each_keeps_the_test_split():
    manifest = Manifest.load(BUSI)
    sites = partition_sites(manifest, 3, seed=0)
    for split in ("training", "validation"):
        dealt = [e for s in sites for e in s.split(split)]
        assert _images(dealt) == _images(manifest.split(split))  # every image once
    groups = [{e["group"] for e in s.training + s.validation} for s in sites]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])  # no patient at two sites
    for site in sites:
        assert _images(site.test) == _images(manifest.test)
        assert set(Counter(e["label"] for e in site.training)) == {0, 1}  # both classes at every site
        assert abs(len(site.training) - len(manifest.training) / 3) < 15
    assert [s.name for s in sites] == [f"busi_binary_grouped_site{k}" for k in (1, 2, 3)]


def test_the_pooled_manifest_trains_on_exactly_the_sites_labeled_draws():
    sites = partition_sites(Manifest.load(BUSI), 3, seed=0)
    pooled = pooled_manifest(sites, [40, 80, 96], seed=1)
    draws = [s.label_split(b, seed=1) for s, b in zip(sites, [40, 80, 96], strict=True)]
    assert _images(pooled.training) == _images(e for d in draws for e in d.labeled) and len(pooled.training) == 216
    assert _images(pooled.unlabeled) == _images(e for d in draws for e in d.unlabeled)
    assert not any("label" in e or "mask" in e for e in pooled.unlabeled)
    # a valid manifest (no leak between its lists); budget "all" takes every pooled labeled image, no new draw
    again = Manifest.from_dict(pooled.to_dict())
    assert _images(again.label_split("all", seed=5).labeled) == _images(pooled.training)


def test_fl_sites_writes_the_sites_file_the_job_reads_and_a_pooled_manifest_per_seed(tmp_path, capsys):
    out = tmp_path / "sites"
    main(["fl_sites", str(BUSI), str(out), "--label_budgets", "40,80,96", "--data_root", "../busi", "--seeds", "0,1"])
    sites = load_sites(out / "sites.json")
    assert [(n, s.label_budget) for n, s in sites.items()] == [("site-1", 40), ("site-2", 80), ("site-3", 96)]
    assert Path(sites["site-2"].datalist) == out / "site-2.json" and Manifest.load(out / "site-2.json").test
    for seed in (0, 1):
        assert len(Manifest.load(out / f"pooled_seed{seed}.json").training) == 216
    assert "sites file:" in capsys.readouterr().out


def test_a_budget_a_site_cannot_meet_stops_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fl_sites", str(BUSI), str(tmp_path / "s"), "--label_budgets", "40,400", "--data_root", "x"])
    assert "site2: label budget 400 is larger than the training split" in capsys.readouterr().err
    assert not (tmp_path / "s" / "sites.json").exists() and not (tmp_path / "s" / "site-1.json").exists()


def test_partition_refuses_an_unlabeled_list_and_a_single_site():
    data = Manifest.load(BUSI).to_dict()
    data["unlabeled"] = [{"image": "archive/1.png"}]
    with pytest.raises(ManifestError, match="each site adds its own"):
        partition_sites(Manifest.from_dict(data), 3)
    with pytest.raises(ValueError, match="at least two sites"):
        partition_sites(Manifest.load(BUSI), 1)
