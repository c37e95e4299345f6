"""Supervised training plans (Lightning) and the best-weights callback used by ``GenoHoptionModel.train``."""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .._constants import CTRL_X_KEY, PERT_GENES_KEY
from ..module._batch import adversarial_loss
from ._batch import batch_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "ClassificationTrainingPlan",
    "MaskedExpressionTrainingPlan",
    "RegressionTrainingPlan",
    "RestoreBestWeights",
]

OPTIMIZERS = ("AdamW", "Adam")
LR_SCHEDULES = ("constant", "cosine")


class _SupervisedTrainingPlan(LightningModule):
    """Optimiser set-up and loss logging shared by the task plans.

    Parameters
    ----------
    module
        A task module (:class:`~genohoption.module.AnnotationModule`, ...).
    lr
        Learning rate.
    weight_decay
        Weight decay (decoupled for ``"AdamW"``).
    optimizer
        ``"AdamW"`` (default) or ``"Adam"``.
    lr_schedule
        ``"constant"`` (default) or ``"cosine"``: cosine decay to 0 over the planned steps
        (``max_epochs`` × minibatches; Loshchilov & Hutter 2017), after the warm-up.
    warmup
        Fraction of the planned steps over which the learning rate rises linearly from 0 (default 0:
        none; Goyal et al. 2017).

    Raises
    ------
    ValueError
        For an unknown optimizer or schedule, a non-positive learning rate or a warm-up outside [0, 1).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: Literal["AdamW", "Adam"] = "AdamW",
        lr_schedule: Literal["constant", "cosine"] = "constant",
        warmup: float = 0.0,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is unknown; choose one of {OPTIMIZERS}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r} is unknown; choose one of {LR_SCHEDULES}.")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}.")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}.")
        self.module = module
        self.lr, self.weight_decay, self.optimizer_name = float(lr), float(weight_decay), optimizer
        self.lr_schedule, self.warmup = lr_schedule, float(warmup)

    def forward(self, *args, **kwargs):
        """Pass through to the module."""
        return self.module(*args, **kwargs)

    def configure_optimizers(self):
        """AdamW (or Adam) over the trainable parameters, with the learning-rate schedule."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if self.optimizer_name == "AdamW" else torch.optim.Adam
        optimizer = cls(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant" and self.warmup == 0.0:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = round(self.warmup * total)
        cosine = self.lr_schedule == "cosine"

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if not cosine:
                return 1.0
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _log(self, name: str, value, batch_size: int, prog_bar: bool = False) -> None:
        self.log(name, value, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=batch_size, sync_dist=True)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Loss of a minibatch, with the plan's metrics logged under ``{stage}_...``."""
        raise NotImplementedError

    def _adversarial(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], stage: str):
        """Weighted adversarial batch loss of a module with a discriminator, logged as ``{stage}_batch_loss``.

        Returns it in training (to add to the task's loss) and 0 otherwise (the validation loss that early
        stopping reads is the task's alone); 0 for a module without a discriminator.
        """
        index = batch_inputs(batch).get("batch_index")
        term = adversarial_loss(self.module, outputs, index)
        if term is None:
            return 0.0
        self._log(f"{stage}_batch_loss", term.detach(), index.numel())
        return term if stage == "train" else 0.0

    def training_step(self, batch, batch_idx):
        """Loss on a training minibatch."""
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        """Loss on a validation minibatch."""
        return self._step(batch, "validation")


