"""Bundles from one definition: rendering, the drift check, the trained configuration, checks and loading."""

from __future__ import annotations

import inspect
import json
import pydoc
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_ssl_ext.bundle import (
    TrainedConfigError,
    bundle_names,
    check_rendered,
    config_stack,
    describe_network_io,
    freeze_settings,
    read_trained_config,
    render_bundle,
    write_trained_config,
)
from monai_ssl_ext.bundle.checks import BundleCheckError, _check_metadata, check_bundle
from monai_ssl_ext.bundle.render import apply_overrides
from monai_ssl_ext.cli import main
from monai_ssl_ext.engines import CheckpointMismatchError, load_model_weights
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"


def test_every_bundle_folder_is_defined_and_every_definition_rendered():
    folders = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir())
    assert folders == bundle_names()


@pytest.mark.parametrize("name", bundle_names())
def test_committed_bundle_files_equal_their_rendering(name):
    assert check_rendered(name, BUNDLES) == [], f"run `monai-ssl render_bundles {name}` and commit the result"


def test_a_hand_edit_of_a_rendered_file_fails_the_drift_check(tmp_path, capsys):
    shutil.copytree(BUNDLES / "baselines_ultrasound", tmp_path / "baselines_ultrasound")
    train = tmp_path / "baselines_ultrasound" / "configs" / "train.json"
    config = json.loads(train.read_text())
    config["learning_rate"] = 0.02
    train.write_text(json.dumps(config, indent=4) + "\n")
    (tmp_path / "baselines_ultrasound" / "docs" / "data_license.txt").unlink()

    assert check_rendered("baselines_ultrasound", tmp_path) == ["configs/train.json", "docs/data_license.txt"]
    with pytest.raises(SystemExit) as exit_info:
        main(["render_bundles", "baselines_ultrasound", "--bundles_dir", str(tmp_path), "--check"])
    assert exit_info.value.code == 2
    assert "differs from the definition" in capsys.readouterr().err
    # rendering repairs it, and then the check passes
    main(["render_bundles", "baselines_ultrasound", "--bundles_dir", str(tmp_path)])
    assert check_rendered("baselines_ultrasound", tmp_path) == []


@pytest.mark.parametrize("name", bundle_names())
def test_algorithm_entries_restate_no_python_default(name):
    algorithms = json.loads(render_bundle(name)["configs/train.json"])["algorithms"]
    for key, entry in algorithms.items():
        if not isinstance(entry, dict):
            assert entry.startswith("$functools.partial(@algorithms#"), f"{key}: an ablation is a variant of its method"
            continue
        signature = inspect.signature(pydoc.locate(entry["_target_"]))
        for arg, value in entry.items():
            if arg.startswith("_") or isinstance(value, (str, dict)):
                continue
            default = signature.parameters[arg].default
            assert value != default, f"{name}: algorithms#{key}#{arg} restates the Python default {default!r}"


def test_overrides_follow_monai_rules_and_refuse_a_path_into_nothing():
    base = {"a": 1, "network_def": {"x": 1}, "train": {"handlers": [{"k": 1}]}}
    out = apply_overrides(base, {"classifier_def": {"y": 2}, "network_def": "@classifier_def", "train#handlers#0#k": 3})
    assert list(out) == ["a", "classifier_def", "network_def", "train"]  # the new key lands before its user
    assert out["train"]["handlers"][0]["k"] == 3 and base["train"]["handlers"][0]["k"] == 1
    assert "a" not in apply_overrides(base, {"remove": ["a"]})
    with pytest.raises(KeyError, match="no entry 'validate'"):
        apply_overrides(base, {"validate#evaluator#amp": False})
    # in an overlay the same key is kept for MONAI to apply to the config below
    assert (
        apply_overrides({"run": []}, {"validate#evaluator#amp": False}, overlay=True)["validate#evaluator#amp"] is False
    )


