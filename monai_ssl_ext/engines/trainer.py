"""The semi-supervised trainer: MONAI's ``Trainer`` running an algorithm's step over two batches."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any, Protocol, runtime_checkable

import torch
from ignite.engine import Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.transforms import Decollated
from monai.utils import CommonKeys
from torch.optim.optimizer import Optimizer

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.engines.optimisation import OptimizerSet
from monai_ssl_ext.engines.pseudo_label_accuracy import (
    HIDDEN_LABEL,
    PSEUDO_LABEL,
    PSEUDO_MASK,
    UNLABELED_OUTPUT_KEYS,
    PseudoLabelAccuracy,
)
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.utils.distributed import get_rank
from monai_ssl_ext.utils.seeding import derive_seed

__all__ = ["LR_KEY", "SemiSupervisedStream", "SemiSupervisedTrainer", "move_to_device"]

LR_KEY = "lr"  # the output scalar holding the learning rate of the step (first parameter group)


@runtime_checkable
class SemiSupervisedStream(Protocol):
    """The training loader :class:`SemiSupervisedTrainer` reads and steers.

    Iterating it yields ``{"labeled": batch, "unlabeled": batch or None}`` for consecutive training
    steps (usually endlessly). :class:`monai_ssl_ext.data.SemiSupervisedLoader` is the implementation;
    any object with these members satisfies the protocol (``isinstance`` checks their presence):

    - ``unlabeled_dataset``: the unlabeled items (its length sizes per-sample algorithm state such as
      FlexMatch's), or ``None`` when there are none.
    - ``use_unlabeled``: set by the trainer to ``False`` for algorithms that ignore unlabeled data (and
      when there is none), so that the stream does not load it; ``"unlabeled"`` is then ``None``.
    - ``start_step``: set by the trainer, before each iterator is created, to the iteration the run
      starts from (non-zero on resume); the next iterator yields that step's batches first.
    """

    unlabeled_dataset: Sized | None
    use_unlabeled: bool
    start_step: int

    def __iter__(self) -> Iterator[dict[str, Any]]: ...


def _check_stream(loader: Any) -> SemiSupervisedStream:
    if isinstance(loader, SemiSupervisedStream):
        return loader
    members = ("__iter__", "unlabeled_dataset", "use_unlabeled", "start_step")
    missing = ", ".join(name for name in members if not hasattr(loader, name))
    raise TypeError(
        "SemiSupervisedTrainer needs a training loader satisfying monai_ssl_ext.engines.SemiSupervisedStream "
        "(an iterable of {'labeled', 'unlabeled'} batches with unlabeled_dataset, use_unlabeled and start_step), "
        f"such as monai_ssl_ext.data.SemiSupervisedLoader; got {type(loader).__name__}, which lacks {missing}."
    )


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors in (nested) dicts/lists moved to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def learning_rates(optimizer: Optimizer | OptimizerSet) -> dict[str, float]:
    """``{"lr": rate of the first parameter group}``, plus ``lr_<name>`` per member of a several-optimiser set."""
    rates = {LR_KEY: float(optimizer.param_groups[0]["lr"])}
    if isinstance(optimizer, OptimizerSet) and len(optimizer) > 1:
        rates.update({f"{LR_KEY}_{name}": lr for name, lr in optimizer.learning_rates().items()})
    return rates


def _unlabeled_batch_size(unlabeled: Mapping[str, Any] | None) -> int:
    """Images in an unlabeled batch, whichever views it holds (weak/strong, or two contrastive views)."""
    if unlabeled is None:
        return 0
    for key in (DataKeys.IMAGE_WEAK, DataKeys.IMAGE_VIEW1):
        if key in unlabeled:
            return int(unlabeled[key].shape[0])
    return 0


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


class SemiSupervisedTrainer(Trainer):
    """A MONAI trainer whose iteration hands a labeled and an unlabeled batch to an algorithm.

    ``train_data_loader`` is a :class:`SemiSupervisedStream` (see
    :class:`monai_ssl_ext.data.SemiSupervisedLoader`): each item is ``{"labeled": batch, "unlabeled":
    batch}``; the trainer sets its ``use_unlabeled`` and ``start_step`` (and ``stratified_steps``, when the
    stream has it, from the algorithm). Per iteration the trainer moves both to the
    device, calls ``algorithm.train_step`` (under autocast when ``amp``), back-propagates, drops the
    gradients of ``algorithm.frozen_parameters`` (so the optimiser leaves them unchanged), steps the
    optimizer, calls ``algorithm.after_optimizer_step`` (EMA teachers) and fires MONAI's
    ``IterationEvents`` (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
    ``MODEL_COMPLETED``), so ``StatsHandler``, ``TensorBoardStatsHandler``, ``CheckpointSaver``,
    ``CheckpointLoader``, ``ValidationHandler``, ``LrScheduleHandler`` and ``EarlyStopHandler``
    work unchanged.

    ``engine.state.output`` is laid out as ``SupervisedTrainer``'s: ``image``, ``label`` and ``pred``
    of the labeled batch and the scalar ``loss``; the named loss terms and logging values of
    :class:`~monai_ssl_ext.algorithms.StepOutput` are added as scalars, and ``lr``, the learning
    rate of the optimizer's first parameter group used by this step. Until the output is decollated
    (``MODEL_COMPLETED``) it also holds the per-unlabeled-sample ``pseudo_label`` and ``pseudo_mask``
    of the step and, when the unlabeled batch carries ``hidden_label`` (benchmark mode), those true
    labels, popped from the batch so that the algorithm never sees them; a
    :class:`~monai_ssl_ext.engines.PseudoLabelAccuracy` handler, which the trainer attaches itself
    (``pseudo_label_accuracy``), turns them into the scalars ``pseudo_label_acc`` (accuracy of the
    pseudo labels used) and ``pseudo_label_acc_all`` (of all pseudo labels) at ``LOSS_COMPLETED``.
    When ``decollate`` is on the output is then decollated per labeled sample, scalars replicated
    (so ``from_engine(["loss"], first=True)`` works) and the per-unlabeled-sample entries dropped.

    Training length is counted in iterations: ``epoch_length`` iterations make an epoch (the
    interval of validation and checkpoints), independent of the labeled set's size.

    Determinism and resume: with ``seed`` set, torch's generator is re-seeded at every iteration
    from ``(seed, iteration, rank)``, and the loader's batches and augmentations are functions of
    ``(seed, iteration)``; a run resumed from a checkpoint (network, optimizer, algorithm,
    trainer state) therefore continues exactly as the uninterrupted run.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: a :class:`SemiSupervisedStream` of ``{"labeled", "unlabeled"}`` dicts.
        network: the student network (optionally ``DistributedDataParallel``-wrapped).
        optimizer: optimizer of the network's parameters, or an
            :class:`~monai_ssl_ext.engines.OptimizerSet` (one optimiser per branch of the network: one
            backward pass, then every member steps; the learning rate of each is logged as ``lr_<name>``).
        algorithm: the semi-supervised method.
        epoch_length: iterations per epoch (required when the loader is endless).
        seed: run seed for per-iteration re-seeding (``None`` leaves torch's generator alone).
        amp: mixed precision on CUDA (ignored, with a warning, on CPU).
        grad_clip_norm: clip the gradient norm to this value (``None``: no clipping).
        non_blocking: asynchronous host-to-device copies.
        postprocessing, key_train_metric, additional_metrics, metric_cmp_fn, train_handlers,
        event_names, event_to_attr, amp_kwargs: as in MONAI's ``SupervisedTrainer``.
        decollate: decollate ``engine.state.output`` per labeled sample after each iteration.
        optim_set_to_none: ``optimizer.zero_grad(set_to_none=...)``.
        pseudo_label_accuracy: attach a :class:`~monai_ssl_ext.engines.PseudoLabelAccuracy` handler
            (it only reports when the unlabeled batches carry hidden labels).

    Raises:
        TypeError: ``train_data_loader`` does not satisfy :class:`SemiSupervisedStream`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: SemiSupervisedStream,
        network: torch.nn.Module,
        optimizer: Optimizer | OptimizerSet,
        algorithm: SemiSupervisedAlgorithm,
        epoch_length: int | None = None,
        seed: int | None = 0,
        amp: bool = False,
        grad_clip_norm: float | None = None,
        non_blocking: bool = False,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        amp_kwargs: dict | None = None,
        pseudo_label_accuracy: bool = True,
    ) -> None:
        device = torch.device(device)
        if amp and device.type != "cuda":
            warnings.warn("amp=True needs a CUDA device; training in full precision.", stacklevel=2)
            amp = False
        if epoch_length is None and not hasattr(train_data_loader, "__len__"):
            raise ValueError("epoch_length is required when the training loader is endless.")
        stream = _check_stream(train_data_loader)
        self._decollate_output = decollate
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=stream,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=False,  # the batch holds two differently sized halves: decollate the output only
            amp_kwargs=amp_kwargs,
        )
        if pseudo_label_accuracy:
            PseudoLabelAccuracy().attach(self)
        if decollate:
            self._register_output_decollate()
        self.network = network
        self.optimizer = optimizer
        self.algorithm = algorithm
        self.seed = seed
        self.grad_clip_norm = grad_clip_norm
        self.optim_set_to_none = optim_set_to_none
        self.state.samples_seen = 0

        unlabeled = stream.unlabeled_dataset
        stream.use_unlabeled = bool(algorithm.uses_unlabeled and unlabeled is not None)
        if algorithm.uses_unlabeled and unlabeled is None:
            raise ValueError(f"{type(algorithm).__name__} needs unlabeled data, but the loader has none.")
        total_steps = max_epochs * (epoch_length if epoch_length is not None else len(stream))  # type: ignore[arg-type]
        algorithm.setup(
            network, total_steps=total_steps, num_unlabeled=len(unlabeled) if unlabeled is not None else None
        )
        if hasattr(stream, "stratified_steps"):  # optional: a stream without strata has no such steps
            stream.stratified_steps = int(algorithm.stratified_steps(total_steps))
        algorithm.to(device)
        # EPOCH_STARTED fires after every STARTED handler (checkpoint loaders included) and before ignite
        # creates the data iterator, so the loader starts at the restored iteration
        self.add_event_handler(Events.EPOCH_STARTED, self._align_loader_with_iteration)

    def _register_output_decollate(self) -> None:
        decollate = Decollated(keys=None, detach=True)

        @self.on(IterationEvents.MODEL_COMPLETED)
        def _decollate_output(engine: SemiSupervisedTrainer) -> None:
            if isinstance(engine.state.output, dict):
                # the unlabeled batch's entries have another batch size: not part of the per-sample output
                batched = {k: v for k, v in engine.state.output.items() if k not in UNLABELED_OUTPUT_KEYS}
                engine.state.output = decollate(batched)

    def _align_loader_with_iteration(self, engine: SemiSupervisedTrainer) -> None:
        self.data_loader.start_step = int(engine.state.iteration)

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not isinstance(batchdata, dict) or DataKeys.LABELED not in batchdata:
            raise ValueError(
                "SemiSupervisedTrainer expects batches {'labeled': ..., 'unlabeled': ...}; "
                "use monai_ssl_ext.data.SemiSupervisedLoader as the training loader."
            )
        step = engine.state.iteration - 1
        if engine.seed is not None:
            torch.manual_seed(derive_seed(engine.seed, step, get_rank()))
        device, nb = engine.state.device, engine.non_blocking
        labeled = move_to_device(batchdata[DataKeys.LABELED], device, nb)
        unlabeled = batchdata.get(DataKeys.UNLABELED)
        hidden = None
        if unlabeled is not None:
            unlabeled = dict(unlabeled)
            hidden = unlabeled.pop(DataKeys.HIDDEN_LABEL, None)  # never shown to the algorithm
            unlabeled = move_to_device(unlabeled, device, nb)

        engine.network.train()
        engine.algorithm.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                result = engine.algorithm.train_step(engine.network, labeled, unlabeled, step)
        else:
            result = engine.algorithm.train_step(engine.network, labeled, unlabeled, step)
        if not isinstance(result, StepOutput):
            raise TypeError(f"{type(engine.algorithm).__name__}.train_step must return a StepOutput.")
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output = self._make_output(labeled, result, hidden, learning_rates(engine.optimizer))
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        loss = result.loss
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"loss is {float(loss.detach())} at iteration {engine.state.iteration}: "
                + ", ".join(f"{k}={_scalar(v):.4g}" for k, v in result.terms.items())
            )
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            self._drop_frozen_gradients(engine, step)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.grad_clip_norm is not None:
                engine.scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            self._drop_frozen_gradients(engine, step)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
            engine.optimizer.step()
        engine.algorithm.after_optimizer_step(engine.network, step)
        n_labeled = int(labeled[DataKeys.IMAGE].shape[0])
        n_unlabeled = _unlabeled_batch_size(unlabeled)
        engine.state.samples_seen += n_labeled + n_unlabeled
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    @staticmethod
    def _drop_frozen_gradients(engine: SemiSupervisedTrainer, step: int) -> None:
        # None, not zero: the optimiser then skips the parameter (no momentum, no weight decay)
        for parameter in engine.algorithm.frozen_parameters(engine.network, step):
            parameter.grad = None

    @staticmethod
    def _make_output(
        labeled: dict, result: StepOutput, hidden: Any, lr: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        outputs = result.labeled_outputs
        pred = outputs.get(OutputKeys.CLASS, outputs.get(OutputKeys.SEG))
        out: dict[str, Any] = {
            CommonKeys.IMAGE: labeled[DataKeys.IMAGE],
            CommonKeys.LABEL: labeled.get(DataKeys.LABEL),
            CommonKeys.PRED: pred.detach() if pred is not None else None,
            CommonKeys.LOSS: result.loss.detach(),
        }
        for name, value in {**result.terms, **result.logs}.items():
            out[name] = _scalar(value)
        if lr is not None:
            out.update(lr)
        if result.pseudo_label is not None:
            out[PSEUDO_LABEL] = result.pseudo_label.detach()
            out[PSEUDO_MASK] = result.pseudo_mask.detach() if result.pseudo_mask is not None else None
        if hidden is not None:
            out[HIDDEN_LABEL] = hidden
        return out
