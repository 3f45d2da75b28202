"""The semi-supervised trainer: events for standard handlers, exact resume, pseudo-label accuracy, errors."""

from __future__ import annotations

import itertools
import json
import logging
import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler, ValidationHandler, from_engine

from monai_ssl_ext.algorithms import FixMatch, FlexMatch, MeanTeacher, Supervised
from monai_ssl_ext.data import SeededTransformDataset, SemiSupervisedLoader
from monai_ssl_ext.engines import (
    AtomicCheckpointSaver,
    ClassificationMetric,
    OptimizerSet,
    ProgressLogger,
    PseudoLabelAccuracy,
    ResumeCheckpointLoader,
    SchedulerSet,
    SemiSupervisedStream,
    SemiSupervisedTrainer,
    TrainingHistory,
    find_latest_checkpoint,
    output_scalars,
    pseudo_label_accuracy,
)
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.networks import Classifier
from monai_ssl_ext.transforms import get_profile

SIZE = 16
ALGORITHMS = {"supervised": Supervised, "mean_teacher": MeanTeacher, "fixmatch": FixMatch, "flexmatch": FlexMatch}


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    # class 1 images are brighter, so a few steps learn something
    lab = [
        {DataKeys.IMAGE: torch.rand(1, SIZE, SIZE, generator=g) * 0.5 + 0.4 * (i % 2), DataKeys.LABEL: i % 2}
        for i in range(8)
    ]
    unl = [
        {DataKeys.IMAGE: torch.rand(1, SIZE, SIZE, generator=g) * 0.5 + 0.4 * (i % 2), DataKeys.HIDDEN_LABEL: i % 2}
        for i in range(16)
    ]
    return lab, unl


def two_optimizers(net: Classifier) -> OptimizerSet:
    """SGD for the encoder, Adam for the head: a set of optimisers with different rules and state."""
    return OptimizerSet(
        {
            "encoder": torch.optim.SGD(net.encoder.parameters(), lr=0.05, momentum=0.9),
            "head": torch.optim.Adam(net.head.parameters(), lr=0.01),
        }
    )


def make_trainer(
    algorithm_name="fixmatch", epochs=2, epoch_length=3, handlers=None, seed=0, net_seed=0, optimizer=None, **options
):
    profile = get_profile("ultrasound", image_size=SIZE)
    lab, unl = make_data()
    loader = SemiSupervisedLoader(
        SeededTransformDataset(lab, profile.labeled_transforms()),
        SeededTransformDataset(unl, profile.unlabeled_transforms()),
        labeled_batch_size=4,
        unlabeled_batch_size=8,
        seed=seed,
    )
    torch.manual_seed(net_seed)
    net = Classifier(2, depth=10, return_dict=True, dropout=0.2)  # dropout: per-step torch RNG must be reproduced
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if optimizer is None else optimizer(net)
    kwargs = {"threshold": 0.6} if algorithm_name in ("fixmatch", "flexmatch") else {}
    algorithm = options.pop("algorithm_class", ALGORITHMS[algorithm_name])(num_classes=2, **kwargs)
    trainer = SemiSupervisedTrainer(
        "cpu",
        epochs,
        loader,
        net,
        opt,
        algorithm,
        epoch_length=epoch_length,
        seed=seed,
        train_handlers=handlers,
        **options,
    )
    return trainer, net, opt, algorithm


def test_trainer_fires_monai_iteration_events_and_standard_handlers_work(capsys):
    fired = []
    trainer, *_ = make_trainer("mean_teacher", epochs=1, epoch_length=2)
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda e, ev=event: fired.append(ev))
    StatsHandler(output_transform=from_engine(["loss"], first=True), name="stats_test").attach(trainer)
    trainer.run()
    assert fired[:4] == [
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ]
    assert len(fired) == 8
    assert "Iter: 2/2 -- Loss:" in capsys.readouterr().out
    # decollated like SupervisedTrainer: one dict per labeled sample, scalars replicated
    out = trainer.state.output
    assert isinstance(out, list) and len(out) == 4
    assert {"loss", "loss_sup", "loss_consistency", "pseudo_label_acc", "mask_rate"} <= set(out[0])


