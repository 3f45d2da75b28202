"""DSRPGC: dynamic sample reweighting and pseudo-label guided contrast on Mean Teacher (Mathematics 2024)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.algorithms.base import StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.mean_teacher import MeanTeacher
from monai_ssl_ext.algorithms.memory_bank import FeatureMemoryBank
from monai_ssl_ext.algorithms.reweighting import MetaReweighting, entropy_weights
from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.consistency import softmax_mse
from monai_ssl_ext.losses.pseudo_label_contrast import pseudo_label_contrast
from monai_ssl_ext.losses.supervised import ClassBalance
from monai_ssl_ext.networks.heads import as_output_dict

__all__ = ["DSRPGC"]


class DSRPGC(MeanTeacher):
    """Mean Teacher whose unlabeled terms are weighted per sample, plus a contrast guided by pseudo labels.

    With the EMA teacher's weak-view probabilities ``q_b`` ``(B_u, K)`` (after the shared distribution
    alignment, if on), its pseudo labels ``y^_b = argmax q_b`` and its embeddings ``k_b``, and the student's
    strong-view outputs and embeddings ``z_b``::

        w_b     = 1 - H(q_b) / ln K, refined by a meta step               (DSR: entropy_weights, MetaReweighting)
        L_cons  = 1/B sum_b w_b mean_c (softmax(f(x_b^s))_c - q_b(c))^2     (enhanced consistency)
        L_PGC   = pseudo_label_contrast(z, y^, [k; queue], [y^; queue labels], w, T)
        L       = L_sup + w_c(t) L_cons + lambda_p L_PGC

    - **DSR**: the weight of an unlabeled sample is its teacher's confidence as one minus the normalised
      entropy, then, every ``meta_interval`` steps, refined by a one-step look-ahead of the student on the
      weighted consistency, evaluated with the supervised loss on the labeled batch (the meta batch):
      weights move towards the samples whose loss helps the labeled images (:class:`MetaReweighting`).
    - **Enhanced consistency**: the teacher sees the weak view and the student the strong one (no Gaussian
      input noise), the per-sample consistency weighted by ``w``; the EMA teacher and the ramp of ``w_c`` are
      :class:`MeanTeacher`'s.
    - **PGC**: the EMA teacher is the momentum key encoder (MoCo-v2's, shared with the consistency instead of a
      second copy: our choice); a queue (:class:`FeatureMemoryBank`) holds earlier keys with their pseudo
      labels; a query's positives are the keys with its pseudo label; the loss is weighted by ``w``.

    The network returns a dict with ``class`` and ``embedding`` (``MedFuseNet`` or ``Classifier`` with
    ``embed_dim``); with ``use_pgc=False`` any network works. Switches: ``use_dsr`` (``False``: all weights 1),
    ``use_meta`` (``False``: entropy weights only), ``use_pgc``; MedFuseNet's fusion is switched in the network
    (``MedFuseNet(fuse=False)``). The queue is a submodule (checkpoints; the same on every rank).

    Args:
        num_classes: number of image classes.
        embed_dim: size of the embedding the queue holds.
        ema_decay, consistency: the teacher's decay and the ramp of ``w_c`` (as :class:`MeanTeacher`).
        lambda_p: weight of ``L_PGC`` (0.1).
        pgc_temperature: ``T`` of the contrast (0.1).
        queue_size: keys in the queue (4096).
        meta_interval: refine the weights every ``meta_interval`` steps (1).
        meta_step_size: largest change of a weight per refinement (0.5).
        lookahead_lr: learning rate of the look-ahead step (0.01).
        use_dsr, use_meta, use_pgc: the components (all on).
        supervised_loss, class_balance, distribution_alignment: as in :class:`MeanTeacher`.
    """

    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        ema_decay: float = 0.99,
        consistency: RampUp | None = None,
        lambda_p: float = 0.1,
        pgc_temperature: float = 0.1,
        queue_size: int = 4096,
        meta_interval: int = 1,
        meta_step_size: float = 0.5,
        lookahead_lr: float = 0.01,
        use_dsr: bool = True,
        use_meta: bool = True,
        use_pgc: bool = True,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            ema_decay=ema_decay,
            consistency=consistency,
            supervised_loss=supervised_loss,
            class_balance=class_balance,
            distribution_alignment=distribution_alignment,
        )
        self.embed_dim = int(embed_dim)
        self.lambda_p = float(lambda_p)
        self.pgc_temperature = float(pgc_temperature)
        self.use_dsr = bool(use_dsr)
        self.use_meta = bool(use_meta) and self.use_dsr
        self.use_pgc = bool(use_pgc)
        self.meta = MetaReweighting(lookahead_lr, meta_step_size, meta_interval)
        self.queue = FeatureMemoryBank(queue_size, self.embed_dim, self.num_classes)

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        if self.teacher is None:
            raise RuntimeError("DSRPGC.setup() must run before training (the trainer calls it).")
        if unlabeled is None:
            raise ValueError("DSRPGC needs an unlabeled batch.")
        out_l, out_s = self.forward_views(network, [labeled[DataKeys.IMAGE], unlabeled[DataKeys.IMAGE_STRONG]])
        with torch.no_grad():
            out_t = as_output_dict(self.teacher(unlabeled[DataKeys.IMAGE_WEAK]))
        sup, terms = self.supervised_loss(out_l, labeled)
        teacher_logits = out_t[OutputKeys.CLASS].detach()
        probs = self.align_probabilities(OutputKeys.CLASS, torch.softmax(teacher_logits.float(), dim=1))
        pseudo = probs.argmax(dim=1)
        logs: dict[str, float] = {}

        weights = entropy_weights(probs) if self.use_dsr else probs.new_ones(probs.shape[0])
        if self.use_dsr:
            logs["entropy_weight_mean"] = float(weights.mean())
        if self.use_meta and self.meta.due(step):
            weights, meta_grad = self.refine_weights(network, weights, labeled, unlabeled, probs)
            logs["meta_grad_abs_mean"] = float(meta_grad.abs().mean())
        logs["weight_mean"] = float(weights.mean())

        # the teacher target is q (aligned, if alignment is on): softmax_mse takes logits, so pass log q
        consistency = softmax_mse(out_s[OutputKeys.CLASS], probs.clamp_min(1e-12).log(), weights)
        weight_c = self.consistency(step)
        loss = sup + weight_c * consistency
        extra: dict[str, torch.Tensor] = {}
        if self.use_pgc:
            queries, keys = self.embeddings(out_s), self.embeddings(out_t).detach()
            key_bank, key_labels = keys, pseudo
            if len(self.queue) > 0:
                stored = len(self.queue)
                key_bank = torch.cat([keys.float(), self.queue.features[:stored].to(keys.device)])
                key_labels = torch.cat([pseudo, self.queue.probs[:stored].argmax(dim=1).to(pseudo.device)])
            extra["loss_pgc"] = pseudo_label_contrast(
                queries, pseudo, key_bank, key_labels, weights, self.pgc_temperature
            )
            loss = loss + self.lambda_p * extra["loss_pgc"]
            self.queue.enqueue(keys, F.one_hot(pseudo, self.num_classes).float())
        logs.update({"consistency_weight": weight_c, "mask_rate": float(weights.mean())})
        return StepOutput(
            loss=loss,
            terms={
                "loss_sup": sup.detach(),
                "loss_consistency": consistency.detach(),
                **{name: value.detach() for name, value in extra.items()},
                **terms,
            },
            logs=logs,
            labeled_outputs=out_l,
            pseudo_label=pseudo,
            pseudo_mask=weights.detach(),
        )

    def refine_weights(
        self,
        network: nn.Module,
        weights: torch.Tensor,
        labeled: dict[str, Any],
        unlabeled: dict[str, Any],
        probs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DSR's meta step: the weighted consistency looked ahead one step, judged by the labeled batch's loss."""
        target = probs.clamp_min(1e-12).log()

        def unlabeled_loss(forward, w: torch.Tensor) -> torch.Tensor:
            student = as_output_dict(forward(unlabeled[DataKeys.IMAGE_STRONG]))
            return softmax_mse(student[OutputKeys.CLASS], target, w)

        def meta_loss(forward) -> torch.Tensor:
            return self.supervised_loss(as_output_dict(forward(labeled[DataKeys.IMAGE])), labeled)[0]

        return self.meta.refine(network, weights, unlabeled_loss, meta_loss)

    def embeddings(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's ``embedding`` output ``(B, embed_dim)``."""
        z = outputs.get(OutputKeys.EMBEDDING)
        if z is None:
            raise KeyError(
                "DSRPGC's pseudo-label guided contrast needs the network's projected embeddings: a dict output "
                "with 'embedding' (MedFuseNet or Classifier with embed_dim); or set use_pgc=False."
            )
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise ValueError(
                f"DSRPGC was built for embeddings (B, {self.embed_dim}), the network gave {tuple(z.shape)}."
            )
        return z

    def extra_repr(self) -> str:
        parts = [name for name in ("dsr", "meta", "pgc") if getattr(self, f"use_{name}")]
        return f"{super().extra_repr()}, embed_dim={self.embed_dim}, components={'+'.join(parts) or 'none'}"
