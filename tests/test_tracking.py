"""Experiment tracking: MONAI's ``--tracking mlflow`` handlers on the semi-supervised trainer and its validator.

``python -m monai.bundle run training ... --tracking mlflow`` appends the MLFlowHandler configs of
``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS`` to ``train#handlers`` and ``validate#handlers``. The test
instantiates those handler configs as they are (with a tracking database in a temporary folder), runs a
tiny training with validation and reads the run back with ``MlflowClient``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.engines import SupervisedEvaluator
from monai.handlers import MLFlowHandler, ValidationHandler
from monai.utils import path_to_sqlite_uri

from monai_ssl_ext.algorithms import FixMatch
from monai_ssl_ext.data import SeededTransformDataset, SemiSupervisedLoader
from monai_ssl_ext.engines import ClassificationMetric, SemiSupervisedTrainer, output_scalars
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.networks import Classifier
from monai_ssl_ext.transforms import get_profile

mlflow = pytest.importorskip("mlflow")

SIZE = 16
EPOCHS, EPOCH_LENGTH = 2, 2


def _tracking_handlers(tmp_path, **trainer_overrides) -> tuple[MLFlowHandler, MLFlowHandler, str]:
    """The trainer's and the validator's MLFlowHandler, built from MONAI's default tracking settings."""
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS["configs"])
    executed = tmp_path / "config_executed.json"  # what patch_bundle_tracking writes for "save_execute_config"
    executed.write_text(json.dumps({"algorithm_name": "fixmatch"}))
    settings.update(output_dir=str(tmp_path), save_execute_config=str(executed))
    settings["trainer"].update(trainer_overrides)
    parser = ConfigParser(settings)
    uri = parser.get_parsed_content("tracking_uri")
    return parser.get_parsed_content("trainer"), parser.get_parsed_content("validator"), uri


def _trainer_and_validator(train_handlers, val_handlers):
    g = torch.Generator().manual_seed(0)

    def image(i):
        return torch.rand(1, SIZE, SIZE, generator=g) * 0.5 + 0.4 * (i % 2)

    lab = [{DataKeys.IMAGE: image(i), DataKeys.LABEL: i % 2} for i in range(8)]
    unl = [{DataKeys.IMAGE: image(i), DataKeys.HIDDEN_LABEL: i % 2} for i in range(8)]  # benchmark mode
    val = [{DataKeys.IMAGE: image(i), DataKeys.LABEL: i % 2} for i in range(8)]
    profile = get_profile("ultrasound", image_size=SIZE)
    loader = SemiSupervisedLoader(
        SeededTransformDataset(lab, profile.labeled_transforms()),
        SeededTransformDataset(unl, profile.unlabeled_transforms()),
        labeled_batch_size=4,
        unlabeled_batch_size=4,
    )
    torch.manual_seed(0)
    net = Classifier(2, depth=10, return_dict=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    evaluator = SupervisedEvaluator(
        "cpu",
        torch.utils.data.DataLoader(val, batch_size=8),
        net,
        key_val_metric={"val_auc": ClassificationMetric("auc")},
        additional_metrics={"val_accuracy": ClassificationMetric("accuracy")},
        val_handlers=val_handlers,
    )
    # as in the bundles; patch_bundle_tracking appends the MLflow handler after the bundle's own handlers
    handlers = [ValidationHandler(validator=evaluator, interval=1, epoch_level=True), *train_handlers]
    trainer = SemiSupervisedTrainer(
        "cpu",
        EPOCHS,
        loader,
        net,
        optimizer,
        FixMatch(2, threshold=0.6),
        epoch_length=EPOCH_LENGTH,
        train_handlers=handlers,
    )
    return trainer, evaluator


def _the_run(uri: str):
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(DEFAULT_MLFLOW_SETTINGS["configs"]["experiment_name"])
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_default_mlflow_tracking_logs_training_loss_and_validation_metrics(tmp_path):
    with pytest.raises(ValueError, match="file store"):  # MONAI >= 1.6 refuses MLflow's file store
        MLFlowHandler(tracking_uri=(tmp_path / "mlruns").as_uri())
    train_mlflow, val_mlflow, uri = _tracking_handlers(tmp_path)
    assert uri == path_to_sqlite_uri(tmp_path / "mlruns.db")
    trainer, evaluator = _trainer_and_validator([train_mlflow], [val_mlflow])
    trainer.run()

    client, run = _the_run(uri)
    assert run.info.status == "FINISHED"  # the trainer's handler closes the run (close_on_complete)
    assert run.data.params["max_epochs"] == str(EPOCHS) and run.data.params["epoch_length"] == str(EPOCH_LENGTH)
    # every iteration: the loss (from_engine(["loss"], first=True) of the decollated output) and the lr
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, EPOCHS * EPOCH_LENGTH + 1))
    assert all(math.isfinite(m.value) and m.value > 0 for m in losses)
    assert losses[-1].value == pytest.approx(float(trainer.state.output[0]["loss"]))
    lrs = client.get_metric_history(run.info.run_id, "lr_group_0")
    assert [m.value for m in lrs] == pytest.approx([0.05] * EPOCHS * EPOCH_LENGTH)
    # every epoch: the validator's metrics, at the trainer's epoch
    for name in ("val_auc", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), name
        assert history[-1].value == pytest.approx(evaluator.state.metrics[name]), name
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config_executed.json"]


@pytest.mark.slow  # a second tracking database and training run: ~7 s on 2 busy CPU cores
def test_mlflow_logs_every_output_scalar_with_output_scalars(tmp_path):
    # the bundles' TensorBoard transform also works for MLflow: loss terms, lr and pseudo-label accuracy
    train_mlflow, val_mlflow, uri = _tracking_handlers(tmp_path, output_transform=output_scalars)
    trainer, _ = _trainer_and_validator([train_mlflow], [val_mlflow])
    trainer.run()

    client, run = _the_run(uri)
    expected = set(output_scalars(trainer.state.output))
    assert {"loss", "loss_sup", "loss_unsup", "mask_rate", "lr", "pseudo_label_acc", "pseudo_label_acc_all"} <= expected
    assert expected | {"lr_group_0", "val_auc", "val_accuracy"} == set(run.data.metrics)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "pseudo_label_acc_all")]
    assert steps == list(range(1, EPOCHS * EPOCH_LENGTH + 1))
