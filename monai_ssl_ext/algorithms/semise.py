"""SEMISE: semi-supervised severity representation learning (Tran et al., arXiv 2501.03848).

The encoder first learns a severity representation from a self-supervised term on the unlabeled
images and a supervised ordering term on the labeled ones; a classification head and a segmentation
decoder are then fine-tuned on the labeled subset. Here the three stages are one algorithm whose
phase follows the share of the run already done, so that one bundle run trains the whole method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.data.severity import SeverityOrder, get_severity_order
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.healthy_anomaly_margin import HealthyAnomalyMarginLoss
from monai_ssl_ext.losses.ntxent import NTXentLoss
from monai_ssl_ext.losses.preference_ranking import PreferenceRankingLoss, healthy_reference
from monai_ssl_ext.losses.severity_representation import severity_representation_loss
from monai_ssl_ext.losses.supervised import ClassBalance
from monai_ssl_ext.utils.distributed import all_reduce_sum, is_dist

__all__ = ["SEMISE", "severity_levels"]

# values of the ``phase`` buffer and log
HEALTHY_ANOMALY, PREFERENCE, FINETUNE = 0, 1, 2


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    # a MetaTensor batch mixes labeled and unlabeled images: indexing it would try to slice their
    # inconsistent metadata; the plain view keeps the autograd graph
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _share_of(share: float, total_steps: int) -> int:
    # half up, not Python's half-to-even: a 4-step smoke run still gets one step of phase 0
    return math.floor(share * total_steps + 0.5)


def _encoder(network: nn.Module) -> nn.Module:
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    encoder = getattr(module, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"finetune_encoder=False needs a network with an 'encoder'; {type(module).__name__} has none.")
    return encoder


def severity_levels(
    severity: str | Mapping[str, int] | Sequence[Sequence[str]] | None, class_names: Sequence[str]
) -> list[int]:
    """The severity level of each class index of a manifest, for :class:`SEMISE`'s ``class_levels``.

    Args:
        severity: a registered order name (``"busi"``, ``"ham10000"``: see
            :func:`~monai_ssl_ext.data.get_severity_order`), a :class:`~monai_ssl_ext.data.SeverityOrder`
            or its constructor argument (``{name: level}`` or ``[[level-0 names], [level-1 names], ...]``),
            or ``None``: the manifest's class order is the severity order (class ``k`` at level ``k``).
        class_names: the manifest's ``classes`` (``C`` names).

    Returns:
        ``C`` integer levels; a class the order does not know raises ``ValueError`` naming it.
    """
    names = list(class_names)
    if severity is None:
        return list(range(len(names)))
    if isinstance(severity, str):
        order = get_severity_order(severity)
    elif isinstance(severity, SeverityOrder):
        order = severity
    else:
        order = SeverityOrder(severity)
    return [int(level) for level in order.levels_for(names).tolist()]


class SEMISE(SemiSupervisedAlgorithm):
    """Severity representation learning in two phases, then supervised fine-tuning, over one run.

    Needs a network whose dict output has ``class`` ``(B, K)``, optionally ``seg`` ``(B, K_s, H, W)``,
    and ``embedding`` ``(B, D)`` (e.g. :class:`~monai_ssl_ext.networks.JointClassSegNet` with
    ``embed_dim``). Each labeled image of class ``k`` has the severity level ``l_k = class_levels[k]``.
    With ``z`` the embeddings, ``u^w``, ``u^s`` the two views of the unlabeled batch (two independent random
    crops, ``image_view1`` and ``image_view2``, by default; see ``independent_views``) and ``x`` the
    labeled batch, the loss at step ``t`` of a run of ``T`` steps follows the paper's combined objective
    ``L_combine = alpha L_NT-Xent + (1 - alpha) L_PrO``, whose supervised part is the margin loss in
    the paper's phase 1 and the preference loss in its phase 2 (phases 0 and 1 here; boundaries
    ``phase1 T`` and ``phase2 T`` rounded half up):

    - phase 0, healthy/anomaly discrimination (``t < phase1 T``):
      ``alpha NT-Xent(z(u^w), z(u^s)) + (1 - alpha) L_margin(z(x) + [r]) + w_s L_sup``;
      ``L_margin`` is :class:`~monai_ssl_ext.losses.HealthyAnomalyMarginLoss`: images of the
      reference level are pulled together and pushed at least ``margin`` (cosine distance) from the
      others; the running reference ``r`` joins the batch as one more (constant) healthy embedding,
      so a batch without healthy images still pushes its anomalies away from healthy;
    - phase 1, preference optimisation (``phase1 T <= t < phase2 T``):
      ``alpha NT-Xent(z(u^w), z(u^s)) + (1 - alpha) L_PrO(z(x), l, r) + w_s L_sup``; ``L_PrO`` is
      :class:`~monai_ssl_ext.losses.PreferenceRankingLoss`: for each labeled pair with
      ``l_i > l_j``, ``softplus(beta (cos(z_i, r) - cos(z_j, r)))``;
    - phase 2, fine-tuning (``t >= phase2 T``): ``L_sup + w_f (alpha NT-Xent + (1 - alpha) L_PrO)``,
      ``L_sup`` the supervised classification + segmentation loss on the labeled batch.

    ``w_s = representation_supervised_weight`` is 0 by default, as in the paper, where the heads are
    trained only after the representation; a small value trains them alongside it. ``w_f =
    finetune_representation_weight`` (default 0) keeps the representation term during fine-tuning.
    NT-Xent sees the unlabeled images only: a labeled batch carries one augmented view per image.

    The healthy reference ``r`` ``(D,)`` is a running mean (momentum ``reference_momentum``) of the
    mean L2-normalised embedding of the batch's labeled images at the reference level, updated
    without gradient (averaged over ranks in distributed training). The reference level is 0
    (healthy) when a class has level 0, otherwise the least severe level of ``class_levels`` (for
    example benign when a data set has no normal class). Until an image of that level has been seen,
    the least severe level present in the batch stands in for it, and its batch mean for ``r``.

    The phase boundaries (in steps), the last phase, ``r`` and the number of reference images seen
    are buffers: a checkpoint restores them, so a resumed run continues in the phase and with the
    reference it stopped at, even if ``total_steps`` changed.

    Logged: ``phase`` (0, 1, 2 as above), ``reference_norm`` (0 before any reference),
    ``reference_level`` (the level treated as healthy in the batch, while the representation is
    trained), the effective weights ``representation_weight`` and ``supervised_weight``, and the
    unweighted terms ``loss_nt_xent``, ``loss_margin``, ``loss_ranking`` (0 outside the phase that
    uses them), ``loss_representation`` and ``loss_sup``.

    Args:
        num_classes: image classes ``K``.
        class_levels: ``K`` severity levels, index ``k`` for class ``k`` (see :func:`severity_levels`).
        alpha: weight of NT-Xent in the representation loss, in ``[0, 1]``.
        temperature: NT-Xent temperature.
        beta: inverse temperature of the preference loss.
        margin: healthy/anomaly cosine-distance margin, in ``(0, 2]``.
        phase1: share of the run at which phase 0 ends.
        phase2: share of the run at which phase 1 ends and fine-tuning starts (``phase1 <= phase2 <= 1``).
        reference_momentum: momentum of the running reference, in ``[0, 1)``.
        finetune_representation_weight: ``w_f``.
        representation_supervised_weight: ``w_s``.
        representation_steps: the representation phases last this many steps (phase 0 taking ``phase1 /
            phase2`` of them) and fine-tuning the rest of the run, instead of shares of the run. A bundle then
            runs ``representation_steps`` more steps than a baseline, so that fine-tuning gets the baseline's
            supervised steps, and restarts the learning-rate schedule for them
            (:func:`~monai_ssl_ext.engines.phase_schedule`). ``None``: ``phase1`` and ``phase2`` of the run.
        independent_views: NT-Xent between two independently cropped views of each unlabeled image
            (``unlabeled_views = "contrastive"``: ``image_view1``, ``image_view2``), as SimCLR; ``False``: between
            the pixel-aligned weak and strong views (this bundle's earlier pairing).
        stratify_labeled: ask for labeled batches with every severity level in them while the representation is
            learnt (:meth:`stratified_steps`; the loader needs the levels as ``labeled_strata``), so that every
            batch has pairs of different severity for the ordering terms, however imbalanced the labels.
        finetune_encoder: fine-tune the encoder with the heads (default). ``False``: the encoder is frozen during
            fine-tuning (its weights through :meth:`frozen_parameters`, its normalisation statistics by running it
            in eval mode), so only the heads learn on the representation; needs a network with an ``encoder``.
        supervised_loss: labeled-batch loss (default :class:`~monai_ssl_ext.losses.TaskLoss`).
        class_balance: class-imbalance options of the default supervised loss.
        distribution_alignment: must be ``None``: SEMISE makes no pseudo labels (``ValueError`` otherwise).
    """

    # every phase keeps all outputs (class, seg, embedding) in the loss, weighted 0 when off
    find_unused_parameters = False

    def __init__(
        self,
        num_classes: int,
        class_levels: Sequence[int] | torch.Tensor,
        alpha: float = 0.5,
        temperature: float = 0.5,
        beta: float = 1.0,
        margin: float = 0.5,
        phase1: float = 0.25,
        phase2: float = 0.5,
        reference_momentum: float = 0.9,
        finetune_representation_weight: float = 0.0,
        representation_supervised_weight: float = 0.0,
        representation_steps: int | None = None,
        independent_views: bool = True,
        stratify_labeled: bool = True,
        finetune_encoder: bool = True,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        if distribution_alignment is not None:
            raise ValueError(
                "SEMISE makes no pseudo labels: distribution alignment does not apply to it "
                "(leave distribution_alignment / distribution_alignment_target unset)."
            )
        super().__init__(num_classes, supervised_loss, class_balance=class_balance)
        levels = torch.as_tensor(class_levels).reshape(-1)
        if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
            raise ValueError(f"class_levels must be integer levels, got dtype {levels.dtype}.")
        if levels.numel() != self.num_classes:
            raise ValueError(f"{levels.numel()} class_levels for {self.num_classes} classes.")
        if bool((levels < 0).any()):
            raise ValueError(f"class_levels must be >= 0, got {levels.tolist()}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        if not 0.0 <= phase1 <= phase2 <= 1.0:
            raise ValueError(f"need 0 <= phase1 <= phase2 <= 1 (shares of the run), got {phase1}, {phase2}.")
        if not 0.0 <= reference_momentum < 1.0:
            raise ValueError(f"reference_momentum must lie in [0, 1), got {reference_momentum}.")
        if finetune_representation_weight < 0 or representation_supervised_weight < 0:
            raise ValueError("finetune_representation_weight and representation_supervised_weight must be >= 0.")
        self.alpha = float(alpha)
        self.phase1 = float(phase1)
        self.phase2 = float(phase2)
        self.reference_momentum = float(reference_momentum)
        self.finetune_representation_weight = float(finetune_representation_weight)
        self.representation_supervised_weight = float(representation_supervised_weight)
        self.finetune_encoder = bool(finetune_encoder)
        self.stratify_labeled = bool(stratify_labeled)
        self.independent_views = bool(independent_views)
        if representation_steps is not None and int(representation_steps) < 1:
            raise ValueError(f"representation_steps must be >= 1 (or None), got {representation_steps}.")
        self.representation_steps = None if representation_steps is None else int(representation_steps)
        self.unlabeled_views = "contrastive" if self.independent_views else "weak_strong"
        self.reference_level = int(levels.min())
        self.nt_xent = NTXentLoss(temperature)
        self.margin_loss = HealthyAnomalyMarginLoss(margin)
        self.ranking_loss = PreferenceRankingLoss(beta)
        self.register_buffer("class_levels", levels.long().clone())
        # (2,) steps at which phases 0 and 1 end; -1 until setup() or a checkpoint sets them
        self.register_buffer("phase_ends", torch.full((2,), -1, dtype=torch.long))
        self.register_buffer("phase", torch.zeros((), dtype=torch.long))
        # the reference's size is the network's embedding size, known at the first step (or from a checkpoint)
        self.register_buffer("reference", torch.zeros(0))
        self.register_buffer("reference_count", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ schedule
    def setup(self, network: nn.Module, total_steps: int, num_unlabeled: int | None = None) -> None:
        super().setup(network, total_steps, num_unlabeled)
        self.phase_ends.copy_(torch.tensor(self.phase_ends_for(total_steps), dtype=torch.long))

    def phase_ends_for(self, total_steps: int) -> list[int]:
        """The steps at which phases 0 and 1 end in a run of ``total_steps``."""
        if self.representation_steps is None:
            return [_share_of(share, total_steps) for share in (self.phase1, self.phase2)]
        steps = self.representation_steps
        if steps >= total_steps:
            raise ValueError(
                f"representation_steps={steps} leaves no fine-tuning step in a run of {total_steps} steps."
            )
        first = _share_of(self.phase1 / self.phase2, steps) if self.phase2 > 0 else 0
        return [first, steps]

    def stratified_steps(self, total_steps: int) -> int:
        """The representation phases (0 and 1), when ``stratify_labeled``: their batches should mix levels."""
        return self.phase_ends_for(total_steps)[1] if self.stratify_labeled else 0

    def phase_at(self, step: int) -> int:
        """The phase of ``step``: 0 healthy/anomaly, 1 preference optimisation, 2 fine-tuning."""
        if int(self.phase_ends[0]) < 0:
            raise RuntimeError("SEMISE.setup() must run before training (the trainer calls it).")
        if step < int(self.phase_ends[0]):
            return HEALTHY_ANOMALY
        if step < int(self.phase_ends[1]):
            return PREFERENCE
        return FINETUNE

    def frozen_parameters(self, network: nn.Module, step: int) -> list[nn.Parameter]:
        """The encoder's parameters during fine-tuning when ``finetune_encoder`` is off; otherwise none."""
        if self.finetune_encoder or self.phase_at(step) != FINETUNE:
            return []
        return list(_encoder(network).parameters())

    # ------------------------------------------------------------------ healthy reference
    @property
    def has_reference(self) -> bool:
        """Whether an image of the reference level has been seen (the running reference is set)."""
        return int(self.reference_count) > 0 and self.reference.numel() > 0

    @torch.no_grad()
    def update_reference(self, embeddings: torch.Tensor, levels: torch.Tensor) -> None:
        """Fold the mean normalised embedding of the reference-level rows of ``(B, D)`` ``embeddings`` into ``r``."""
        z = F.normalize(embeddings.detach().float(), dim=1)
        healthy = (levels == self.reference_level).to(z.dtype)
        total = torch.cat([(z * healthy[:, None]).sum(dim=0), healthy.sum()[None]])
        if is_dist():
            # every rank must join the reduction, with or without healthy images of its own
            total = all_reduce_sum(total)
        count = int(total[-1].round())
        if count == 0:
            return
        batch_reference = total[:-1] / count
        if not self.has_reference or self.reference.shape != batch_reference.shape:
            self.reference = batch_reference.to(self.reference.device)
        else:
            self.reference.mul_(self.reference_momentum).add_(batch_reference, alpha=1.0 - self.reference_momentum)
        self.reference_count += count

    def _anchor(self, embeddings: torch.Tensor, levels: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """The level treated as healthy in this batch and the reference ``(D,)`` to rank against."""
        if self.has_reference:
            return self.reference_level, self.reference.to(embeddings.dtype)
        # nothing of the reference level seen yet: the batch's least severe images stand in for it
        level = int(levels.min())
        return level, healthy_reference(embeddings.detach(), levels, level)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the reference is sized lazily: take the checkpoint's size so that the copy can succeed
        saved = state_dict.get(prefix + "reference")
        if saved is not None and saved.shape != self.reference.shape:
            self.reference = torch.zeros(saved.shape, dtype=self.reference.dtype, device=self.reference.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ step
    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        phase = self.phase_at(step)
        self.phase.fill_(phase)
        finetune = phase == FINETUNE
        if finetune and not self.finetune_encoder:
            _encoder(network).eval()  # frozen: its batch-norm statistics stay those of the representation
        rep_weight = self.finetune_representation_weight if finetune else 1.0
        sup_weight = 1.0 if finetune else self.representation_supervised_weight
        use_representation = rep_weight > 0

        images = [labeled[DataKeys.IMAGE]]
        if use_representation:
            if unlabeled is None:
                raise ValueError("SEMISE needs an unlabeled batch while it learns the representation.")
            first, second = (
                (DataKeys.IMAGE_VIEW1, DataKeys.IMAGE_VIEW2)
                if self.independent_views
                else (DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG)
            )
            if first not in unlabeled or second not in unlabeled:
                raise ValueError(
                    f"SEMISE (independent_views={self.independent_views}) reads '{first}' and '{second}' of the "
                    f"unlabeled batch, which has {sorted(unlabeled)}: build the unlabeled items with "
                    f"profile.unlabeled_transforms(views='{self.unlabeled_views}')."
                )
            images += [unlabeled[first], unlabeled[second]]
        outputs = self.forward_views(network, images)
        out_l = outputs[0]
        if OutputKeys.CLASS not in out_l:
            raise ValueError(f"SEMISE needs a network with a class output; got {sorted(out_l)}.")
        if use_representation and OutputKeys.EMBEDDING not in out_l:
            raise ValueError(
                "SEMISE needs a network with an 'embedding' output (e.g. JointClassSegNet with embed_dim); "
                f"got {sorted(out_l)}."
            )

        sup, sup_terms = self.supervised_loss(out_l, labeled)
        zero = sup.new_zeros(())
        nt_xent = margin = ranking = representation = zero
        logs: dict[str, float] = {}
        if use_representation:
            labels = _plain(torch.as_tensor(labeled[DataKeys.LABEL], device=sup.device)).long().view(-1)
            levels = self.class_levels.to(labels.device)[labels]
            z_l, z_w, z_s = (_plain(out[OutputKeys.EMBEDDING]).float() for out in outputs)
            self.update_reference(z_l, levels)
            nt_xent = self.nt_xent(z_w, z_s)
            anchor_level, reference = self._anchor(z_l, levels)
            if phase == HEALTHY_ANOMALY:
                embeddings, healthy = z_l, levels == anchor_level
                if self.has_reference:
                    embeddings = torch.cat([z_l, self.reference.to(z_l)[None]])
                    healthy = torch.cat([healthy, healthy.new_ones(1)])
                supervised_term = margin = self.margin_loss(embeddings, healthy)
            else:
                supervised_term = ranking = self.ranking_loss(z_l, levels, reference)
            representation = severity_representation_loss(nt_xent, supervised_term, self.alpha)
            logs["reference_level"] = float(anchor_level)

        loss = rep_weight * representation + sup_weight * sup
        if not use_representation and OutputKeys.EMBEDDING in out_l:
            # a graph-connected zero: DistributedDataParallel expects every parameter to get a gradient
            loss = loss + 0.0 * out_l[OutputKeys.EMBEDDING].sum()
        logs.update(
            {
                "phase": float(phase),
                "reference_norm": float(self.reference.norm()) if self.has_reference else 0.0,
                "representation_weight": rep_weight,
                "supervised_weight": sup_weight,
            }
        )
        return StepOutput(
            loss=loss,
            terms={
                "loss_sup": sup.detach(),
                **{name: term.detach() for name, term in sup_terms.items()},
                "loss_nt_xent": nt_xent.detach(),
                "loss_margin": margin.detach(),
                "loss_ranking": ranking.detach(),
                "loss_representation": representation.detach(),
            },
            logs=logs,
            labeled_outputs={k: v for k, v in out_l.items() if k in (OutputKeys.CLASS, OutputKeys.SEG)},
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, class_levels={self.class_levels.tolist()}, alpha={self.alpha}, "
            f"phase1={self.phase1}, phase2={self.phase2}"
            + ("" if self.finetune_encoder else ", finetune_encoder=False")
        )
