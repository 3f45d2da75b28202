"""Accuracy of the pseudo labels against the hidden true labels of the unlabeled batch (benchmark mode)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from monai_ssl_ext.keys import DataKeys

__all__ = [
    "HIDDEN_LABEL",
    "PSEUDO_LABEL",
    "PSEUDO_MASK",
    "UNLABELED_OUTPUT_KEYS",
    "PseudoLabelAccuracy",
    "pseudo_label_accuracy",
]

# entries of the trainer's ``engine.state.output`` that hold one value per *unlabeled* sample: handlers
# read them until the output is decollated per labeled sample, which drops them
PSEUDO_LABEL = "pseudo_label"
PSEUDO_MASK = "pseudo_mask"
HIDDEN_LABEL = DataKeys.HIDDEN_LABEL
UNLABELED_OUTPUT_KEYS = (PSEUDO_LABEL, PSEUDO_MASK, HIDDEN_LABEL)


def pseudo_label_accuracy(pseudo_label: torch.Tensor, pseudo_mask: torch.Tensor | None, hidden_label: Any) -> dict:
    """``{"pseudo_label_acc_all": ..., "pseudo_label_acc": ...}`` of image-level pseudo labels.

    Args:
        pseudo_label: ``(B_u,)`` pseudo labels of the unlabeled batch.
        pseudo_mask: ``(B_u,)`` their weights (``> 0``: used by the loss); ``None``: all used.
        hidden_label: ``(B_u,)`` true labels; a negative one (an image nobody labelled) is left out of both.

    Returns:
        ``pseudo_label_acc_all``: accuracy of all pseudo labels; ``pseudo_label_acc``: of the used ones,
        ``nan`` when none was used ("no evidence", not "all wrong"), or when no image of the batch has a
        known label.
    """
    truth = torch.as_tensor(hidden_label, device=pseudo_label.device).long().view(-1)
    known = truth >= 0
    correct = (pseudo_label.view(-1) == truth).float()
    used = (pseudo_mask.view(-1) > 0) if pseudo_mask is not None else torch.ones_like(known)
    used = used & known
    return {
        "pseudo_label_acc_all": float(correct[known].mean()) if known.any() else float("nan"),
        "pseudo_label_acc": float(correct[used].mean()) if used.any() else float("nan"),
    }


class PseudoLabelAccuracy:
    """Adds ``pseudo_label_acc`` and ``pseudo_label_acc_all`` to a semi-supervised trainer's step output.

    At ``IterationEvents.LOSS_COMPLETED`` the trainer's ``engine.state.output`` is still one dict of
    batched values; when it holds ``pseudo_label``, ``pseudo_mask`` and ``hidden_label`` (the true
    labels of the unlabeled batch, which only benchmark mode keeps, and which the algorithm never sees)
    this handler writes the two accuracies (:func:`pseudo_label_accuracy`) into it as scalars. The
    trainer then decollates the output per labeled sample, replicating them, so ``ProgressLogger``,
    ``TrainingHistory`` and ``TensorBoardStatsHandler(output_transform=output_scalars)`` see them like
    the loss terms. Without hidden labels or pseudo labels it does nothing.

    :class:`~monai_ssl_ext.engines.SemiSupervisedTrainer` attaches one itself (its
    ``pseudo_label_accuracy`` argument), so bundle configs need not list it.
    """

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, IterationEvents.LOSS_COMPLETED):
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict):
            return
        pseudo, hidden = output.get(PSEUDO_LABEL), output.get(HIDDEN_LABEL)
        if pseudo is None or hidden is None:
            return
        output.update(pseudo_label_accuracy(pseudo, output.get(PSEUDO_MASK), hidden))
