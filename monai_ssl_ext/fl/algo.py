"""``monai.fl``'s client algorithm for bundles trained by :class:`~monai_ssl_ext.engines.SemiSupervisedTrainer`.

``monai.fl.client.MonaiAlgo`` runs a bundle's training at a site between FedAvg rounds: it loads the global
weights into the trainer's network, trains ``local_epochs`` more epochs, returns the weights (or their
difference to the global ones) and evaluates a global model on the site's validation split. It only accepts a
``SupervisedTrainer``, and ours is a sibling of it (one labeled and one unlabeled batch per iteration, an
algorithm object), so :class:`SemiSupervisedMonaiAlgo` replaces its ``initialize`` and keeps the rest of it
(weight exchange, differences, statistics, evaluation, abort and finalise) as MONAI wrote it.

What is federated, and what stays at the site:

- the network's weights and buffers (``state_dict`` of the trained network) are averaged by the server;
- an EMA teacher (Mean Teacher, CLCP-MT, DSRPGC) is not sent. With ``teacher="global"`` (the default) it starts
  every round from the global weights, so the pseudo labels come from the federation's model rather than from
  a copy that remembers only this site's past; with ``teacher="local"`` it keeps averaging the site's students
  across rounds (smoother targets, but they lag the global model by the EMA's horizon);
- the evaluated EMA of the weights (``ema_eval``) restarts from the global weights whenever a global model is
  evaluated, for the same reason;
- state that summarises the site's own data stays local and is neither sent nor reset: FlexMatch's and
  CLCP-MT's per-class learning progress and thresholds, HSC's memory bank and prototypes, DSRPGC's queue.
  A memory bank holds the site's image embeddings: sending it would send data out of the hospital, and
  averaging per-class progress across sites with different class mixes would give no site its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedEvaluator
from monai.fl.client import MonaiAlgo
from monai.fl.utils.constants import ExtraItems, FlPhase
from monai.fl.utils.exchange_object import ExchangeObject
from monai.networks.utils import copy_model_state

from monai_ssl_ext.algorithms.ema import EMATeacher
from monai_ssl_ext.bundle.literal import inert
from monai_ssl_ext.bundle.trained import write_trained_config
from monai_ssl_ext.engines import SemiSupervisedTrainer
from monai_ssl_ext.fl.fedprox import FedProxTerm

__all__ = ["TEACHER_POLICIES", "SemiSupervisedMonaiAlgo"]

logger = logging.getLogger(__name__)

TEACHER_POLICIES = ("global", "local")


class SemiSupervisedMonaiAlgo(MonaiAlgo):
    """A FLARE site's training and evaluation of a bundle whose trainer is a ``SemiSupervisedTrainer``.

    One round is ``local_epochs`` epochs of the bundle's trainer, that is ``local_epochs * val_interval``
    iterations; the trainer, its optimiser, learning-rate schedule and algorithm persist across rounds, so the
    schedules run over the federation's whole length (the bundle's ``num_iterations``) as in one training run.
    The site's validation split (the bundle's ``validate#evaluator``) evaluates global models: no second copy
    of the data sets is built for evaluation.

    Args:
        bundle_root: the bundle folder.
        config_files: its training config files, relative to ``bundle_root`` (``configs/train.json`` and a
            profile, ``configs/profiles/cpu.json``).
        settings: bundle settings of this site (manifest, data root, label budget, lengths...); strings are
            data and are made inert before they reach the config.
        local_epochs: epochs (of ``val_interval`` iterations) per round.
        teacher: ``"global"`` or ``"local"``: what an EMA teacher starts each round from (see the module).
        fedprox_mu: FedProx's proximal weight (0: FedAvg's plain local training); see
            :class:`~monai_ssl_ext.fl.fedprox.FedProxTerm`.
        send_weight_diff: send the difference to the global weights rather than the weights.
    """

    def __init__(
        self,
        bundle_root: str | Path,
        config_files: Sequence[str] = ("configs/train.json",),
        settings: Mapping[str, Any] | None = None,
        local_epochs: int = 1,
        teacher: str = "global",
        fedprox_mu: float = 0.0,
        send_weight_diff: bool = True,
    ) -> None:
        if teacher not in TEACHER_POLICIES:
            raise ValueError(f"teacher must be one of {TEACHER_POLICIES}, got {teacher!r}")
        super().__init__(
            bundle_root=str(bundle_root),
            local_epochs=local_epochs,
            send_weight_diff=send_weight_diff,
            config_train_filename=list(config_files),
            train_kwargs=inert(dict(settings or {})),
            config_evaluate_filename=None,
        )
        self.teacher_policy = teacher
        self.fedprox = FedProxTerm(fedprox_mu) if fedprox_mu else None

    def initialize(self, extra: dict | None = None) -> None:
        """Build the site's training workflow (datasets, network, trainer, validation) from the bundle.

        The bundle's logging file is not applied (as in ``MonaiAlgo``: a provisioned INI file is evaluated), and
        the ``run`` section is not executed, so no checkpoint is loaded or saved periodically: the weights come
        from the server. The validation's best-model saver stays: the site keeps, in ``ckpt_dir``, the best model
        its validation split has seen, global or local.
        """
        extra = extra or {}
        self.client_name = extra.get(ExtraItems.CLIENT_NAME, "noname")
        self.app_root = extra.get(ExtraItems.APP_ROOT, "")
        self.bundle_root = str(Path(self.app_root, self.bundle_root))
        files = [str(Path(self.bundle_root, f)) for f in self.config_train_filename]
        self.train_workflow = ConfigWorkflow(
            config_file=files, meta_file=None, logging_file=False, workflow_type="train", **self.train_kwargs
        )
        self.train_workflow.initialize()
        self.trainer = self.train_workflow.trainer
        if not isinstance(self.trainer, SemiSupervisedTrainer):
            raise TypeError(f"{self.bundle_root}: train#trainer is {type(self.trainer).__name__}, not a "
                            "SemiSupervisedTrainer; use monai.fl.client.MonaiAlgo for a supervised bundle")  # fmt: skip
        self.evaluator = self.train_workflow.evaluator
        if not isinstance(self.evaluator, SupervisedEvaluator):
            raise TypeError(f"{self.bundle_root}: validate#evaluator is {type(self.evaluator).__name__}")
        # the site's ckpt_dir gets the trained configuration, as a training run's does, so that its best model and
        # a global model exported beside it (monai-ssl fl_model) are evaluated and exported like any trained model
        parser = self.train_workflow.parser
        write_trained_config(parser.get_parsed_content("ckpt_dir"), parser.get_parsed_content("trained_config"))
        if self.fedprox is not None:
            self.fedprox.attach(self.trainer)
        self.pre_filters = self.post_weight_filters = self.post_evaluate_filters = None
        self.post_statistics_filters = None
        logger.info(f"{self.client_name}: initialised {type(self.trainer.algorithm).__name__} from {self.bundle_root}")

    def teachers(self) -> list[EMATeacher]:
        """The EMA teachers of the trainer's algorithm."""
        return [m for m in self.trainer.algorithm.modules() if isinstance(m, EMATeacher)]

    def start_round(self, global_weights: Mapping[str, Any]) -> None:
        """What a round sets up besides the network: the teachers per the policy, FedProx's anchor."""
        if self.teacher_policy == "global":
            for teacher in self.teachers():
                copy_model_state(src=dict(global_weights), dst=teacher.network)
        if self.fedprox is not None:
            self.fedprox.set_anchor(self.trainer.network, global_weights)

    def train(self, data: ExchangeObject, extra: dict | None = None) -> None:
        """A round of local training from the global weights in ``data``."""
        if isinstance(data, ExchangeObject) and data.weights:
            self.start_round(data.weights)
        super().train(data, extra)

    def evaluate(self, data: ExchangeObject, extra: dict | None = None) -> ExchangeObject:
        """The site's validation metrics of the global weights in ``data`` (the bundle's key metric among them)."""
        result = super().evaluate(data, extra)
        self.phase = FlPhase.IDLE
        return result
