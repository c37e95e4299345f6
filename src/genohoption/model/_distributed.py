"""Multi-process training through Lightning's DDP strategies (no home-made distribution).

:meth:`GenoHoptionModel.train` passes ``strategy=`` (and ``accelerator=``, ``devices=``, ``num_nodes=``) to
scvi-tools' :class:`~scvi.train.TrainRunner`, i.e. to Lightning. What this module adds:

- a distributed sampler for the data splitter when the strategy is a DDP one (scvi-tools'
  :func:`~scvi.model._utils.use_distributed_sampler` decides, as in scvi-tools' own models): each process
  reads its shard of every epoch's minibatches (:class:`~scvi.dataloaders.BatchDistributedSampler`);
- :func:`pin_split`: the train / validation split is drawn once, in the process that calls ``train``, and
  handed to every process (scvi-tools draws it in each process's ``DataSplitter.setup`` from
  ``scvi.settings.seed``, which processes started by ``ddp_spawn`` / ``ddp_notebook`` do not inherit: their
  splits, hence their shards, would differ, and one process's validation cells would be another's
  training cells);
- :func:`is_global_zero`, which :meth:`GenoHoptionModel.save` reads so that, in a script that every process
  runs (``strategy="ddp"``, ``torchrun``, SLURM), only rank 0 writes the model.

The training plans log their epoch metrics with ``sync_dist=True`` (mean over the processes), so the
history, early-stopping and best-epoch decisions agree on every rank.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scvi.model._utils import use_distributed_sampler

__all__ = ["distributed_splitter_kwargs", "global_rank", "is_global_zero", "pin_split", "uses_ddp"]

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


def pin_split(splitter, strategy: Any):
    """Under DDP, draw ``splitter``'s train / validation / test split now and make every process use it.

    Parameters
    ----------
    splitter
        A scvi-tools :class:`~scvi.dataloaders.DataSplitter` (or subclass) not yet set up, without
        ``external_indexing``.
    strategy
        The ``strategy`` given to ``train``.

    Returns
    -------
    ``splitter``, whose ``external_indexing`` holds the split drawn here (seeded by ``scvi.settings.seed`` as
    scvi-tools does), so that its ``setup`` in each process returns the same cells. Unchanged outside DDP or
    when the caller gave ``external_indexing``.
    """
    if uses_ddp(strategy) and getattr(splitter, "external_indexing", False) is None:
        splitter.setup()
        splitter.external_indexing = [np.asarray(splitter.train_idx), np.asarray(splitter.val_idx),
                                      np.asarray(splitter.test_idx)]  # fmt: skip
    return splitter


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
    """Whether this process is the one that writes files (global rank 0, or the only process).

    Without an initialised process group: the global rank of the launcher (``RANK``, else ``SLURM_PROCID``)
    is 0; or, with only Lightning's variables, ``LOCAL_RANK`` and ``NODE_RANK`` are both 0.
    """
    rank = global_rank()
    if rank != 0:
        return False
    import torch.distributed as dist

    if (dist.is_available() and dist.is_initialized()) or any(n in os.environ for n in ("RANK", "SLURM_PROCID")):
        return True
    node = os.environ.get("NODE_RANK", "0").strip()
    return not (node.isdigit() and int(node) != 0)
