"""What every task module shares."""

from __future__ import annotations

import torch
from torch import nn


class TaskModule(nn.Module):
    """A :class:`torch.nn.Module` holding the gene graph and the backbone of one task.

    Subclasses define ``forward`` (minibatch tensors → outputs) and ``loss`` (outputs, targets →
    scalar); the training plans of :mod:`genohoption.model` call them.

    Parameters
    ----------
    graph_indptr, graph_indices
        Global gene graph in CSR form over the ``n_genes`` genes (row ``i`` = genes ``i`` attends to),
        stored as int64 buffers (saved with the weights).
    """

    def __init__(self, graph_indptr: torch.Tensor, graph_indices: torch.Tensor):
        super().__init__()
        self.register_buffer("graph_indptr", graph_indptr.to(torch.int64).clone())
        self.register_buffer("graph_indices", graph_indices.to(torch.int64).clone())

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.graph_indptr.device

    @property
    def n_edges(self) -> int:
        """Edges of the global gene graph."""
        return int(self.graph_indices.numel())
