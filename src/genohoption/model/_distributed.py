"""Multi-process training through Lightning's DDP strategies (no home-made distribution).

:meth:`GenoHoptionModel.train` passes ``strategy=`` (and ``accelerator=``, ``devices=``, ``num_nodes=``) to
scvi-tools' :class:`~scvi.train.TrainRunner`, i.e. to Lightning. What this module adds:

- a distributed sampler for the data splitter when the strategy is a DDP one (scvi-tools'
  :func:`~scvi.model._utils.use_distributed_sampler` decides, as in scvi-tools' own models): each process
  reads its shard of every epoch's minibatches (:class:`~scvi.dataloaders.BatchDistributedSampler`);
- :func:`is_global_zero`, which :meth:`GenoHoptionModel.save` reads so that, in a script that every process
  runs (``strategy="ddp"``, ``torchrun``, SLURM), only rank 0 writes the model.

The training plans log their epoch metrics with ``sync_dist=True`` (mean over the processes), so the
history, early-stopping and best-epoch decisions agree on every rank.
"""

from __future__ import annotations

import os
from typing import Any

from scvi.model._utils import use_distributed_sampler

__all__ = ["distributed_splitter_kwargs", "global_rank", "is_global_zero", "uses_ddp"]

_RANK_ENV = ("RANK", "SLURM_PROCID", "LOCAL_RANK")
"""Environment variables a launcher sets to a process's global rank (torchrun / Lightning, SLURM)."""


def uses_ddp(strategy: Any) -> bool:
    """Whether Lightning's ``strategy`` (a name or a strategy object) runs several processes with DDP."""
    return strategy is not None and use_distributed_sampler(strategy)


def distributed_splitter_kwargs(strategy: Any, datasplitter_kwargs: dict | None) -> dict:
    """Data-splitter arguments with ``distributed_sampler=True`` under DDP (unless the caller set it).

    Parameters
    ----------
    strategy
        The ``strategy`` given to :meth:`GenoHoptionModel.train` (``None``: Lightning's default).
    datasplitter_kwargs
        The caller's ``datasplitter_kwargs``.

    Returns
    -------
    A new dict.
    """
    kwargs = dict(datasplitter_kwargs or {})
    if uses_ddp(strategy):
        kwargs.setdefault("distributed_sampler", True)
    return kwargs


def global_rank() -> int:
    """Return the process's global rank: from ``torch.distributed`` when initialised, else the launcher's variables.

    ``ddp_spawn`` trains in child processes and returns to the parent, whose rank is 0; ``ddp`` (Lightning's
    launcher), ``torchrun`` and SLURM run the whole script in every process, which keeps its rank after
    training.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    for name in _RANK_ENV:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


def is_global_zero() -> bool:
    """Whether this process is the one that writes files (global rank 0, or the only process)."""
    return global_rank() == 0
