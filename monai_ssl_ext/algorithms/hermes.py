"""Hermes: semi-supervised dual-threshold contrastive learning (Zhang et al., ECAI 2025, arXiv 2508.02265)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.algorithms.thresholds import DualThreshold
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.consistency import masked_cross_entropy, masked_dice_loss
from monai_ssl_ext.losses.inter_task import inter_task_consistency
from monai_ssl_ext.losses.pixel_contrast import PixelContrastLoss
from monai_ssl_ext.losses.supcon import SupConLoss
from monai_ssl_ext.losses.supervised import ClassBalance, mask_to_index

__all__ = ["Hermes"]

_VIEWS = ("labeled", "weak", "strong")


class Hermes(SemiSupervisedAlgorithm):
    """Dual-threshold pseudo labels, supervised and pixel contrast, and inter-task consistency.

    For a network with ``class`` and ``seg`` outputs and the projections of
    :class:`~monai_ssl_ext.networks.HermesNet`, one step computes on a labeled batch ``(x, y, m)``
    and the weak/strong views ``(u^w, u^s)`` of an unlabeled batch:

    ``L = a_c [CE(x, y) + l_u CE(u^s, y~) + l_con SupCon] + a_s [DiceCE(x, m) + l_u Dice(u^s, m~)
    + l_pix PixCon] + w(t) (1 - cos(z_cls, z_seg))``

    - ``y~`` and ``m~``: pseudo labels of the weak view, each used only where the
      :class:`~monai_ssl_ext.algorithms.thresholds.DualThreshold` filter accepts it (confidence above
      a class-adaptive threshold *and* entropy below a ramped bound; per pixel for masks).
    - SupCon: supervised contrastive loss (temperature 0.07) over the embeddings of the labeled
      images (true labels) and of both unlabeled views (accepted pseudo labels), switched on after
      a warm-up share of the run, when pseudo labels have become meaningful.
    - PixCon: pixel contrast over labeled pixels (true mask) and accepted pixels of the strong view.
    - ``z_cls``, ``z_seg``: lesion features of the two branches, on the strong view; ``w(t)`` a sigmoid
      ramp-up towards 1.

    Defaults follow the authors' code: weights ``a_c = 1.1``, ``a_s = 0.5``, ``l_u = 0.1``, ``l_con = 0.2``,
    ``l_pix = 0.8``; the image filter needs both tests, the pixel filter either (``ignore = (1 - confident)
    * uncertain``); ``w(t) = sigmoid_rampup(t, 4/3 T)``, their ``sigmoid_rampup(step // 100, 40)`` of a
    3000-step run as a share of the run (0.73 at its end), on the strong view only. Which parameters each
    term trains is the network's part (:class:`~monai_ssl_ext.networks.HermesNet` ``separate_task_gradients``:
    as the authors, each task's loss reaches only its own branch, so the consistency term moves the
    segmenter towards the classifier). Ours: the contrastive terms start after 10 % of the run (theirs after
    10 passes over the unlabeled set). Every unlabeled term has a switch so the ablations of the paper run
    from a bundle config.

    Args:
        num_classes: image classes.
        cls_weight: ``a_c``.
        seg_weight: ``a_s``.
        unlabeled_weight: ``l_u`` (pseudo-label cross-entropy and Dice).
        supcon_weight: ``l_con``.
        pixel_contrast_weight: ``l_pix``.
        consistency: ramp-up ``w(t)`` (default: sigmoid towards 1.0 over 4/3 of the run).
        consistency_views: the views whose lesion features the consistency term aligns (``"labeled"``,
            ``"weak"``, ``"strong"``; default the strong view, as the authors).
        contrast_warmup: share of the run before the contrastive terms start.
        supcon_temperature: SupCon temperature.
        pixel_temperature: pixel-contrast temperature.
        selector: image-level pseudo-label filter (default :class:`DualThreshold`).
        seg_selector: pixel-level filter (default :class:`DualThreshold` with ``combine="or"``).
        use_pseudo_labels, use_supcon, use_pixel_contrast, use_consistency: ablation switches.
        supervised_loss: labeled-batch loss (default ``TaskLoss(cls_weight, seg_weight)``).
        class_balance: class-imbalance options added to the default ``TaskLoss(cls_weight, seg_weight)``.
        distribution_alignment: applied to the weak-view image-class probabilities before ``selector``.
    """

    # the embedding heads get no gradient before the contrastive warm-up ends, nor when an ablation
    # switch turns their term off
    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        cls_weight: float = 1.1,
        seg_weight: float = 0.5,
        unlabeled_weight: float = 0.1,
        supcon_weight: float = 0.2,
        pixel_contrast_weight: float = 0.8,
        consistency: RampUp | None = None,
        consistency_views: Sequence[str] = ("strong",),
        contrast_warmup: float = 0.1,
        supcon_temperature: float = 0.07,
        pixel_temperature: float = 0.1,
        selector: DualThreshold | None = None,
        seg_selector: DualThreshold | None = None,
        use_pseudo_labels: bool = True,
        use_supcon: bool = True,
        use_pixel_contrast: bool = True,
        use_consistency: bool = True,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        if not 0.0 <= contrast_warmup <= 1.0:
            raise ValueError(f"contrast_warmup is a share of the run in [0, 1], got {contrast_warmup}.")
        loss = self.build_supervised_loss(
            supervised_loss, class_balance, class_weight=cls_weight, seg_weight=seg_weight
        )
        super().__init__(num_classes, loss, distribution_alignment=distribution_alignment)
        self.class_balance = class_balance  # already in ``loss``
        self.cls_weight = float(cls_weight)
        self.seg_weight = float(seg_weight)
        self.unlabeled_weight = float(unlabeled_weight)
        self.supcon_weight = float(supcon_weight)
        self.pixel_contrast_weight = float(pixel_contrast_weight)
        self.consistency = consistency if consistency is not None else RampUp(max_value=1.0, fraction=4 / 3)
        unknown = sorted(set(consistency_views) - set(_VIEWS))
        if unknown or not consistency_views:
            raise ValueError(f"consistency_views are some of {list(_VIEWS)}, got {list(consistency_views)}.")
        self.consistency_views = tuple(consistency_views)
        self.contrast_warmup = float(contrast_warmup)
        self.selector = selector if selector is not None else DualThreshold()
        self.seg_selector = seg_selector if seg_selector is not None else DualThreshold(combine="or")
        self.supcon = SupConLoss(temperature=supcon_temperature)
        self.pixel_contrast = PixelContrastLoss(temperature=pixel_temperature)
        self.use_pseudo_labels = use_pseudo_labels
        self.use_supcon = use_supcon
        self.use_pixel_contrast = use_pixel_contrast
        self.use_consistency = use_consistency

    def setup(self, network: nn.Module, total_steps: int, num_unlabeled: int | None = None) -> None:
        super().setup(network, total_steps, num_unlabeled)
        for selector in (self.selector, self.seg_selector):
            selector.set_total_steps(total_steps)

    def contrast_active(self, step: int) -> bool:
        """Whether the contrastive terms are on at ``step`` (after the warm-up share of the run)."""
        total = self.total_steps or 0
        return step >= self.contrast_warmup * total

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        if unlabeled is None:
            raise ValueError("Hermes needs an unlabeled batch.")
        out_l, out_w, out_s = self.forward_views(
            network, [labeled[DataKeys.IMAGE], unlabeled[DataKeys.IMAGE_WEAK], unlabeled[DataKeys.IMAGE_STRONG]]
        )
        missing = [k for k in (OutputKeys.CLASS, OutputKeys.SEG) if k not in out_l]
        if missing:
            raise ValueError(f"Hermes needs a network with class and segmentation outputs; {missing} missing.")
        sup, terms = self.supervised_loss(out_l, labeled)
        zero = sup.new_zeros(())
        logs: dict[str, float] = {}
        contrast_on = self.contrast_active(step)
        labels = torch.as_tensor(labeled[DataKeys.LABEL], device=sup.device).long().view(-1)
        true_mask = labeled.get(DataKeys.MASK)

        # image level: dual-threshold pseudo labels, cross-entropy on the strong view, SupCon
        self.selector.set_step(step)
        probs = torch.softmax(out_w[OutputKeys.CLASS].detach().float(), dim=1)
        probs = self.align_probabilities(OutputKeys.CLASS, probs)
        pseudo, accept = self.selector(probs, self.unlabeled_indices(unlabeled))
        unsup_cls = masked_cross_entropy(out_s[OutputKeys.CLASS], pseudo, accept) if self.use_pseudo_labels else zero
        supcon = zero
        if self.use_supcon and contrast_on:
            features = torch.cat(
                [out_l[OutputKeys.EMBEDDING], out_w[OutputKeys.EMBEDDING], out_s[OutputKeys.EMBEDDING]]
            )
            targets = torch.cat([labels, pseudo, pseudo])
            weights = torch.cat([torch.ones_like(labels, dtype=accept.dtype), accept, accept])
            supcon = self.supcon(features, targets, weights)
        logs["mask_rate"] = float(accept.mean())
        logs["entropy_threshold"] = float(self.selector.entropy_threshold())
        thresholds = self.selector.thresholds()
        if thresholds is not None:
            logs.update({f"threshold_{c}": float(t) for c, t in enumerate(thresholds)})

        # pixel level: the same filter per pixel, Dice on the strong view, pixel contrast
        self.seg_selector.set_step(step)
        seg_probs, valid = self.to_strong_frame(torch.softmax(out_w[OutputKeys.SEG].detach().float(), dim=1), unlabeled)
        pseudo_seg, accept_seg = self.seg_selector(seg_probs, None)
        if valid is not None:
            accept_seg = accept_seg * valid.to(accept_seg.dtype).reshape(accept_seg.shape)
        unsup_seg = masked_dice_loss(out_s[OutputKeys.SEG], pseudo_seg, accept_seg) if self.use_pseudo_labels else zero
        pixel = zero
        if self.use_pixel_contrast and contrast_on:
            rejected = torch.full_like(pseudo_seg, self.pixel_contrast.ignore_index)
            targets = [torch.where(accept_seg > 0, pseudo_seg, rejected)]
            embeddings = [out_s[OutputKeys.PIXEL_EMBEDDING]]
            if true_mask is not None:
                targets.insert(0, mask_to_index(true_mask).to(pseudo_seg.device))
                embeddings.insert(0, out_l[OutputKeys.PIXEL_EMBEDDING])
            pixel = self.pixel_contrast(torch.cat(embeddings), torch.cat(targets))
        logs["mask_rate_seg"] = float(accept_seg.mean())

        # inter-task consistency of the lesion features of the chosen views
        consistency = zero
        weight = self.consistency(step) if self.use_consistency else 0.0
        if self.use_consistency:
            views = [dict(zip(_VIEWS, (out_l, out_w, out_s), strict=True))[v] for v in self.consistency_views]
            z_cls = torch.cat([o[OutputKeys.CONSISTENCY_CLS] for o in views])
            z_seg = torch.cat([o[OutputKeys.CONSISTENCY_SEG] for o in views])
            consistency = inter_task_consistency(z_cls, z_seg)
        logs["consistency_weight"] = weight

        loss = (
            sup
            + self.cls_weight * (self.unlabeled_weight * unsup_cls + self.supcon_weight * supcon)
            + self.seg_weight * (self.unlabeled_weight * unsup_seg + self.pixel_contrast_weight * pixel)
            + weight * consistency
        )
        return StepOutput(
            loss=loss,
            terms={
                "loss_sup": sup.detach(),
                **terms,
                "loss_unsup_cls": unsup_cls.detach(),
                "loss_unsup_seg": unsup_seg.detach(),
                "loss_supcon": supcon.detach(),
                "loss_pixel_contrast": pixel.detach(),
                "loss_consistency": consistency.detach(),
            },
            logs=logs,
            labeled_outputs={k: v for k, v in out_l.items() if k in (OutputKeys.CLASS, OutputKeys.SEG)},
            pseudo_label=pseudo,
            pseudo_mask=accept,
        )

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        for name in ("use_pseudo_labels", "use_supcon", "use_pixel_contrast", "use_consistency"):
            if not getattr(self, name):
                parts.append(f"{name}=False")
        return ", ".join(parts)