def test_hidden_labels_never_reach_the_algorithm():
    trainer, *_ = make_trainer("fixmatch", epochs=1, epoch_length=1)
    seen = {}
    original = trainer.algorithm.train_step

    def spy(network, labeled, unlabeled, step):
        seen.update(unlabeled)
        return original(network, labeled, unlabeled, step)

    trainer.algorithm.train_step = spy
    trainer.run()
    assert DataKeys.HIDDEN_LABEL not in seen and DataKeys.IMAGE_STRONG in seen
    assert 0.0 <= trainer.state.output[0]["pseudo_label_acc_all"] <= 1.0


def test_pseudo_label_accuracy_matches_definition():
    from types import SimpleNamespace

    from monai_ssl_ext.algorithms import StepOutput

    result = StepOutput(
        loss=torch.tensor(1.0), pseudo_label=torch.tensor([0, 1, 1, 0]), pseudo_mask=torch.tensor([1.0, 1.0, 0.0, 0.0])
    )
    # the step output carries what the handler needs; the handler adds the two scalars
    out = SemiSupervisedTrainer._make_output({DataKeys.IMAGE: torch.zeros(1)}, result, torch.tensor([0, 0, 1, 1]))
    assert "pseudo_label_acc" not in out
    PseudoLabelAccuracy()(SimpleNamespace(state=SimpleNamespace(output=out)))
    assert out["pseudo_label_acc"] == pytest.approx(0.5)  # used: [0 ok, 1 wrong]
    assert out["pseudo_label_acc_all"] == pytest.approx(0.5)  # all: ok, wrong, ok, wrong
    assert set(output_scalars(out)) == {"loss", "pseudo_label_acc", "pseudo_label_acc_all"}
    # nothing used: "no evidence" (nan), not "all wrong"; no mask: every pseudo label is used
    none_used = pseudo_label_accuracy(torch.tensor([0, 1]), torch.zeros(2), torch.tensor([0, 1]))
    assert math.isnan(none_used["pseudo_label_acc"]) and none_used["pseudo_label_acc_all"] == 1.0
    assert pseudo_label_accuracy(torch.tensor([0, 1]), None, [1, 1])["pseudo_label_acc"] == pytest.approx(0.5)
    # without hidden labels (no benchmark mode) the handler adds nothing
    plain = SemiSupervisedTrainer._make_output({DataKeys.IMAGE: torch.zeros(1)}, result, None)
    PseudoLabelAccuracy()(SimpleNamespace(state=SimpleNamespace(output=plain)))
    assert "pseudo_label_acc" not in plain and "pseudo_label_acc_all" not in plain


def test_pseudo_label_accuracy_handler_is_attached_by_the_trainer_and_sees_the_batched_output():
    seen = {}
    trainer, *_ = make_trainer("fixmatch", epochs=1, epoch_length=2)
    attached = trainer._event_handlers[IterationEvents.LOSS_COMPLETED]
    assert any(isinstance(handler, PseudoLabelAccuracy) for handler, *_ in attached)

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def record(engine):  # after the trainer's handler: the accuracies computed from the step's tensors
        out = engine.state.output
        seen["acc"] = pseudo_label_accuracy(out["pseudo_label"], out["pseudo_mask"], out[DataKeys.HIDDEN_LABEL])
        seen["logged"] = {k: out[k] for k in seen["acc"]}
        seen["sizes"] = (len(out["pseudo_label"]), len(out[DataKeys.HIDDEN_LABEL]), len(out["image"]))

    trainer.run()
    assert seen["logged"] == seen["acc"] and seen["sizes"] == (8, 8, 4)
    out = trainer.state.output
    # decollated per labeled sample: the scalars replicated, the unlabeled batch's entries dropped
    assert len(out) == 4 and not {"pseudo_label", "pseudo_mask", DataKeys.HIDDEN_LABEL} & set(out[0])
    assert out[3]["pseudo_label_acc"] == seen["acc"]["pseudo_label_acc"] or math.isnan(out[3]["pseudo_label_acc"])

    off, *_ = make_trainer("fixmatch", epochs=1, epoch_length=1, pseudo_label_accuracy=False)
    off.run()
    assert "pseudo_label_acc" not in off.state.output[0] and "loss_unsup" in off.state.output[0]


