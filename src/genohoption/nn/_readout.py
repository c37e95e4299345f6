"""Read the attention weights of graph-diffusion layers out of a forward pass (off unless asked for).

:class:`AttentionReadout` registers forward hooks on the :class:`~genohoption.nn.GraphDiffusionAttention`
layers of a module only inside its ``with`` block, so the ordinary forward pass is untouched. Each hook
recomputes the layer's edge softmax (eq. 4 of Cheng et al.) from the layer's input with the engine's own
kernels (:func:`edge_attention`) and keeps the mean over heads and layers per edge of the batch graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._attention import GraphDiffusionAttention
from ._backends import make_ops
from ._engine import edge_softmax_
from ._graph import BatchGraph

__all__ = ["AttentionReadout", "edge_attention"]


@torch.no_grad()
def edge_attention(layer: GraphDiffusionAttention, x: torch.Tensor, graph: BatchGraph) -> torch.Tensor:
    """Attention weights ``a_ij`` of ``layer`` on the edges of ``graph`` (eq. 4), every head.

    ``a_ij = softmax_{j in Ne(i)} (q_i . k_j / sqrt(d))`` with ``Q, K`` from the layer's ``Wqkv``, computed
    with the same kernels as the layer's forward pass.

    Parameters
    ----------
    layer
        A sparse-attention layer (``attention`` ``"ppr"``, ``"heat"`` or ``"mask"``).
    x
        ``(B, L, d_model)`` input of the layer.
    graph
        The batch graph the layer attends on.

    Returns
    -------
    ``(E, H)`` float tensor: row ``e`` is edge ``e`` of ``graph`` in its CSR order (token ``i`` attends to
    token ``j``), one column per head; each token's weights over its neighbours sum to 1 per head.

    Raises
    ------
    ValueError
        For a dense layer (it has no graph) or a graph of another shape.
    """
    if layer.attention == "dense":
        raise ValueError("A dense attention layer has no graph edges to read out; use a sparse attention kind.")
    b, n_tok, _ = x.shape
    if graph.batch_size != b or graph.seq_len != n_tok:
        raise ValueError(f"graph is for (B, L) = ({graph.batch_size}, {graph.seq_len}), x has ({b}, {n_tok}).")
    h = layer.n_heads
    d = layer.d_model // h
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    q, k, _ = layer.Wqkv(x).view(b, n_tok, 3, h, d).to(dtype).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
    layout = graph.head_layout(h)
    n = b * h * n_tok
    scores = torch.empty(layout.nnz, dtype=dtype, device=x.device)
    make_ops(layer.backend, x.device, dtype, n).sddmm(layout.crow, layout.col, q.reshape(n, d), k.reshape(n, d),
                                                      scores, 1.0 / math.sqrt(d), 0.0)
    weights = edge_softmax_(scores, layout)  # laid out (B, H, E_b): cell, then head, then the cell's edges
    cells = torch.arange(b + 1, device=x.device) * n_tok
    bounds = graph.indptr[cells]
    cell_start, cell_edges = bounds[:-1], bounds.diff()
    cell = graph.row_ids() // n_tok
    base = cell_start[cell] * h + torch.arange(graph.n_edges, device=x.device) - cell_start[cell]
    index = base[:, None] + torch.arange(h, device=x.device)[None, :] * cell_edges[cell][:, None]
    return weights[index]


class AttentionReadout:
    """Collect the edge attention of a module's graph-diffusion layers, averaged over heads and layers.

    Use as a context manager around forward passes that share one batch graph across layers (a backbone's
    forward pass); the hooks exist only inside the ``with`` block. After each forward pass, :meth:`take`
    returns the per-edge mean over every head of every layer and clears the record.

    Parameters
    ----------
    module
        A module holding :class:`~genohoption.nn.GraphDiffusionAttention` layers (a backbone).

    Raises
    ------
    ValueError
        If the module has no graph-diffusion layer or a dense one (no graph to read out).

    Examples
    --------
    >>> with AttentionReadout(backbone) as readout:
    ...     backbone(genes, values, padding_mask, graph)
    ...     weights = readout.take()  # (E,) mean attention per edge of graph
    """

    def __init__(self, module: nn.Module):
        self.layers = [m for m in module.modules() if isinstance(m, GraphDiffusionAttention)]
        if not self.layers:
            raise ValueError("The module has no GraphDiffusionAttention layer to read attention from.")
        if any(m.attention == "dense" for m in self.layers):
            raise ValueError(
                "The model uses dense attention, which has no gene-graph edges to read out; train a model with "
                "attention='ppr', 'heat' or 'mask'."
            )
        self._handles: list = []
        self._sum: torch.Tensor | None = None
        self._graph: BatchGraph | None = None
        self._calls = 0

    def _hook(self, layer, args, kwargs, output) -> None:
        x = args[0] if args else kwargs["x"]
        graph = args[1] if len(args) > 1 else kwargs.get("graph")
        if self._graph is not None and graph is not self._graph:
            raise RuntimeError("AttentionReadout: the layers of one forward pass attended on different graphs; "
                               "call take() after each forward pass.")
        weights = edge_attention(layer, x, graph).mean(1, dtype=torch.float64)
        self._sum = weights if self._sum is None else self._sum.add_(weights)
        self._graph = graph
        self._calls += 1

    def __enter__(self) -> AttentionReadout:
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> tuple[torch.Tensor, BatchGraph]:
        """Return ``(weights, graph)`` of the last forward pass and clear the record.

        ``weights`` ``(E,)`` float64 is the mean of ``a_ij`` over heads and layers for every edge of
        ``graph``.

        Raises
        ------
        RuntimeError
            If no layer ran since the last call.
        """
        if self._sum is None:
            raise RuntimeError("No graph-diffusion layer ran inside the readout since the last take().")
        out, graph = self._sum / self._calls, self._graph
        self._sum, self._graph, self._calls = None, None, 0
        return out, graph
