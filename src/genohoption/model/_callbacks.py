"""The BatchNorm-statistics callback used by :meth:`GenoHoptionModel.train`."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from torch import nn

from ..nn import DomainSpecificBatchNorm
from ._batch import batch_inputs

__all__ = ["PreciseBatchNorm"]


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    kinds = (nn.modules.batchnorm._BatchNorm, DomainSpecificBatchNorm)
    return [m for m in module.modules() if isinstance(m, kinds) and m.track_running_stats]


class PreciseBatchNorm(Callback):
    """Recompute BatchNorm statistics with the current weights before every validation and at the end.

    BatchNorm layers keep exponential moving averages of their batch statistics during training. When the
    features they normalise drift quickly (a model trained from scratch at a high learning rate), those
    averages lag the weights, and predictions made with them (and the validation loss that early stopping
    and :class:`RestoreBestWeights` read) are erratic. This callback resets the statistics and
    re-estimates them, with the model in evaluation mode (no dropout, deterministic tokens) except the
    BatchNorm layers, from up to ``max_batches`` training minibatches without gradients ("precise BN",
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, sec. 3). The random number generators are
    forked, so training itself is unchanged: only the statistics used at inference differ. A module
    without BatchNorm is left alone. Domain-specific BatchNorms
    (:class:`~genohoption.nn.DomainSpecificBatchNorm`) are re-estimated too, each batch's statistics from its
    cells in those minibatches; a batch with fewer than two cells in every one of them keeps its statistics.

    Parameters
    ----------
    max_batches
        Training minibatches averaged (default 8).

    Raises
    ------
    ValueError
        If ``max_batches < 1``.
    """

    def __init__(self, max_batches: int = 8):
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, got {max_batches}.")
        self.max_batches = max_batches
        self._updated_at: int | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        """Update before each validation (not before Lightning's sanity check)."""
        if not trainer.sanity_checking:
            self.update(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """Update for the final weights."""
        self.update(trainer, pl_module)

    def update(self, trainer, pl_module) -> None:
        """Re-estimate the statistics of every BatchNorm in ``pl_module.module`` (no-op without one)."""
        module = pl_module.module
        norms = _batch_norms(module)
        if not norms or self._updated_at == trainer.global_step:
            return
        loader = trainer.train_dataloader
        if loader is None:
            return
        was_training = module.training
        momenta = [bn.momentum for bn in norms]
        kept = {i: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
                for i, bn in enumerate(norms) if isinstance(bn, DomainSpecificBatchNorm)}
        module.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches below
            bn.train()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                for i, batch in enumerate(loader):
                    if i == self.max_batches:
                        break
                    x = batch[REGISTRY_KEYS.X_KEY]
                    if x.shape[0] > 1:  # batch statistics need two cells
                        module(x.to(module.device),
                               **{k: v.to(module.device) for k, v in batch_inputs(batch).items()})
        finally:
            for bn, momentum in zip(norms, momenta, strict=True):
                bn.momentum = momentum
            for i, (mean, var, tracked) in kept.items():  # batches absent from those minibatches
                absent = norms[i].num_batches_tracked == 0
                norms[i].running_mean[absent] = mean[absent]
                norms[i].running_var[absent] = var[absent]
                norms[i].num_batches_tracked[absent] = tracked[absent]
            module.train(was_training)
        self._updated_at = trainer.global_step