class ClassificationTrainingPlan(_SupervisedTrainingPlan):
    """Train a classifier with cross-entropy; log loss, accuracy and macro F1 per epoch.

    Logged (and so in ``model.history_``): ``train_loss``, ``train_accuracy``, ``validation_loss``,
    ``validation_accuracy`` and ``validation_macro_f1`` (F1 averaged over the cell types present in
    the validation cells or predicted for them; torchmetrics).

    Parameters
    ----------
    module
        :class:`~genohoption.module.AnnotationModule`: ``module(x)["logits"]``, ``module.loss``.
    n_classes
        Number of cell types.
    class_weight
        ``(n_classes,)`` weights of the classes in the training loss (e.g. inverse frequencies, to
        balance rare types); ``None``: equal. The validation loss is unweighted.
    label_smoothing
        Label smoothing of the training loss, in ``[0, 1)`` (default 0).
    **kwargs
        ``lr``, ``weight_decay``, ``optimizer``, ``lr_schedule``, ``warmup`` (see the base plan).
    """

    def __init__(self, module: torch.nn.Module, *, n_classes: int, class_weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0, **kwargs):
        super().__init__(module, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32)
            if class_weight.shape != (n_classes,) or not torch.isfinite(class_weight).all() or (class_weight < 0).any():
                raise ValueError(f"class_weight must hold {n_classes} finite non-negative weights.")
        self.register_buffer("class_weight", class_weight)
        self.label_smoothing = float(label_smoothing)
        self.train_accuracy = MulticlassAccuracy(n_classes, average="micro")
        self.validation_accuracy = MulticlassAccuracy(n_classes, average="micro")
        self.validation_macro_f1 = MulticlassF1Score(n_classes, average="macro")

    def _classify(self, batch: dict[str, torch.Tensor], train: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = batch[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        outputs = self.module(batch[REGISTRY_KEYS.X_KEY], **batch_inputs(batch))
        if train:
            loss = self.module.loss(outputs, labels, class_weight=self.class_weight,
                                    label_smoothing=self.label_smoothing)
        else:
            loss = self.module.loss(outputs, labels)
        loss = loss + self._adversarial(outputs, batch, "train" if train else "validation")
        return loss, outputs["logits"].argmax(-1), labels

    def training_step(self, batch, batch_idx):
        """Cross-entropy on a training minibatch."""
        loss, pred, labels = self._classify(batch, train=True)
        self.train_accuracy(pred, labels)
        self._log("train_loss", loss, labels.numel(), prog_bar=True)
        self._log("train_accuracy", self.train_accuracy, labels.numel())
        return loss

    def validation_step(self, batch, batch_idx):
        """Loss, accuracy and macro F1 on a validation minibatch (aggregated over the epoch)."""
        loss, pred, labels = self._classify(batch, train=False)
        self.validation_accuracy(pred, labels)
        self.validation_macro_f1(pred, labels)
        self._log("validation_loss", loss, labels.numel(), prog_bar=True)
        self._log("validation_accuracy", self.validation_accuracy, labels.numel())
        self._log("validation_macro_f1", self.validation_macro_f1, labels.numel())
        return loss


class RegressionTrainingPlan(_SupervisedTrainingPlan):
    """Train a perturbation model: predicted vs observed expression of the perturbed cells.

    Logged: ``train_loss``, ``validation_loss`` (the module's loss: MSE or GEARS) and
    ``train_mse``, ``validation_mse`` (plain MSE over the tokens' genes).

    Parameters
    ----------
    module
        :class:`~genohoption.module.PerturbationModule`: ``module(ctrl_x, pert_genes)``, ``module.loss``.
    **kwargs
        ``lr``, ``weight_decay``, ``optimizer`` (see the base plan).
    """

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        outputs = self.module(batch[CTRL_X_KEY], batch[PERT_GENES_KEY])
        loss, mse = self.module.loss(outputs, batch[REGISTRY_KEYS.X_KEY])
        n = batch[REGISTRY_KEYS.X_KEY].shape[0]
        self._log(f"{stage}_loss", loss, n, prog_bar=True)
        self._log(f"{stage}_mse", mse, n)
        return loss


class MaskedExpressionTrainingPlan(_SupervisedTrainingPlan):
    """Self-supervised pretraining: predict hidden expression values (scGPT's GEP + GEPC).

    Logged: ``train_loss``, ``validation_loss`` (sum of the two objectives), ``train_mse_token``,
    ``validation_mse_token`` (values predicted from each token's output) and ``train_mse_cell``,
    ``validation_mse_cell`` (predicted from the cell embedding). Validation hides values of the same
    tokens at every pass (a seeded generator), so its losses are comparable across epochs.

    Parameters
    ----------
    module
        :class:`~genohoption.module.PretrainingModule`.
    **kwargs
        ``lr``, ``weight_decay``, ``optimizer``, ``lr_schedule``, ``warmup`` (see the base plan).
    """

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        x = batch[REGISTRY_KEYS.X_KEY]
        if stage == "validation":
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(12345)  # the same hidden values at every validation pass
                outputs = self.module(x, **batch_inputs(batch))
        else:
            outputs = self.module(x, **batch_inputs(batch))
        loss, token, cell = self.module.loss(outputs)
        loss = loss + self._adversarial(outputs, batch, stage)
        n = x.shape[0]
        self._log(f"{stage}_loss", loss, n, prog_bar=True)
        self._log(f"{stage}_mse_token", token, n)
        self._log(f"{stage}_mse_cell", cell, n)
        return loss


class RestoreBestWeights(Callback):
    """Keep the module's weights of the best validation epoch and restore them when training ends.

    Early stopping ends training ``patience`` epochs after the best epoch; without this callback the
    model returned is the last one. The best state is kept in memory (on the CPU).

    Parameters
    ----------
    monitor
        Logged metric to compare (default ``"validation_loss"``, the early-stopping metric).
    mode
        ``"min"`` or ``"max"``.

    Attributes
    ----------
    best_score
        Best value of ``monitor`` seen (``None`` before the first validation).
    best_epoch
        Epoch (0-based) of the best value.
    """

    def __init__(self, monitor: str = "validation_loss", mode: Literal["min", "max"] = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._state: dict[str, torch.Tensor] | None = None

    def _better(self, value: float) -> bool:
        if self.best_score is None:
            return True
        return value < self.best_score if self.mode == "min" else value > self.best_score

    def on_validation_end(self, trainer, pl_module) -> None:
        """Copy the weights when the monitored metric improved."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value == value and self._better(value):  # NaN never wins
            self.best_score, self.best_epoch = value, int(trainer.current_epoch)
            self._state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.module.state_dict().items()}

    def state_dict(self) -> dict:
        """Best score, epoch and weights, kept in Lightning checkpoints (a resumed run restores the same best)."""
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "state": self._state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best_score, self.best_epoch = state_dict["best_score"], state_dict["best_epoch"]
        self._state = state_dict["state"]

    def on_train_end(self, trainer, pl_module) -> None:
        """Load the best weights back into the module."""
        if self._state is None:
            return
        pl_module.module.load_state_dict(self._state)
        logger.info("restored the weights of epoch %d (%s %.4g)", self.best_epoch + 1, self.monitor, self.best_score)