def test_workflow_config_stacks():
    assert config_stack("training", "smoke", ["ham10000.json"], nproc=2) == [
        "train.json",
        "profiles/smoke.json",
        "ham10000.json",
        "multi_gpu_train.json",
    ]
    assert config_stack("evaluating") == ["train.json", "evaluate.json"]
    assert config_stack("inference", overlays=["x.json"]) == ["inference.json", "x.json"]
    with pytest.raises(ValueError, match="unknown workflow"):
        config_stack("predict")


def test_trained_configuration_round_trip_and_fallback(tmp_path):
    path = write_trained_config(tmp_path / "models", {"image_size": 64, "class_names": ("a", "b"), "root": tmp_path})
    assert path == tmp_path / "models" / "train_config.json"
    assert read_trained_config(tmp_path / "models" / "model.pt") == {
        "image_size": 64,
        "class_names": ["a", "b"],
        "root": str(tmp_path),
    }
    fallback = {"image_size": 224, "backbone": "resnet18"}
    assert read_trained_config(tmp_path / "models" / "model.pt", fallback) == {"image_size": 64, "backbone": "resnet18"}
    assert read_trained_config(tmp_path / "elsewhere" / "model.pt", fallback) == fallback
    with pytest.raises(TrainedConfigError, match=r"elsewhere/train_config\.json: no trained configuration"):
        read_trained_config(tmp_path / "elsewhere" / "model.pt")
    path.write_text("[1, 2]")
    with pytest.raises(TrainedConfigError, match="expected a JSON object"):
        read_trained_config(tmp_path / "models")


def test_frozen_settings_keep_strings_from_data_inert():
    config = {"trained": "$x", "fallback": {}, "class_names": "$@trained['class_names']", "n": "$len(@class_names)"}
    names = ["$__import__('os').system('false')", "@n", "%run", "benign"]
    frozen = freeze_settings(config, {"class_names": names})
    assert "trained" not in frozen and "fallback" not in frozen
    parser = ConfigParser(frozen)
    assert parser.get_parsed_content("class_names") == names
    assert parser.get_parsed_content("n") == 4


def test_network_io_is_described_from_the_settings():
    meta = json.loads((BUNDLES / "hermes_ultrasound" / "configs" / "metadata.json").read_text())
    settings = {"image_size": 64, "in_channels": 3, "modality": "dermoscopy", "class_names": list("abcdefg")}
    io = describe_network_io(meta["network_data_format"], settings)
    image = io["inputs"]["image"]
    assert image["spatial_shape"] == [64, 64] and image["num_channels"] == 3 and image["modality"] == "XC"
    assert image["channel_def"] == {"0": "R", "1": "G", "2": "B"}
    assert io["outputs"]["class"]["channel_def"]["6"] == "g" and io["outputs"]["class"]["num_channels"] == 7
    assert io["outputs"]["seg"]["spatial_shape"] == [64, 64] and io["outputs"]["seg"]["num_channels"] == 2


