"""HSC: hierarchical semantic calibration of pseudo labels (dual contextual learning, Liu et al. 2026)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.memory_bank import FeatureMemoryBank
from monai_ssl_ext.algorithms.neighbourhood import NeighbourhoodCalibration, compactness_weight
from monai_ssl_ext.algorithms.prototypes import ClassPrototypes
from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.algorithms.thresholds import FixedThreshold, PseudoLabelSelector
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.calibration import prototype_alignment_loss, weighted_soft_cross_entropy
from monai_ssl_ext.losses.consistency import masked_cross_entropy
from monai_ssl_ext.losses.supervised import ClassBalance

__all__ = ["HSC", "pool_evidence"]

#: the smallest probability pooled: a class that the context gives 0 (no neighbour votes for it, no prototype yet)
#: is made improbable, not impossible
_FLOOR = 1e-6


def pool_evidence(probs: torch.Tensor, context: torch.Tensor, weight: float, smoothing: float = 0.0) -> torch.Tensor:
    """``q = p * c^w / sum_k p_k c_k^w`` (log-linear pooling): ``probs`` and ``context`` ``(B, K)``.

    The context's evidence multiplies the prediction: where it agrees, ``max q`` rises above ``max p``; where it
    disagrees, ``q`` falls or changes class. ``weight`` in ``[0, 1]`` is how much the context counts (``0``:
    ``q = p``). A linear mixture ``(1 - w) p + w c`` cannot do the first: its maximum never exceeds the larger of
    the two maxima, so a threshold of 0.95 on it accepts only images on which the model and its context are both
    near certain (on HAM10000 it accepted none).

    ``smoothing`` ``e`` mixes the context with the uniform distribution first, ``c' = (1 - e) c + e / K``, which
    bounds the log-odds the context can move between two classes by ``w log(1 + K (1 - e) / e)``. Without it
    only the floor of 1e-6 bounds them: a unanimous vote of one-hot neighbours (labeled bank entries) moves them by
    ``w log(1e6)``, 4.1 at ``w = 0.3``, which turns a prediction of 0.60 for one of seven classes (0.27 for the
    second) into 0.96 for the second, past FixMatch's 0.95; with ``e = 0.1`` the class still changes, at 0.56.
    """
    if weight == 0:
        return probs
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
    if smoothing > 0:
        context = (1.0 - smoothing) * context + smoothing / context.shape[1]
    log_q = torch.log(probs.clamp_min(_FLOOR)) + weight * torch.log(context.clamp_min(_FLOOR))
    return torch.softmax(log_q, dim=1)


def _detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in terms.items()}


class HSC(SemiSupervisedAlgorithm):
    """Pseudo labels calibrated by the sample's neighbourhood (local) and by class prototypes (global).

    The method is described only in outline (no code is public); the equations below are this
    implementation's, and every value the description leaves open is an argument. With ``p`` the
    weak-view prediction ``(B_u, K)`` (after the shared distribution alignment, if on), ``z`` the
    L2-normalised embeddings (the network's ``embedding`` output, else its ``features``), a memory bank of
    past embeddings with their distributions, class prototypes ``c_k`` and a ramp ``r(t)`` from 0 to 1:

    - **Semantic neighbourhood alignment** (local): ``q_nb`` the similarity-weighted vote of the ``k``
      nearest bank entries of ``z_w`` (:class:`NeighbourhoodCalibration`), and
      ``q_N = p * q_nb'^(alpha r)``, normalised (:func:`pool_evidence`; ``q_nb'`` the vote smoothed towards
      uniform by ``context_smoothing``).
    - **Cluster-prototype calibration** (global): ``a(z) = softmax_k(z . c_k / T_p)`` and the calibrated
      distribution ``q = q_N * a'(z_w)^(beta r)``, normalised (``a'`` smoothed likewise); the pseudo label is
      ``argmax q``, kept where the selector accepts ``q`` (FixMatch's ``max q >= tau`` by default). The
      prototypes are momentum means of the labeled embeddings (true labels) and of the accepted weak-view
      embeddings (pseudo labels) (:class:`ClassPrototypes`); across views, the strong view's class centroids
      of the batch are pulled onto them: ``L_P = mean_k (1 - cos(mu_k^s, c_k))`` (:func:`prototype_alignment_loss`).
    - **Neighbourhood-prototype consistency**: ``L_C = 1/B sum_b w_b H(q_N(b), a(z_s(b)))``: the
      strong view's prototype distribution follows the neighbourhood-calibrated one, weighted by the
      compactness of the neighbourhood ``w_b = max(kappa_b, 0)^gamma``, ``kappa_b`` the mean cosine
      similarity of the ``k`` neighbours (:func:`compactness_weight`).
    - **Labeled prototype classification**: ``L_S = 1/B_l sum_b H(y_b, a(z_l(b)))`` over the labeled images
      whose class has a prototype. Without it nothing but ``L_P`` and ``L_C`` trains the embedding, and the
      prototypes need not separate: on HAM10000 (``cpu`` profile, seed 0) they ended at cosine 0.80-0.99 to
      each other, ``max a`` stayed below 0.45, so ``max q`` could not reach 0.95 and no pseudo label was ever
      accepted (mask rate 0 for 1500 iterations). ``L_S`` is this implementation's addition (the outline
      names none); ``lambda_s = 0`` gives the method without it.

    ``L = L_sup + lambda_u 1/B sum_b m_b H(argmax q_b, f(x_b^s)) + lambda_s L_S + r (lambda_p L_P + lambda_c L_C)``.

    After the losses, the bank receives the weak-view embeddings with ``p`` and, with ``bank_labeled``,
    the labeled embeddings with their one-hot labels. Neighbourhood terms wait until the bank holds ``k``
    entries, prototype terms until a class has a prototype. Bank and prototypes are submodules (saved in
    checkpoints; consistent across ranks under ``torch.distributed``). Each component can be switched off
    for ablations: ``use_neighbourhood``, ``use_prototypes``, ``use_consistency`` (all off is FixMatch with
    the embeddings unused).

    Batches: as in :class:`~monai_ssl_ext.algorithms.SemiSupervisedAlgorithm` (classification only); the
    network returns a dict with ``class`` and ``embedding`` or ``features`` ``(B, embed_dim)``.

    Args:
        num_classes: number of image classes ``K``.
        embed_dim: size of the embedding the bank and prototypes hold (the network's ``embed_dim``, or its
            feature size when it has no projection head).
        bank_size: entries of the memory bank (4096).
        k: neighbours per sample (10).
        neighbour_temperature: temperature of the neighbours' similarity weights (0.1).
        alpha: exponent of the neighbours' vote in ``q_N`` (0.3).
        beta: exponent of the prototype distribution in ``q`` (0.2).
        context_smoothing: share ``e`` of the uniform distribution mixed into the neighbours' vote and the
            prototype distribution before pooling (0: only a floor of 1e-6, under which a unanimous vote of
            labeled neighbours can overrule a prediction of 0.6; see :func:`pool_evidence`).
        prototype_momentum: momentum of the prototypes (0.9).
        prototype_temperature: ``T_p`` of the prototype distribution (0.1).
        lambda_p: weight of the prototype alignment across views (1.0).
        lambda_c: weight of the neighbourhood-prototype consistency (1.0).
        lambda_s: weight of the labeled prototype classification ``L_S`` (1.0; 0 switches it off).
        compactness_power: ``gamma`` of the compactness weight (1.0).
        rampup_fraction: share of the run over which ``r`` rises from 0 to 1 (sigmoid; 0.1).
        calibration_start: share of the run before which ``r = 0`` (0: from the first step). Until then the
            pseudo labels are the uncalibrated ``p`` (FixMatch's) and ``L_P``, ``L_C`` weigh nothing, while the
            bank and the prototypes fill (``L_S`` trains them); a later start keeps the calibrations from making
            the early, mostly wrong predictions confident.
        bank_labeled: also store the labeled embeddings, with their labels, in the bank (True).
        use_neighbourhood, use_prototypes, use_consistency: the three components (all on). Without the
            neighbourhood ``q_N = p`` (the bank is still kept for the compactness weights of ``L_C``); without
            the prototype calibration ``q = q_N`` and no ``L_P`` (the prototypes are still kept for ``L_C``).
        threshold: FixMatch's confidence ``tau`` on ``q`` (0.95).
        lambda_u: weight of the pseudo-label loss (1.0).
        temperature: sharpening of the weak-view probabilities before calibration (1 = none).
        selector: a custom pseudo-label selector of ``q`` (overrides ``threshold``).
        supervised_loss, class_balance, distribution_alignment: as in :class:`FixMatch`.
    """

    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        bank_size: int = 4096,
        k: int = 10,
        neighbour_temperature: float = 0.1,
        alpha: float = 0.3,
        beta: float = 0.2,
        context_smoothing: float = 0.0,
        prototype_momentum: float = 0.9,
        prototype_temperature: float = 0.1,
        lambda_p: float = 1.0,
        lambda_c: float = 1.0,
        lambda_s: float = 1.0,
        compactness_power: float = 1.0,
        rampup_fraction: float = 0.1,
        calibration_start: float = 0.0,
        bank_labeled: bool = True,
        use_neighbourhood: bool = True,
        use_prototypes: bool = True,
        use_consistency: bool = True,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        temperature: float = 1.0,
        selector: PseudoLabelSelector | None = None,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes, supervised_loss, class_balance=class_balance, distribution_alignment=distribution_alignment
        )
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if not 0.0 <= context_smoothing < 1.0:
            raise ValueError(f"context_smoothing must be in [0, 1), got {context_smoothing}.")
        if prototype_temperature <= 0:
            raise ValueError(f"prototype_temperature must be > 0, got {prototype_temperature}.")
        self.embed_dim = int(embed_dim)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.context_smoothing = float(context_smoothing)
        self.prototype_temperature = float(prototype_temperature)
        self.lambda_p = float(lambda_p)
        self.lambda_c = float(lambda_c)
        self.lambda_s = float(lambda_s)
        self.compactness_power = float(compactness_power)
        self.bank_labeled = bool(bank_labeled)
        self.use_neighbourhood = bool(use_neighbourhood)
        self.use_prototypes = bool(use_prototypes)
        self.use_consistency = bool(use_consistency)
        self.lambda_u = float(lambda_u)
        self.temperature = float(temperature)
        self.bank = FeatureMemoryBank(bank_size, self.embed_dim, self.num_classes)
        self.neighbourhood = NeighbourhoodCalibration(k, neighbour_temperature)
        self.prototypes = ClassPrototypes(self.num_classes, self.embed_dim, prototype_momentum)
        self.selector: PseudoLabelSelector = selector if selector is not None else FixedThreshold(threshold)
        self.ramp = RampUp(max_value=1.0, fraction=rampup_fraction, shape="sigmoid", start_fraction=calibration_start)

    def embeddings(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's ``embedding`` output, else its ``features`` ``(B, embed_dim)``."""
        z = outputs.get(OutputKeys.EMBEDDING, outputs.get(OutputKeys.FEATURES))
        if z is None:
            raise KeyError(
                "HSC needs the network's embeddings: a dict output with 'embedding' or 'features' "
                "(Classifier(return_dict=True, embed_dim=...))."
            )
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise ValueError(f"HSC was built for embeddings (B, {self.embed_dim}), the network gave {tuple(z.shape)}.")
        return z

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        if unlabeled is None:
            raise ValueError("HSC needs an unlabeled batch.")
        out_l, out_w, out_s = self.forward_views(
            network, [labeled[DataKeys.IMAGE], unlabeled[DataKeys.IMAGE_WEAK], unlabeled[DataKeys.IMAGE_STRONG]]
        )
        sup, terms = self.supervised_loss(out_l, labeled)
        z_l, z_w, z_s = (self.embeddings(out) for out in (out_l, out_w, out_s))
        labels = torch.as_tensor(labeled[DataKeys.LABEL], device=z_l.device).long().view(-1)
        ramp = self.ramp(float(step))
        logs: dict[str, float] = {"calibration_ramp": ramp, "bank_filled": float(len(self.bank))}

        probs = torch.softmax(out_w[OutputKeys.CLASS].detach().float() / self.temperature, dim=1)
        probs = self.align_probabilities(OutputKeys.CLASS, probs)
        q_local, q_nb, kappa = probs, None, None
        if (self.use_neighbourhood or self.use_consistency) and self.neighbourhood.ready(self.bank):
            q_nb, kappa = self.neighbourhood(self.bank, z_w)
            alpha = self.alpha * ramp if self.use_neighbourhood else 0.0
            q_local = pool_evidence(probs, q_nb, alpha, self.context_smoothing)
            logs["compactness"] = float(kappa.mean())
            if self.use_neighbourhood:
                logs["neighbour_agreement"] = float((q_nb.argmax(1) == probs.argmax(1)).float().mean())
        # the consistency term reads the prototypes too, so they are kept when either component is on
        have_prototypes = (self.use_prototypes or self.use_consistency) and bool(self.prototypes.seen.any())
        calibrated = q_local
        if self.use_prototypes and have_prototypes:
            a_w = self.prototypes.assign(z_w.detach(), self.prototype_temperature)
            calibrated = pool_evidence(q_local, a_w, self.beta * ramp, self.context_smoothing)
        pseudo, mask = self.selector(calibrated, self.unlabeled_indices(unlabeled))
        logs["mask_rate"] = float(mask.mean())
        logs["calibration_changed"] = float((pseudo != probs.argmax(1)).float().mean())

        unsup = masked_cross_entropy(out_s[OutputKeys.CLASS], pseudo, mask)
        loss = sup + self.lambda_u * unsup
        extra: dict[str, torch.Tensor] = {}
        if self.use_prototypes and have_prototypes:
            # a class without a prototype has no target to pull its centroid onto
            seen = self.prototypes.seen[pseudo].to(mask.dtype)
            extra["loss_prototype"] = prototype_alignment_loss(z_s, pseudo, mask * seen, self.prototypes.prototypes)
            loss = loss + self.lambda_p * ramp * extra["loss_prototype"]
        if self.use_consistency and have_prototypes and kappa is not None:
            weights = compactness_weight(kappa, self.compactness_power)
            a_s = self.prototypes.assign(z_s, self.prototype_temperature)
            extra["loss_consistency"] = weighted_soft_cross_entropy(q_local, a_s, weights)
            loss = loss + self.lambda_c * ramp * extra["loss_consistency"]
        if have_prototypes and self.lambda_s > 0:
            # labeled images of a class without a prototype yet have no target: weight 0
            known = self.prototypes.seen[labels].float()
            a_l = self.prototypes.assign(z_l, self.prototype_temperature)
            targets = F.one_hot(labels, self.num_classes).float()
            extra["loss_prototype_labeled"] = weighted_soft_cross_entropy(targets, a_l, known)
            loss = loss + self.lambda_s * extra["loss_prototype_labeled"]
        self.update_context(z_l, labels, z_w, probs, pseudo, mask)
        return StepOutput(
            loss=loss,
            terms={"loss_sup": sup.detach(), "loss_unsup": unsup.detach(), **_detached(extra), **terms},
            logs=logs,
            labeled_outputs=out_l,
            pseudo_label=pseudo,
            pseudo_mask=mask,
        )

    @torch.no_grad()
    def update_context(
        self,
        z_l: torch.Tensor,
        labels: torch.Tensor,
        z_w: torch.Tensor,
        probs: torch.Tensor,
        pseudo: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        """Prototypes from the labeled and accepted weak-view embeddings; the bank from the weak (and labeled) ones."""
        if self.use_prototypes or self.use_consistency:
            self.prototypes.update(
                torch.cat([z_l, z_w]), torch.cat([labels, pseudo]), torch.cat([mask.new_ones(labels.shape[0]), mask])
            )
        if self.use_neighbourhood or self.use_consistency:
            features, dists = z_w, probs
            if self.bank_labeled:
                features = torch.cat([z_l, z_w])
                dists = torch.cat([F.one_hot(labels, self.num_classes).float(), probs])
            self.bank.enqueue(features, dists)

    def extra_repr(self) -> str:
        parts = [name for name in ("neighbourhood", "prototypes", "consistency") if getattr(self, f"use_{name}")]
        return f"{super().extra_repr()}, embed_dim={self.embed_dim}, components={'+'.join(parts) or 'none'}"