def test_learning_rate_is_an_output_scalar(tmp_path, caplog):
    trainer, _, opt, _ = make_trainer("fixmatch", epochs=1, epoch_length=3, decollate=False)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(output_scalars(e.state.output)["lr"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())
    TrainingHistory(tmp_path, interval=1, plot=False).attach(trainer)  # no optimizer: the output's lr
    ProgressLogger(interval=1).attach(trainer)
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext.train"):
        trainer.run()
    # the rate each step used, halved after every step
    assert seen == pytest.approx([0.05, 0.025, 0.0125])
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["scalars"]["lr"] == pytest.approx([0.05, 0.025, 0.0125])
    assert list(history["scalars"])[-1] == "lr"  # recorded once per iteration, last
    assert "| lr 0.0125 |" in caplog.text
    # the non-decollated output keeps the unlabeled batch's tensors, which are not scalars
    assert {"pseudo_label", DataKeys.HIDDEN_LABEL} <= set(trainer.state.output)
    assert not {"pseudo_label", "pseudo_mask", DataKeys.HIDDEN_LABEL} & set(output_scalars(trainer.state.output))


def test_loader_must_be_a_semi_supervised_stream():
    trainer, net, opt, alg = make_trainer("supervised", epochs=1, epoch_length=1)
    assert isinstance(trainer.data_loader, SemiSupervisedLoader)
    assert isinstance(trainer.data_loader, SemiSupervisedStream)
    plain = torch.utils.data.DataLoader([{DataKeys.IMAGE: torch.zeros(1, 4, 4), DataKeys.LABEL: 0}])
    assert not isinstance(plain, SemiSupervisedStream)
    with pytest.raises(TypeError, match=r"SemiSupervisedStream.*lacks unlabeled_dataset, use_unlabeled, start_step"):
        SemiSupervisedTrainer("cpu", 1, plain, net, opt, alg, epoch_length=1)


def test_supervised_only_does_not_load_unlabeled_batches():
    trainer, *_ = make_trainer("supervised", epochs=1, epoch_length=2)
    trainer.run()
    assert trainer.data_loader.use_unlabeled is False
    assert trainer.state.samples_seen == 2 * 4


def _weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", ["mean_teacher", "flexmatch"])
def test_resume_from_checkpoint_continues_identically(tmp_path, name):
    # uninterrupted: 4 epochs of 2 iterations
    ref, ref_net, _, ref_alg = make_trainer(name, epochs=4, epoch_length=2)
    ref.run()

    # same configuration, killed after 2 epochs (checkpointed), resumed in a fresh process state
    first, net, opt, alg = make_trainer(name, epochs=4, epoch_length=2)
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"network": net, "optimizer": opt, "algorithm": alg, "trainer": first},
        save_interval=1,
        n_saved=1,
    )
    saver.attach(first)
    first.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    first.run()
    assert first.state.iteration == 4
    ckpt = find_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "checkpoint_epoch=2.pt"

    second, net2, opt2, alg2 = make_trainer(name, epochs=4, epoch_length=2, net_seed=123)  # different init
    ResumeCheckpointLoader(
        "latest", {"network": net2, "optimizer": opt2, "algorithm": alg2, "trainer": second}, ckpt_dir=tmp_path
    ).attach(second)
    second.run()
    assert second.state.iteration == 8
    for k, v in _weights(ref_net).items():
        torch.testing.assert_close(net2.state_dict()[k], v, rtol=0, atol=0, msg=f"{name}: {k} differs after resume")
    for k, v in ref_alg.state_dict().items():
        torch.testing.assert_close(alg2.state_dict()[k], v, rtol=0, atol=0)


