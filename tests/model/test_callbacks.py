from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genohoption.model import PreciseBatchNorm


class _Module(nn.Module):
    """Linear -> dropout -> BatchNorm, with the task modules' interface (``module(x)``, ``device``)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(4, momentum=0.3)

    @property
    def device(self):
        return self.lin.weight.device

    def forward(self, x):
        return self.norm(self.drop(self.lin(x)))


def _setup(batches, step=10, max_batches=32):
    torch.manual_seed(0)
    module = _Module()
    module.train()
    trainer = SimpleNamespace(train_dataloader=[{"X": b} for b in batches], global_step=step, sanity_checking=False)
    return PreciseBatchNorm(max_batches), trainer, SimpleNamespace(module=module), module


def test_statistics_are_those_of_the_current_weights():
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, generator=gen) * 4 + 2 for n in (8, 8, 1, 5)]
    callback, trainer, pl_module, module = _setup(batches)
    callback.on_validation_start(trainer, pl_module)
    # known answer: mean of the per-batch means / unbiased variances of the eval-mode features (no
    # dropout), skipping the one-cell batch
    with torch.no_grad():
        feats = [module.lin(b) for b in batches if b.shape[0] > 1]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0) for f in feats]).mean(0)
    torch.testing.assert_close(module.norm.running_mean, mean)
    torch.testing.assert_close(module.norm.running_var, var)
    assert int(module.norm.num_batches_tracked) == 3
    # restored: momentum, training mode, and the random stream
    assert module.norm.momentum == 0.3 and module.training and module.drop.training
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    callback._updated_at = None
    callback.update(trainer, pl_module)
    torch.testing.assert_close(torch.rand(3), expected)


def test_max_batches_sanity_check_and_no_batchnorm():
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(6, 3, generator=gen) + i for i in range(4)]
    callback, trainer, pl_module, module = _setup(batches, max_batches=2)
    trainer.sanity_checking = True
    callback.on_validation_start(trainer, pl_module)
    assert int(module.norm.num_batches_tracked) == 0  # not before training starts
    trainer.sanity_checking = False
    callback.on_train_end(trainer, pl_module)
    assert int(module.norm.num_batches_tracked) == 2
    with torch.no_grad():
        mean = torch.stack([module.lin(b).mean(0) for b in batches[:2]]).mean(0)
    torch.testing.assert_close(module.norm.running_mean, mean)
    # once per optimisation step: a second call at the same step changes nothing
    trainer.train_dataloader = trainer.train_dataloader[2:]
    callback.on_train_end(trainer, pl_module)
    torch.testing.assert_close(module.norm.running_mean, mean)
    plain = SimpleNamespace(module=nn.Sequential(nn.Linear(3, 3)))
    PreciseBatchNorm().update(trainer, plain)  # nothing to do, no error
    with pytest.raises(ValueError, match="max_batches"):
        PreciseBatchNorm(0)
