"""Sparse graph-diffusion attention, functional form (GenoHoption; Cheng et al., eqs. 4, 6-8, 10).

Source: Cheng et al., "Bridging Gene Network Graphs and Single-Cell Foundation Models".

Attention is restricted to the edges of the per-cell induced gene graph (eq. 4) and widened by K hops of
graph diffusion over the sparse attention matrix ``A`` (PPR, eqs. 6 and 8; heat kernel, eqs. 7 and 10).
The computation is in :mod:`genohoption.nn._engine`, the sparse kernels in :mod:`genohoption.nn._backends`.
"""

from __future__ import annotations

import logging
import math

import torch

from ._backends import make_ops
from ._engine import GraphDiffusion
from ._graph import BatchGraph
from ._recurrence import check_params, recurrence
from ._stats import last_diffusion_stats

logger = logging.getLogger(__name__)

__all__ = ["graph_diffusion_attention"]


def graph_diffusion_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    graph: BatchGraph,
    *,
    method: str = "ppr",
    n_hops: int = 6,
    alpha: float = 0.25,
    t: float = 5.0,
    normalize: bool = False,
    tol: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Graph-restricted attention followed by K hops of graph diffusion (GenoHoption).

    ``a_ij = softmax_{j in Ne(i)} (q_i . k_j / sqrt(d))`` per head (eq. 4) defines a sparse attention
    matrix ``A`` (block-diagonal over cells), computed once and reused for all hops:

    - ``"ppr"`` (eqs. 6, 8): ``V_0 = V``; ``V_k = (1 - alpha) A V_{k-1} + alpha V``; output ``V_K``.
    - ``"heat"`` (eqs. 7, 10): ``V_0 = e^{-t} V``; ``V_k = (t / k) A V_{k-1}``; output ``sum_{k=0..K} V_k``.
      With ``normalize=True`` the output is divided by ``e^{-t} sum_{k<=K} t^k / k!`` so that the
      truncated weights sum to 1 (the paper and the authors' code do not renormalise).
    - ``"mask"``: one hop, ``A V`` (plain graph-masked attention, the paper's "w/o iter" ablation).

    Parameters
    ----------
    q, k, v
        ``(B, H, L, d)`` queries, keys, values. float32, float64, or bfloat16/float16 (computed in float32,
        returned in the input dtype). Contiguous inputs avoid a copy.
    graph
        :class:`~genohoption.nn.BatchGraph` with ``batch_size == B`` and ``seq_len == L``
        (see :func:`~genohoption.nn.induced_batch_graph`), on the device of ``q``.
    method
        ``"ppr"`` (default), ``"heat"`` or ``"mask"``.
    n_hops
        Number of hops ``K`` (default 6; ignored by ``"mask"``).
    alpha
        PPR teleport probability, in ``(0, 1]`` (default 0.25).
    t
        Heat-kernel diffusion time, ``> 0`` (default 5).
    normalize
        Heat only: renormalise the truncated series weights to sum to 1 (default ``False``).
    tol
        Optional adaptive number of hops: stop after hop ``k`` once ``||V_k - V_{k-1}|| / ||V_k|| < tol``
        (PPR) or ``||V_k|| / ||sum_{i<=k} V_i|| < tol`` (heat), at most ``n_hops`` hops. Costs one device
        synchronisation per hop. The hops used are returned by :func:`~genohoption.nn.last_diffusion_stats`
        and logged at DEBUG level; the backward pass uses the same number.
    backend
        Sparse kernels: ``"numba"`` (CPU kernels with prefetched row gathers),
        ``"torch"`` (``torch.sparse`` CSR: MKL on CPU, cuSPARSE on CUDA) or ``"auto"`` (default: ``"numba"``
        for CPU float tensors, else ``"torch"``).
        Both give the same values to rounding. If the numba kernels cannot be imported, compiled or loaded,
        ``"auto"`` runs ``"torch"`` instead and warns once per process (a :class:`RuntimeWarning`).

    Returns
    -------
    ``(B, H, L, d)`` tensor. Rows of tokens without edges (padding) are 0.

    Raises
    ------
    ValueError
        Unknown ``method``, ``n_hops < 1``, ``alpha`` not in ``(0, 1]``, ``t <= 0``, ``tol <= 0``, shape
        mismatch between ``q``, ``k``, ``v`` and ``graph``, ``graph`` on another device, unknown
        ``backend``, or ``backend="numba"`` for tensors other than CPU float32/float64 (half precision is
        computed in float32).
    TypeError
        ``graph`` is not a :class:`~genohoption.nn.BatchGraph`.
    RuntimeError
        ``backend="numba"`` and the numba kernels failed to compile or load.

    Notes
    -----
    Time ``O(B H E_b d K)``, memory ``O(B H E_b + K B H L d)`` in the backward pass (hop outputs are
    recomputed there, not stored), where ``E_b`` is the number of edges per cell.
    """
    check_params(method, n_hops, alpha, t)
    if tol is not None and not float(tol) > 0.0:
        raise ValueError(f"tol must be > 0 or None, got {tol!r}.")
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all have shape (B, H, L, d); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
        )
    b, h, n_tok, d = q.shape
    if not isinstance(graph, BatchGraph):
        raise TypeError(f"graph must be a BatchGraph (see induced_batch_graph), got {type(graph).__name__}.")
    if graph.batch_size != b or graph.seq_len != n_tok:
        raise ValueError(
            f"graph is for (batch_size, seq_len) = ({graph.batch_size}, {graph.seq_len}) but q has "
            f"(B, L) = ({b}, {n_tok}); build the graph from this batch's tokens."
        )
    if graph.device != q.device:
        raise ValueError(f"graph is on {graph.device} but q on {q.device}; use graph.to(q.device).")
    if method == "mask":
        n_hops = 1
    out_dtype = q.dtype
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    layout = graph.head_layout(h)
    n = b * h * n_tok

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.to(compute_dtype).reshape(n, d).contiguous()

    rec = recurrence(method, alpha, t, normalize)
    ops = make_ops(backend, q.device, compute_dtype, n)
    out = GraphDiffusion.apply(flat(q), flat(k), flat(v), layout, rec, n_hops, tol, 1.0 / math.sqrt(d), ops)
    if tol is not None:
        stats = last_diffusion_stats()
        logger.debug(
            "graph_diffusion_attention: %s used %d hops (residual %s)", method, stats.n_hops, stats.residual
        )
    return out.view(b, h, n_tok, d).to(out_dtype)