def test_an_optimizer_set_with_its_schedulers_steps_every_member_and_resumes_identically(tmp_path):
    def schedule(opt):
        return SchedulerSet(opt, lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=8, power=0.9))

    def run(trainer, opt, *handlers):
        scheduler = schedule(opt)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())
        for handler in handlers:
            handler({"lr_scheduler": scheduler}).attach(trainer)
        trainer.run()
        return scheduler

    ref, ref_net, ref_opt, _ = make_trainer("fixmatch", epochs=4, epoch_length=2, optimizer=two_optimizers)
    start = _weights(ref_net)
    lrs = []
    ref.add_event_handler(Events.ITERATION_COMPLETED, lambda e: lrs.append(output_scalars(e.state.output)))
    run(ref, ref_opt)
    # both members stepped, each logged with its own rate
    assert not torch.equal(start["encoder.conv1.weight"], ref_net.state_dict()["encoder.conv1.weight"])
    assert not torch.equal(start["head.weight"], ref_net.state_dict()["head.weight"])
    assert lrs[0]["lr_encoder"] == 0.05 and lrs[0]["lr_head"] == 0.01 and lrs[0]["lr"] == 0.05
    assert lrs[-1]["lr_head"] == pytest.approx(0.01 * (1 - 7 / 8) ** 0.9)

    first, net, opt, alg = make_trainer("fixmatch", epochs=4, epoch_length=2, optimizer=two_optimizers)

    def saver(extra):
        objects = {"network": net, "optimizer": opt, "algorithm": alg, "trainer": first, **extra}
        return AtomicCheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=1)

    first.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    run(first, opt, saver)
    second, net2, opt2, alg2 = make_trainer("fixmatch", epochs=4, epoch_length=2, net_seed=9, optimizer=two_optimizers)

    def loader(extra):
        objects = {"network": net2, "optimizer": opt2, "algorithm": alg2, "trainer": second, **extra}
        return ResumeCheckpointLoader("latest", objects, ckpt_dir=tmp_path)

    scheduler = run(second, opt2, loader)
    assert second.state.iteration == 8 and scheduler["head"].last_epoch == 8
    for k, v in _weights(ref_net).items():
        torch.testing.assert_close(net2.state_dict()[k], v, rtol=0, atol=0, msg=f"{k} differs after resume")


class _FrozenEncoderFixMatch(FixMatch):
    """FixMatch whose even steps leave the encoder alone."""

    def frozen_parameters(self, network, step):
        return list(network.encoder.parameters()) if step % 2 == 0 else []


def test_frozen_parameters_of_a_step_keep_their_values_despite_momentum_and_decay():
    trainer, net, _, _ = make_trainer(
        "fixmatch",
        epochs=1,
        epoch_length=3,
        optimizer=lambda n: torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01),
        algorithm_class=_FrozenEncoderFixMatch,
    )

    def parameters(module):
        return {k: p.detach().clone() for k, p in module.named_parameters()}

    encoder, head = [parameters(net.encoder)], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: encoder.append(parameters(net.encoder)))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: head.append(parameters(net.head)))
    trainer.run()
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in itertools.pairwise(encoder)]
    assert same == [True, False, True]  # steps 0 and 2 frozen, step 1 trained
    assert not torch.equal(head[0]["weight"], head[2]["weight"])


class _StratifiedStartFixMatch(FixMatch):
    def stratified_steps(self, total_steps):
        return total_steps // 2


def test_trainer_tells_the_loader_how_many_first_steps_the_algorithm_wants_stratified():
    trainer, *_ = make_trainer("fixmatch", epochs=2, epoch_length=3, algorithm_class=_StratifiedStartFixMatch)
    assert trainer.data_loader.stratified_steps == 3
    plain, *_ = make_trainer("fixmatch", epochs=2, epoch_length=3)
    assert plain.data_loader.stratified_steps == 0


def test_history_and_progress_pick_up_where_a_resumed_run_starts(tmp_path, caplog):
    # the handlers are attached before the checkpoint loader, as in the bundles
    first, net, opt, alg = make_trainer("fixmatch", epochs=4, epoch_length=2)
    TrainingHistory(tmp_path / "run", optimizer=opt, interval=1, plot=False).attach(first)
    AtomicCheckpointSaver(
        str(tmp_path), {"network": net, "optimizer": opt, "algorithm": alg, "trainer": first}, save_interval=1
    ).attach(first)
    first.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    first.run()

    second, net2, opt2, alg2 = make_trainer("fixmatch", epochs=4, epoch_length=2)
    TrainingHistory(tmp_path / "run", optimizer=opt2, interval=1, plot=False).attach(second)
    ProgressLogger(interval=1).attach(second)
    ResumeCheckpointLoader(
        "latest", {"network": net2, "optimizer": opt2, "algorithm": alg2, "trainer": second}, ckpt_dir=tmp_path
    ).attach(second)
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext.train"):
        second.run()
    assert "resuming at iteration 4/8" in caplog.text and "[train] 8/8 (100%)" in caplog.text
    assert "[train] 5/8" in caplog.text and "[train] 4/8" not in caplog.text
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["iteration"] == [1, 2, 3, 4, 5, 6, 7, 8]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["iterations"] == 8