def test_a_checkpoint_of_another_network_is_named_with_its_first_differing_key(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": Classifier(2, depth=10).state_dict()}, path)
    network = Classifier(2, depth=10)
    load_model_weights(network, path)
    assert torch.equal(network.state_dict()["head.weight"], torch.load(path)["model"]["head.weight"])
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(Classifier(2, depth=18), path)
    message = str(err.value)
    assert str(path) in message and "encoder." in message and "\n" not in message
    with pytest.raises(CheckpointMismatchError, match=r"'head\.weight' is \(2, 512\) in the checkpoint, \(3, 512\)"):
        load_model_weights(Classifier(3, depth=10), path)


@pytest.fixture()
def bundle_copy(tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"metadata schema absent: {SCHEMA}")
    return Path(shutil.copytree(BUNDLES / "baselines_ultrasound", tmp_path / "baselines_ultrasound"))


def test_check_names_a_missing_data_licence(bundle_copy):
    (bundle_copy / "docs" / "data_license.txt").unlink()
    with pytest.raises(BundleCheckError, match=r"missing docs/data_license\.txt"):
        check_bundle(bundle_copy, schema=SCHEMA)


def test_check_names_a_missing_workflow_property(bundle_copy):
    train = bundle_copy / "configs" / "train.json"
    config = json.loads(train.read_text())
    del config["dataset_dir"]
    train.write_text(json.dumps(config))
    with pytest.raises(BundleCheckError, match=r"train\.json lacks the train workflow properties.*dataset_dir"):
        check_bundle(bundle_copy, schema=SCHEMA)


def test_check_accepts_no_eval_metrics_only_where_the_readme_says_none_were_measured(bundle_copy):
    meta_file = bundle_copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["eval_metrics"]
    meta_file.write_text(json.dumps(meta))
    readme = bundle_copy / "docs" / "README.md"
    text = readme.read_text()
    # said elsewhere than under Performance, it does not count
    readme.write_text(text.replace("## Limitations\n", "## Limitations\n\nNo figures have been measured yet.\n"))
    with pytest.raises(BundleCheckError, match="eval_metrics"):
        check_bundle(bundle_copy, schema=SCHEMA)
    readme.write_text(text.replace("## Performance\n", "## Performance\n\nNo figures have been\nmeasured yet.\n"))
    # the metadata step alone (the whole check of such a bundle runs on hsc_histology in test_bundles.py)
    assert "eval_metrics" not in _check_metadata(bundle_copy, SCHEMA)


def test_check_names_a_missing_readme_section_and_missing_eval_metrics(bundle_copy):
    readme = bundle_copy / "docs" / "README.md"
    readme.write_text(readme.read_text().replace("## Limitations", "## Caveats"))
    with pytest.raises(BundleCheckError, match="no 'Limitations' section"):
        check_bundle(bundle_copy, schema=SCHEMA)
    meta_file = bundle_copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["eval_metrics"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BundleCheckError, match="eval_metrics"):
        check_bundle(bundle_copy, schema=SCHEMA)


@pytest.mark.parametrize("name", bundle_names())
def test_multi_gpu_overlay_finds_tensorboard_and_validation_by_their_handler_index(name):
    files = render_bundle(name)
    handlers = json.loads(files["configs/train.json"])["train"]["handlers"]
    overlay = json.loads(files["configs/multi_gpu_train.json"])
    (key,) = [k for k in overlay if k.startswith("train#handlers#") and k.endswith("#_disabled_")]
    assert handlers[int(key.split("#")[2])]["_target_"] == "TensorBoardStatsHandler"
    validator = next(h for h in handlers if h["_target_"] == "ValidationHandler")
    assert validator["interval"] == "@val_interval" and validator["epoch_level"] is False
    # under torchrun each process validates every val_interval / world_size of its steps (the budget is shared)
    (key,) = [k for k in overlay if k.startswith("train#handlers#") and k.endswith("#interval")]
    assert handlers[int(key.split("#")[2])] is validator and overlay[key] == "@steps_per_validation"


@pytest.mark.parametrize("name", bundle_names())
def test_multi_gpu_finalize_ends_the_process_group_through_the_package(name):
    overlay = json.loads(render_bundle(name)["configs/multi_gpu_train.json"])
    assert overlay["finalize"] == ["$monai_ssl_ext.utils.finish_process_group()"]


# where each bundle's eval_metrics come from: the default algorithm's row of a table in docs/benchmarks.md
EVAL_METRICS_SOURCE = {
    "baselines_ultrasound": ("## BUSI, benign vs malignant, 216 labels", "fixmatch"),
    "hermes_ultrasound": ("### 216 labels under the `cpu` profile (version 0.3.1), the authors' training", "hermes"),
    "semise_ultrasound": ("### The bundle's default under the `cpu` profile (version 0.3.0)", "semise"),
}
COLUMNS = {
    "Accuracy": "accuracy",
    "Balanced acc.": "balanced_accuracy",
    "Macro-F1": "macro_f1",
    "AUC": "auc",
    "Dice": "dice",
    "Severity MAE": "severity_mae",
}


def _benchmark_row(heading: str, algorithm: str) -> dict[str, float]:
    text = (REPO / "docs" / "benchmarks.md").read_text().split(heading, 1)[1]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines if line.split("|")[1].strip() == algorithm)
    cells = [c.strip() for c in row.strip("|").split("|")]
    out = {}
    for name, cell in zip(header, cells, strict=True):
        if name in COLUMNS:
            mean = float(cell.split("±")[0])
            out[COLUMNS[name]] = mean if name == "Severity MAE" else mean / 100
    return out


