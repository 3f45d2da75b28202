"""The interface every semi-supervised method implements, and what a training step returns.

Following Microsoft's USB, a method is one class with one ``train_step`` that turns a labeled batch
and a weak/strong unlabeled batch into a loss. The trainer
(:class:`monai_ssl_ext.engines.SemiSupervisedTrainer`) owns everything else: devices, mixed
precision, the backward pass, the optimizer, events, checkpoints and distributed training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.supervised import ClassBalance, TaskLoss
from monai_ssl_ext.networks.heads import as_output_dict
from monai_ssl_ext.transforms.randaugment import warp_to_strong

__all__ = ["SemiSupervisedAlgorithm", "StepOutput"]


@dataclass
class StepOutput:
    """What a training step returns to the trainer.

    Attributes:
        loss: the scalar to back-propagate.
        terms: named loss terms (unweighted), for logging.
        logs: other scalars to log (weights, mask rate, thresholds...).
        labeled_outputs: the network's outputs on the labeled batch (detached), for training metrics.
        pseudo_label: image-level pseudo labels of the unlabeled batch ``(B_u,)``, if the method makes them.
        pseudo_mask: their weights ``(B_u,)`` (> 0: used). With hidden labels (benchmark mode) the
            trainer reports the accuracy of the used pseudo labels from these two.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logs: dict[str, float] = field(default_factory=dict)
    labeled_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    pseudo_label: torch.Tensor | None = None
    pseudo_mask: torch.Tensor | None = None