def test_same_seed_same_run_different_seed_different_run():
    a, net_a, *_ = make_trainer("fixmatch", epochs=1, epoch_length=3, seed=5)
    b, net_b, *_ = make_trainer("fixmatch", epochs=1, epoch_length=3, seed=5)
    c, net_c, *_ = make_trainer("fixmatch", epochs=1, epoch_length=3, seed=6)
    for t in (a, b, c):
        t.run()
    w = net_a.state_dict()["head.weight"]
    assert torch.equal(w, net_b.state_dict()["head.weight"])
    assert not torch.equal(w, net_c.state_dict()["head.weight"])


def test_resume_with_missing_checkpoint_fails_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        ResumeCheckpointLoader("latest", {}, ckpt_dir=tmp_path).attach(None)
    with pytest.raises(FileNotFoundError, match="not found"):
        ResumeCheckpointLoader(tmp_path / "nope.pt", {}).attach(None)
    ResumeCheckpointLoader(None, {}).attach(None)  # nothing to resume: a no-op


def test_atomic_saver_keeps_previous_file_when_saving_fails(tmp_path, monkeypatch):
    trainer, net, *_ = make_trainer("supervised", epochs=2, epoch_length=1)
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net}, save_interval=1, n_saved=2)
    saver.attach(trainer)
    calls = {"n": 0}
    original = torch.save

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            original({"partial": torch.zeros(1)}, f)  # something written, then the process "dies"
            raise OSError("disk full")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.run()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["network_epoch=1.pt"]  # no partial or temporary file; the good one intact
    state = torch.load(tmp_path / files[0], weights_only=True)
    assert "head.weight" in state and "partial" not in state


def test_nonfinite_loss_stops_with_clear_error():
    trainer, net, *_ = make_trainer("supervised", epochs=1, epoch_length=1)
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at iteration 1"):
        trainer.run()


def test_trainer_rejects_plain_batches():
    trainer, *_ = make_trainer("supervised", epochs=1, epoch_length=1)
    with pytest.raises(ValueError, match="labeled"):
        trainer._iteration(trainer, {DataKeys.IMAGE: torch.zeros(1)})


def test_validation_history_summary_and_progress(tmp_path, caplog):
    trainer, net, opt, _ = make_trainer("fixmatch", epochs=2, epoch_length=2)
    _, unl = make_data(1)
    val_data = [{DataKeys.IMAGE: d[DataKeys.IMAGE], DataKeys.LABEL: d[DataKeys.HIDDEN_LABEL]} for d in unl]
    evaluator = SupervisedEvaluator(
        "cpu",
        torch.utils.data.DataLoader(val_data, batch_size=8),
        net,
        key_val_metric={"val_auc": ClassificationMetric("auc")},
    )
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    TrainingHistory(tmp_path, validator=evaluator, optimizer=opt, interval=1).attach(trainer)
    ProgressLogger(interval=1).attach(trainer)
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext.train"):
        trainer.run()
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["iteration"] == [1, 2, 3, 4]
    assert len(history["scalars"]["loss"]) == 4 and history["scalars"]["lr"][0] == pytest.approx(0.05)
    assert history["validation"]["epoch"] == [1, 2] and len(history["validation"]["metrics"]["val_auc"]) == 2
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["iterations"] == 4 and summary["train_images_per_s"] > 0 and summary["peak_memory_mb"] > 0
    assert summary["best_metric"] == max(history["validation"]["metrics"]["val_auc"])
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    assert "ETA" in caplog.text and "4/4 (100%)" in caplog.text


def test_epoch_length_required_for_endless_loader():
    _, net, opt, alg = make_trainer("supervised")
    with pytest.raises(ValueError, match="epoch_length"):
        SemiSupervisedTrainer("cpu", 1, iter([]), net, opt, alg, epoch_length=None)


def test_trainer_state_events_order_for_resume_alignment():
    # the loader must be aligned after STARTED handlers (checkpoint loaders) and before the first batch
    trainer, *_ = make_trainer("supervised", epochs=1, epoch_length=1)

    def jump(engine):
        engine.state.iteration = 0
        engine.data_loader.start_step = 999  # stale value that the trainer must overwrite at EPOCH_STARTED

    trainer.add_event_handler(Events.STARTED, jump)
    trainer.run()
    assert trainer.data_loader.start_step == 0