@pytest.mark.parametrize("name", bundle_names())
def test_eval_metrics_are_the_default_algorithms_benchmark_row(name):
    if name not in EVAL_METRICS_SOURCE:
        # no benchmark row yet: the metadata states no figure rather than one nobody measured
        assert "eval_metrics" not in json.loads(render_bundle(name)["configs/metadata.json"])
        return
    heading, algorithm = EVAL_METRICS_SOURCE[name]
    train = json.loads(render_bundle(name)["configs/train.json"])
    assert train["algorithm_name"] == algorithm
    metrics = json.loads(render_bundle(name)["configs/metadata.json"])["eval_metrics"]
    assert metrics == pytest.approx(_benchmark_row(heading, algorithm), abs=5e-5)


def test_trained_paths_are_recorded_absolute_and_a_resume_may_change_only_the_length(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "list.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    settings = {"datalist": "data/list.json", "data_root": "data", "image_size": 64, "num_iterations": 300}
    path = write_trained_config("models", settings)
    recorded = json.loads(path.read_text())
    assert recorded["datalist"] == str(tmp_path / "data" / "list.json") and recorded["data_root"] == str(
        tmp_path / "data"
    )
    # extending the run is a resume; anything else would relabel the weights with settings they were not trained with
    write_trained_config("models", {**settings, "num_iterations": 600}, resume_from="latest")
    with pytest.raises(TrainedConfigError, match=r"trained with image_size=64, this run sets image_size=224"):
        write_trained_config("models", {**settings, "image_size": 224}, resume_from="latest")
    assert json.loads(path.read_text())["num_iterations"] == 600
    write_trained_config("models", {**settings, "image_size": 224})  # a new run may
    assert json.loads(path.read_text())["image_size"] == 224


def test_rectangular_inputs_are_described_with_both_sides():
    meta = json.loads((BUNDLES / "baselines_ultrasound" / "configs" / "metadata.json").read_text())
    settings = {"image_size": [96, 128], "in_channels": 1, "modality": "histology", "class_names": ["a", "b"]}
    image = describe_network_io(meta["network_data_format"], settings)["inputs"]["image"]
    assert image["spatial_shape"] == [96, 128] and image["modality"] == "SM"


def test_export_names_an_override_that_is_no_setting(tmp_path):
    from monai_ssl_ext.deploy import export_bundle

    ckpt = tmp_path / "model.pt"
    torch.save(Classifier(2, depth=10).state_dict(), ckpt)
    with pytest.raises(ValueError, match="no setting 'backbone_depth'"):
        export_bundle(BUNDLES / "baselines_ultrasound", ckpt, tmp_path / "model.ts", backbone_depth=10)


def test_a_training_checkpoint_gives_its_network_weights(tmp_path):
    net = Classifier(2, depth=10)
    torch.save({"network": net.state_dict(), "optimizer": {}}, tmp_path / "checkpoint_epoch=2.pt")
    other = load_model_weights(Classifier(2, depth=10), tmp_path / "checkpoint_epoch=2.pt")
    assert torch.equal(other.state_dict()["head.weight"], net.state_dict()["head.weight"])
