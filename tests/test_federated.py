"""Federated training with NVIDIA FLARE: sites file, the site's client algorithm, FedProx, the job, the simulator."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.fl.utils.exchange_object import ExchangeObject

from monai_ssl_ext.bundle.runner import find_bundle
from monai_ssl_ext.cli import main
from monai_ssl_ext.fl import check_site, load_sites
from monai_ssl_ext.fl.algo import SemiSupervisedMonaiAlgo
from monai_ssl_ext.fl.fedprox import FedProxTerm
from monai_ssl_ext.fl.global_model import export_global_model

pytestmark = pytest.mark.usefixtures("one_thread")
needs_flare = pytest.mark.skipif(
    importlib.util.find_spec("nvflare") is None, reason="NVIDIA FLARE is not installed: pip install -e '.[fl]'"
)
TINY = {"image_size": 32, "backbone": "resnet10", "unlabeled_batch_size": 8, "val_interval": 3, "num_iterations": 6}
CLASSES = ["benign", "malignant"]


def _sites(folder: Path, manifest: Path, **entries) -> Path:
    sites = {
        name: {"datalist": str(manifest), "data_root": str(manifest.parent), "label_budget": budget}
        for name, budget in (entries or {"site-1": 10, "site-2": 16}).items()
    }
    path = folder / "sites.json"
    path.write_text(json.dumps(sites))
    return path


# ---------------------------------------------------------------- the sites file
def test_sites_file_is_read_relative_to_itself_and_its_mistakes_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "list.json").write_text("{}")
    good = {"site-1": {"datalist": "a/list.json", "data_root": "a", "label_budget": 40, "settings": {"seed": 1}}}
    (tmp_path / "sites.json").write_text(json.dumps(good))
    site = load_sites(tmp_path / "sites.json")["site-1"]
    assert site.datalist == str(tmp_path / "a" / "list.json") and site.data_root == str(tmp_path / "a")
    assert site.bundle_settings() == {"seed": 1, "datalist": site.datalist, "data_root": site.data_root,
                                      "label_budget": 40}  # fmt: skip
    check_site(site)
    for entry, message in [
        ({"site 1": good["site-1"]}, "site name 'site 1' must be"),
        ({"s": {"datalist": "x", "data_root": "y"}}, r"site s: missing \['label_budget'\]"),
        ({"s": {**good["site-1"], "label_budget": 0}}, "label_budget must be a positive"),
        ({"s": {**good["site-1"], "labels": 3}}, r"unknown \['labels'\]"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(entry))
        with pytest.raises(ValueError, match=message):
            load_sites(tmp_path / "bad.json")
    (tmp_path / "gone.json").write_text(json.dumps({"site-9": {**good["site-1"], "data_root": "missing"}}))
    with pytest.raises(FileNotFoundError, match=r"site site-9: data root .*missing does not exist"):
        check_site(load_sites(tmp_path / "gone.json")["site-9"])


# ---------------------------------------------------------------- FedProx
def test_fedprox_adds_mu_times_the_distance_to_the_global_weights_to_each_gradient():
    net = torch.nn.Linear(3, 2)
    global_weights = {k: v.detach().clone() - 0.5 for k, v in net.state_dict().items()}
    term = FedProxTerm(mu=0.1)
    term.set_anchor(net, global_weights)
    net.weight.grad = torch.ones_like(net.weight)  # the bias has no gradient this step (a frozen parameter)
    term(type("Engine", (), {"network": net, "scaler": None})())
    assert torch.allclose(net.weight.grad, torch.full_like(net.weight, 1 + 0.1 * 0.5))
    assert net.bias.grad is None
    with pytest.raises(KeyError, match="no bias"):
        term.set_anchor(net, {"weight": global_weights["weight"]})


# ---------------------------------------------------------------- the site's client algorithm
@pytest.fixture(scope="module")
def site_algo(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    settings = {**TINY, "algorithm_name": "mean_teacher", "datalist": str(small_data),
                "data_root": str(small_data.parent), "label_budget": 10, "output_dir": str(out / "runs"),
                "ckpt_dir": str(out / "models")}  # fmt: skip
    algo = SemiSupervisedMonaiAlgo(find_bundle("baselines_ultrasound"), ["configs/train.json"], settings)
    algo.initialize({"fl_client_name": "site-1"})
    return algo


def _global(algo: SemiSupervisedMonaiAlgo, shift: float) -> dict:
    return {k: v.detach().clone() + shift if v.is_floating_point() else v.clone()
            for k, v in algo.trainer.network.state_dict().items()}  # fmt: skip


def test_a_round_trains_from_the_global_weights_and_sends_their_difference(site_algo):
    global_weights = _global(site_algo, 0.01)
    metrics = site_algo.evaluate(ExchangeObject(weights=global_weights)).metrics
    assert "val_auc" in metrics and 0.0 <= metrics["val_auc"] <= 1.0  # the key metric the server selects on
    site_algo.train(ExchangeObject(weights=global_weights))
    update = site_algo.get_weights()
    assert update.statistics["num_executed_iterations"] == TINY["val_interval"]
    assert set(update.weights) == set(global_weights)
    state = site_algo.trainer.network.state_dict()
    for name, diff in update.weights.items():  # the server adds the difference to its global weights
        assert torch.allclose(global_weights[name] + diff, state[name].cpu()), name
    assert float(update.weights[next(iter(update.weights))].abs().sum()) > 0  # it trained


def test_the_teacher_starts_each_round_from_the_global_weights_or_keeps_its_own(site_algo):
    (teacher,) = site_algo.teachers()
    global_weights = _global(site_algo, 0.02)
    site_algo.start_round(global_weights)
    for name, param in teacher.network.named_parameters():
        assert torch.equal(param, global_weights[name])
    site_algo.teacher_policy = "local"
    try:
        kept = {k: v.clone() for k, v in teacher.network.state_dict().items()}
        site_algo.start_round(_global(site_algo, 5.0))
        assert all(torch.equal(kept[k], v) for k, v in teacher.network.state_dict().items())
    finally:
        site_algo.teacher_policy = "global"
    before = site_algo.trainer.state.iteration
    site_algo.train(ExchangeObject(weights=global_weights))
    assert site_algo.trainer.state.iteration == before + TINY["val_interval"]  # rounds continue one run


# every method's bundle at a site: its key metric reaches the server, and a round sends back what it trained
METHOD_BUNDLES = {
    "hermes_ultrasound": ("hermes", "val_auc_dice"),
    "semise_ultrasound": ("semise", "val_auc_dice"),
    "hsc_histology": ("hsc", "val_auc"),
    "clcpmt_dermoscopy": ("clcpmt", "val_auc"),
    "dsrpgc_dermoscopy": ("dsrpgc", "val_auc"),
}


@pytest.mark.parametrize("bundle", sorted(METHOD_BUNDLES))
def test_each_method_bundle_trains_a_round_from_the_global_weights_at_a_site(bundle, small_data, tmp_path):
    algorithm, key_metric = METHOD_BUNDLES[bundle]
    where = {"datalist": str(small_data), "data_root": str(small_data.parent), "label_budget": 12,
             "output_dir": str(tmp_path / "runs"), "ckpt_dir": str(tmp_path / "models")}  # fmt: skip
    batches = {"labeled_batch_size": 4, "unlabeled_batch_size": 4, "num_workers": 0}
    settings = {**TINY, **batches, "algorithm_name": algorithm, **where}
    algo = SemiSupervisedMonaiAlgo(find_bundle(bundle), ["configs/train.json"], settings)
    algo.initialize({"fl_client_name": "site-1"})
    assert type(algo.trainer.algorithm).__name__.lower() == algorithm
    global_weights = _global(algo, 0.01)
    metrics = algo.evaluate(ExchangeObject(weights=global_weights)).metrics
    assert key_metric in metrics and 0.0 <= metrics[key_metric] <= 1.0, metrics  # what the server selects on
    algo.train(ExchangeObject(weights=global_weights))
    update = algo.get_weights()
    assert update.statistics["num_executed_iterations"] == TINY["val_interval"]
    assert set(update.weights) == set(global_weights)  # the whole network, both branches of a two-branch one
    state = algo.trainer.network.state_dict()
    for name, diff in update.weights.items():
        assert torch.allclose(global_weights[name] + diff, state[name].cpu()), name
    # parameters only: batch-norm statistics change on any forward pass, stepped or not
    parameters = {name for name, _ in algo.trainer.network.named_parameters()}
    moved = {name.split(".")[0] for name in parameters if update.weights[name].abs().sum()}
    assert moved, "nothing trained"
    for branch, members in getattr(algo.trainer.network, "BRANCHES", {}).items():  # each optimiser of a set stepped
        assert moved & set(members), f"the {branch} branch did not train"
    # the job's server holds the same network and selects on the same key metric
    from monai_ssl_ext.fl.job import bundle_network, write_job

    net = bundle_network(bundle, ["train.json"], {**TINY, "class_names": CLASSES})
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in state.items()}
    job = write_job(bundle, _sites(tmp_path, small_data), tmp_path / "job", rounds=2, local_iterations=3,
                    settings={**TINY, "algorithm_name": algorithm})  # fmt: skip
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert f'"key_metric": "{key_metric}"' in json.dumps(server)


def test_a_bundle_with_another_trainer_is_refused_by_name(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps({
        "network": "$torch.nn.Linear(2, 2)",
        "train": {"trainer": {"_target_": "monai.engines.SupervisedTrainer", "device": "cpu", "max_epochs": 1,
                              "train_data_loader": "$[]", "network": "@network",
                              "optimizer": "$torch.optim.SGD(@network.parameters(), lr=0.1)",
                              "loss_function": "$torch.nn.MSELoss()"}},
        "validate": {"evaluator": None},
    }))  # fmt: skip
    algo = SemiSupervisedMonaiAlgo(bundle, ["configs/train.json"])
    with pytest.raises(TypeError, match=r"not a SemiSupervisedTrainer; use monai\.fl\.client\.MonaiAlgo"):
        algo.initialize({})


# ---------------------------------------------------------------- the job and the simulator
@needs_flare
def test_the_job_names_the_package_by_import_path_and_copies_none_of_it(tmp_path, small_data):
    from monai_ssl_ext.fl.job import LAUNCHER, bundle_network, write_job

    sites = _sites(tmp_path, small_data)
    job = write_job("baselines_ultrasound", sites, tmp_path / "jobs" / "fixmatch_fedavg", rounds=4,
                    local_iterations=5, settings={**TINY, "algorithm_name": "fixmatch"})  # fmt: skip
    custom = sorted(p.relative_to(job).as_posix() for p in job.rglob("*") if p.is_file() and "custom" in p.parts)
    assert custom == ["app/custom/site_train.py"]  # the launcher only; monai_ssl_ext comes from the installation
    assert (job / "app" / "custom" / "site_train.py").read_text() == LAUNCHER
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    args = client["executors"][0]["executor"]["args"]["task_script_args"].split(" ")
    assert args[args.index("--bundle") + 1] == "baselines_ultrasound"  # each site's own installed copy
    settings = json.loads(args[args.index("--settings") + 1])
    assert (settings["val_interval"], settings["num_iterations"], settings["algorithm_name"]) == (5, 20, "fixmatch")
    server = json.dumps(json.loads((job / "app" / "config" / "config_fed_server.json").read_text()))
    assert '"num_rounds": 4' in server and "monai_ssl_ext.fl.job.bundle_network" in server and "val_auc" in server
    # the server's model is the sites' training network: the same state_dict keys and shapes
    net = bundle_network("baselines_ultrasound", ["train.json"], {**TINY, "class_names": CLASSES})
    site = SemiSupervisedMonaiAlgo(find_bundle("baselines_ultrasound"), ["configs/train.json"],
                                   {**TINY, "datalist": str(small_data), "data_root": str(small_data.parent),
                                    "label_budget": 10, "output_dir": str(tmp_path / "o"),
                                    "ckpt_dir": str(tmp_path / "m")})  # fmt: skip
    site.initialize({})
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in site.trainer.network.state_dict().items()
    }
    with pytest.raises(ValueError, match="without spaces"):
        write_job("baselines_ultrasound", sites, tmp_path / "jobs" / "x", rounds=1, local_iterations=1,
                  settings={"algorithm_name": "a b"})  # fmt: skip


def _simulate(job: Path, workspace: Path, sites: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace), "-n", str(len(sites)),
           "-t", str(len(sites)), "-c", ",".join(sites)]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@needs_flare
@pytest.mark.slow
def test_a_site_whose_data_root_is_missing_fails_its_task_and_the_job_says_why(tmp_path, small_data):
    from monai_ssl_ext.fl.job import write_job

    sites = _sites(tmp_path, small_data)
    entries = json.loads(sites.read_text())
    entries["site-2"]["data_root"] = str(tmp_path / "not_here")
    sites.write_text(json.dumps(entries))
    job = write_job("baselines_ultrasound", sites, tmp_path / "jobs" / "j", rounds=1, local_iterations=2,
                    settings=TINY, class_names=CLASSES)  # fmt: skip
    done = _simulate(job, tmp_path / "ws", ["site-1", "site-2"])
    log = done.stdout + done.stderr
    assert f"site site-2: data root {tmp_path / 'not_here'} does not exist" in log
    assert "FedAvg exiting" in log or done.returncode != 0


def test_a_global_model_file_becomes_a_trained_model_folder_beside_a_sites_configuration(tmp_path):
    site = tmp_path / "site-1" / "models"
    site.mkdir(parents=True)
    (site / "train_config.json").write_text(json.dumps({"algorithm_name": "fixmatch", "image_size": 32}))
    weights = {"head.weight": torch.ones(2, 4), "head.bias": torch.zeros(2)}
    server = tmp_path / "best_FL_global_model.pt"
    torch.save({"model": weights, "meta_props": {"round": 3}, "train_conf": {"train": {}}}, server)
    out = export_global_model(server, site, tmp_path / "global")
    saved = torch.load(out / "model.pt", weights_only=True)
    assert set(saved) == {"model"} and all(torch.equal(saved["model"][k], v) for k, v in weights.items())
    assert json.loads((out / "train_config.json").read_text())["algorithm_name"] == "fixmatch"

    with pytest.raises(FileNotFoundError, match="no trained configuration; give the ckpt_dir of a site"):
        export_global_model(server, tmp_path, tmp_path / "other")
    torch.save({"meta_props": {"round": 3}}, server)
    with pytest.raises(ValueError, match="holds no weights"):
        export_global_model(server, site, tmp_path / "other")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- the three arms


def _fl_sites(tmp_path: Path, small_data: Path, budgets: str = "4,6") -> Path:
    sites_dir = tmp_path / "sites"
    main(["fl_sites", str(small_data), str(sites_dir), "--label_budgets", budgets,
          "--data_root", str(small_data.parent), "--seeds", "0"])  # fmt: skip
    return sites_dir


@needs_flare
@pytest.mark.slow
def test_fl_benchmark_runs_each_site_alone_federated_and_centralised_and_pairs_them(tmp_path, small_data):
    from monai_ssl_ext.fl.job import bundle_network

    sites_dir = _fl_sites(tmp_path, small_data)
    out = tmp_path / "bench"
    tiny = [f"--{k}={v}" for k, v in TINY.items() if k not in ("val_interval", "num_iterations")]
    args = ["fl_benchmark", str(sites_dir), "--bundle", "baselines_ultrasound", "--algorithms", "fixmatch",
            "--seeds", "0", "--profile", "smoke", "--rounds", "2", "--num_iterations", "6", "--val_interval", "3",
            "--output", str(out), *tiny]  # fmt: skip
    main(args)
    records = json.loads((out / "results.json").read_text())
    arms = ["site-1 alone", "site-2 alone", "centralised", "federated"]
    assert [r["algorithm"] for r in records] == [f"fixmatch ({arm})" for arm in arms]
    # one group: the same test images, whatever the arm
    assert {(r["dataset"], r["labels"]) for r in records} == {("synthetic_ultrasound, 2 sites", "4+6")}
    test_ids = [json.loads((out / r["eval_dir"] / "predictions.json").read_text())["image_ids"] for r in records]
    assert all(ids == test_ids[0] for ids in test_ids)
    federated = records[-1]
    assert (federated["iterations"], federated["rounds"], federated["teacher"]) == (6, 2, "global")
    assert federated["train_images_per_s"] > 0 and federated["peak_memory_mb"] > 0  # from the sites' summaries
    # FLARE's best and its final global model were both validated (pooled validation); the better one was tested
    validation = federated["validation_of_global_models"]
    assert set(validation) == {"best_FL_global_model.pt", "FL_global_model.pt"}
    assert federated["global_model"] == max(validation, key=validation.get)
    run = out / "federated" / "fixmatch" / "labels4+6_rounds2_global_mu0" / "seed0"
    chosen = run / Path(federated["global_model"]).stem
    assert (chosen / "eval_validation" / "metrics.json").is_file()
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["extra"]["checkpoint"] == str(chosen / "model.pt")
    log = (run / "simulator.log").read_text()
    for site in ("site-1", "site-2"):
        for round_ in (0, 1):  # each site validated each round's global model and sent the key metric
            assert f"site {site}, round {round_}: global model {{'val_auc'" in log
        # each site trained 2 rounds of 3 iterations in its own workspace
        summary = json.loads((run / "workspace" / site / "runs" / "fixmatch" / "train_summary.json").read_text())
        assert (summary["iterations"], summary["best_metric_name"]) == (6, "val_auc")
    # the server's last model is the sites' training network, finite
    server = run / "workspace" / "server" / "simulate_job" / "app_server"
    weights = torch.load(server / "FL_global_model.pt", weights_only=False)["model"]
    net = bundle_network("baselines_ultrasound", ["train.json"], {**TINY, "class_names": CLASSES})
    net.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    assert all(torch.isfinite(p).all() for p in net.parameters())
    table = (out / "results.md").read_text()
    assert "Difference to fixmatch (federated)" in table
    for arm in arms[:3]:
        assert f"| fixmatch ({arm}) | 0 |" in table
    # resumable: a second call trains nothing and writes the same records
    started = os.path.getmtime(out / "federated" / "results.json")
    main(args)
    assert os.path.getmtime(out / "federated" / "results.json") == started
    assert json.loads((out / "results.json").read_text()) == records


def test_fl_benchmark_checks_the_pooled_manifests_and_settings_before_training(tmp_path, small_data, capsys):
    sites_dir = _fl_sites(tmp_path, small_data)
    out = tmp_path / "bench"
    base = ["fl_benchmark", str(sites_dir), "--output", str(out)]
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "0,1"])
    assert f"{sites_dir / 'pooled_seed1.json'}: no pooled manifest for seed 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "0", "--label_budget", "10"])
    assert "label_budget: set by the benchmark for each arm, not an override" in capsys.readouterr().err
    # the sites file changed after the pooled manifests were written: they pool other budgets
    entries = json.loads((sites_dir / "sites.json").read_text())
    entries["site-1"]["label_budget"] = 5
    (sites_dir / "sites.json").write_text(json.dumps(entries))
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "0"])
    assert "pools other sites than sites.json (label_budgets differ)" in capsys.readouterr().err
    entries["site-1"] = {**entries["site-1"], "label_budget": 4, "settings": {"num_iterations": 3}}
    (sites_dir / "sites.json").write_text(json.dumps(entries))
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "0"])
    assert "site site-1: its settings num_iterations are set by the benchmark" in capsys.readouterr().err
    assert not out.exists()


def test_a_federation_that_ended_early_is_named_by_its_site(tmp_path):
    from monai_ssl_ext.benchmark.federated import FederatedRunError, site_summaries

    for site, iterations in (("site-1", 6), ("site-2", 3)):
        folder = tmp_path / site / "runs" / "fixmatch"
        folder.mkdir(parents=True)
        (folder / "train_summary.json").write_text(json.dumps({"iterations": iterations}))
    assert site_summaries(tmp_path, ["site-1"], 6, tmp_path / "log")["site-1"]["iterations"] == 6
    with pytest.raises(FederatedRunError, match="site site-2 trained 3 of 6 iterations"):
        site_summaries(tmp_path, ["site-1", "site-2"], 6, tmp_path / "log")
    with pytest.raises(FederatedRunError, match="site site-3 trained 0 of 6 iterations"):
        site_summaries(tmp_path, ["site-3"], 6, tmp_path / "log")