def test_summary_reports_the_share_of_time_spent_waiting_for_data(tmp_path, monkeypatch):
    import time as time_module

    from monai_ssl_ext.data import SemiSupervisedLoader

    original = SemiSupervisedLoader.__iter__

    def slow_iter(self):
        for batch in original(self):
            time_module.sleep(1.0)  # a data pipeline much slower than the tiny model's step, even on a busy machine
            yield batch

    monkeypatch.setattr(SemiSupervisedLoader, "__iter__", slow_iter)
    trainer, _, opt, _ = make_trainer("supervised", epochs=1, epoch_length=3)
    TrainingHistory(tmp_path, optimizer=opt).attach(trainer)
    trainer.run()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["data_wait_s"] >= 3.0 - 1e-3
    assert 0.5 < summary["data_wait_share"] <= 1.0


def _saver_files(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def _periodic_saver(tmp_path, trainer, net, opt, alg) -> None:
    """The bundles' periodic checkpoint: everything to resume from, every epoch, the newest kept."""
    state = {"network": net, "optimizer": opt, "algorithm": alg, "trainer": trainer}
    AtomicCheckpointSaver(str(tmp_path), state, save_interval=1, n_saved=1).attach(trainer)


def test_previous_checkpoint_stays_until_the_next_is_complete(tmp_path, monkeypatch):
    # ignite's Checkpoint removes the file it replaces before saving; a kill during the save lost both
    trainer, net, opt, alg = make_trainer("supervised", epochs=3, epoch_length=1)
    _periodic_saver(tmp_path, trainer, net, opt, alg)
    seen_while_writing = []
    original = torch.save

    def watching_save(obj, f, *args, **kwargs):
        seen_while_writing.append(_saver_files(tmp_path))
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", watching_save)
    trainer.run()
    assert seen_while_writing == [
        [".checkpoint_epoch=1.pt.partial"],
        [".checkpoint_epoch=2.pt.partial", "checkpoint_epoch=1.pt"],
        [".checkpoint_epoch=3.pt.partial", "checkpoint_epoch=2.pt"],
    ]
    assert _saver_files(tmp_path) == ["checkpoint_epoch=3.pt"]


def test_files_a_killed_run_left_are_cleared_after_the_next_complete_save(tmp_path):
    trainer, net, opt, alg = make_trainer("supervised", epochs=2, epoch_length=1)
    # a run killed while writing epoch 2 and one killed before it pruned epoch 0: left behind
    for name in ("checkpoint_epoch=0.pt", "checkpoint_epoch=1.pt", "network_epoch=7.pt"):
        torch.save({"w": torch.zeros(1)}, tmp_path / name)
    (tmp_path / ".checkpoint_epoch=2.pt.partial").write_bytes(b"\x80")
    _periodic_saver(tmp_path, trainer, net, opt, alg)
    trainer.run()
    # the newest (n_saved=1) of the series stays; another series is not ours to prune
    assert _saver_files(tmp_path) == ["checkpoint_epoch=2.pt", "network_epoch=7.pt"]


def test_best_model_missing_after_a_kill_does_not_stop_the_resumed_run(tmp_path):
    # the key-metric saver's state (restored on resume) names model.pt; a kill while writing it used to leave
    # no model.pt, and ignite's removal of the old file then raised at the next improvement
    trainer, net, *_ = make_trainer("supervised", epochs=2, epoch_length=1)
    scores = iter([0.5, 0.7])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(e.state, "metrics", {"auc": next(scores)}))
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="auc", key_metric_filename="model.pt"
    )
    saver.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: (tmp_path / "model.pt").unlink())
    trainer.run()
    assert _saver_files(tmp_path) == ["model.pt"]
    assert saver.state_dict()["_saved"][0][0] == 0.7  # the improvement was recorded and written


def test_resume_from_latest_passes_over_a_damaged_newest_checkpoint(tmp_path, caplog):
    trainer, net, *_ = make_trainer("supervised", epochs=2, epoch_length=1)
    AtomicCheckpointSaver(str(tmp_path), {"network": net, "trainer": trainer}, save_interval=1, n_saved=2).attach(
        trainer
    )
    trainer.run()
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes((tmp_path / "checkpoint_epoch=2.pt").read_bytes()[:100])
    second, net2, *_ = make_trainer("supervised", epochs=2, epoch_length=1)
    loader = ResumeCheckpointLoader("latest", {"network": net2, "trainer": second}, ckpt_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        assert loader.resolve() == tmp_path / "checkpoint_epoch=1.pt"
    assert "checkpoint_epoch=2.pt: cannot be read" in caplog.text and "older checkpoint" in caplog.text
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=2.pt"  # by name alone