class SemiSupervisedAlgorithm(nn.Module):
    """Base class of the semi-supervised methods.

    Batches (already on the device):
        - ``labeled``: ``image`` ``(B, C, H, W)``, ``label`` ``(B,)`` and optionally ``mask`` ``(B, 1, H, W)``.
        - ``unlabeled``: ``image_weak`` and ``image_strong`` ``(B_u, C, H, W)`` (or ``image_view1`` and
          ``image_view2`` for ``unlabeled_views = "contrastive"``), ``index`` ``(B_u,)``; ``None`` for methods
          with ``uses_unlabeled = False``.

    Networks return class logits ``(B, K)`` or a dict with ``class``, optional ``seg`` ``(B, K_s, H, W)``
    and ``features``; :meth:`forward_views` normalises both to dicts.

    Subclasses implement :meth:`train_step` and may override :meth:`setup` (build teachers, size
    buffers), :meth:`after_optimizer_step` (update teachers) and :meth:`frozen_parameters` (parts of the
    network a phase of the method does not train). State that must survive a resume
    lives in submodules or buffers, so ``state_dict()`` carries it into checkpoints.

    Class attributes:
        uses_unlabeled: the method reads the unlabeled batch (``False``: the loader does not load it).
        find_unused_parameters: some parameters of the network the method trains may get no gradient
            in a step (an output head the loss does not read, a term that starts after a warm-up...),
            so ``DistributedDataParallel`` must be built with ``find_unused_parameters=True`` (without
            it DDP waits for those gradients and fails). ``True`` is always safe, at the cost of a graph
            traversal per step; a method that reaches every parameter in every step sets ``False``.
            Multi-GPU bundle configs read it as ``"$@algorithm.find_unused_parameters"``.

    Args:
        num_classes: number of image classes.
        supervised_loss: loss on the labeled batch (default :class:`~monai_ssl_ext.losses.TaskLoss`).
        class_balance: class-imbalance options of the default supervised loss (class weights, logit
            adjustment; :class:`~monai_ssl_ext.losses.ClassBalance`). An active one and an explicit
            ``supervised_loss`` exclude each other.
        distribution_alignment: applied once to the detached weak-view class probabilities before
            pseudo labels are chosen (:meth:`align_probabilities`); a submodule, so its running mean is
            checkpointed. ``None`` (default): off, and the state dict has no entry for it.
    """

    uses_unlabeled: ClassVar[bool] = True
    find_unused_parameters: ClassVar[bool] = True
    #: what each unlabeled item must hold (``ModalityProfile.unlabeled_transforms(views=...)``, which the bundles
    #: call with this value): ``"weak_strong"`` (``image_weak``, ``image_strong``) or ``"contrastive"``
    #: (``image_view1``, ``image_view2``: two independently cropped views)
    unlabeled_views: str = "weak_strong"

    def __init__(
        self,
        num_classes: int,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.supervised_loss = self.build_supervised_loss(supervised_loss, class_balance)
        self.class_balance = class_balance
        if distribution_alignment is not None and distribution_alignment.num_classes != self.num_classes:
            raise ValueError(
                f"distribution_alignment has {distribution_alignment.num_classes} classes, "
                f"the algorithm {self.num_classes}."
            )
        # None stays a plain attribute: the state dict gains entries only when alignment is on
        self.distribution_alignment = distribution_alignment
        self.total_steps: int | None = None

    @staticmethod
    def build_supervised_loss(
        supervised_loss: nn.Module | None, class_balance: ClassBalance | None, **task_loss: Any
    ) -> nn.Module:
        """``supervised_loss``, or a :class:`~monai_ssl_ext.losses.TaskLoss` of ``task_loss`` plus the class balance.

        An active ``class_balance`` configures the default loss only: given with an explicit
        ``supervised_loss`` it raises ``ValueError`` rather than being silently ignored.
        """
        active = class_balance is not None and class_balance.active
        if supervised_loss is not None:
            if active:
                raise ValueError(
                    "class_balance and supervised_loss exclude each other: class_balance configures the "
                    "default TaskLoss; give the class weights / logit adjustment to your loss instead."
                )
            return supervised_loss
        options = class_balance.loss_options() if active else {}
        return TaskLoss(**task_loss, **options)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, network: nn.Module, total_steps: int, num_unlabeled: int | None = None) -> None:
        """Called once by the trainer before training (and before a checkpoint is loaded).

        Args:
            network: the student network (possibly wrapped in ``DistributedDataParallel``).
            total_steps: planned number of optimisation steps (for ramp-ups expressed as fractions).
            num_unlabeled: size of the unlabeled set (for per-sample state).
        """
        self.total_steps = int(total_steps)
        for module in self.modules():
            for value in vars(module).values():
                if isinstance(value, RampUp):
                    value.set_total_steps(total_steps)

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        """Compute the loss of one iteration; ``step`` counts from 0."""
        raise NotImplementedError

    def after_optimizer_step(self, network: nn.Module, step: int) -> None:
        """Called after ``optimizer.step()`` (for example to update an EMA teacher)."""

    def stratified_steps(self, total_steps: int) -> int:
        """How many first steps want labeled batches with every stratum (severity level) in them (default 0).

        The trainer passes it to a loader that knows the strata of its labeled items (``labeled_strata``
        of :class:`~monai_ssl_ext.data.SemiSupervisedLoader`); a loader without strata ignores it.
        """
        return 0

    def frozen_parameters(self, network: nn.Module, step: int) -> list[nn.Parameter]:
        """Parameters that step ``step`` must leave unchanged (default: none).

        The trainer drops their gradients after the backward pass, so the optimiser skips them: neither
        momentum nor weight decay moves a frozen parameter (a zero gradient would let both act).
        """
        return []

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def forward_views(network: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Run ``network`` once on the concatenated ``images`` and split the outputs back per view.

        One forward pass keeps batch-normalisation statistics computed over all views together, as
        in the reference FixMatch implementation, and lets ``DistributedDataParallel`` see one call.
        """
        sizes = [int(x.shape[0]) for x in images]
        outputs = as_output_dict(network(torch.cat(images, dim=0)))
        per_view: list[dict[str, torch.Tensor]] = [{} for _ in images]
        for key, value in outputs.items():
            # plain tensors (still in the graph): MONAI's MetaTensor would carry the batch's image metadata
            # into every reduction of the losses and selectors
            value = value.as_subclass(torch.Tensor)
            for view, part in zip(per_view, torch.split(value, sizes, dim=0), strict=True):
                view[key] = part
        return per_view

    @staticmethod
    def to_strong_frame(pixels: torch.Tensor, unlabeled: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weak-view pixel maps ``(B, C, H, W)`` (probabilities) moved into the strong view's geometry.

        A strong view with geometric operations (``strong_view="randaugment"`` in the modality profile)
        carries ``strong_affine`` ``(B, 2, 3)``: pixel pseudo labels made on the weak view are warped with
        it (:func:`monai_ssl_ext.transforms.warp_to_strong`, nearest neighbour) so that each target sits
        on the strong-view pixel it describes. Returns the maps and a ``(B, H, W)`` mask of the pixels
        that have a source in the weak view (``None``, maps unchanged, when the views share their geometry).
        """
        affine = unlabeled.get(DataKeys.STRONG_AFFINE)
        if affine is None:
            return pixels, None
        warped, valid = warp_to_strong(pixels, torch.as_tensor(affine).to(pixels.device))
        return warped, valid

    def align_probabilities(self, task: str, probs: torch.Tensor) -> torch.Tensor:
        """Weak-view ``probs`` after distribution alignment, for image classes (``task == "class"``) only.

        Returns ``probs`` unchanged for other tasks or when no alignment is set. Call it once per
        step, before ``max``/``argmax`` and the pseudo-label selector (in training it updates the
        running mean of the predictions).
        """
        if self.distribution_alignment is None or task != OutputKeys.CLASS:
            return probs
        # a plain tensor: the network's outputs may be MONAI MetaTensors, whose batch metadata the
        # reductions would try to carry along
        return self.distribution_alignment(probs.as_subclass(torch.Tensor))

    @staticmethod
    def unlabeled_indices(unlabeled: dict[str, Any]) -> torch.Tensor | None:
        index = unlabeled.get(DataKeys.INDEX)
        return None if index is None else torch.as_tensor(index).long()

    @staticmethod
    def tasks(outputs: dict[str, torch.Tensor]) -> list[str]:
        """The prediction tasks present in a network output (``class``, ``seg``)."""
        return [k for k in (OutputKeys.CLASS, OutputKeys.SEG) if k in outputs]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
