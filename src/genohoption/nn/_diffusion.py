"""Sparse graph-diffusion attention (GenoHoption; Cheng et al., eqs. 4, 6-8, 10).

Source: Cheng et al., "Bridging Gene Network Graphs and Single-Cell Foundation Models".

Attention is restricted to the edges of the per-cell induced gene graph (eq. 4) and widened by K hops of
graph diffusion over the sparse attention matrix ``A`` (PPR, eqs. 6 and 8; heat kernel, eqs. 7 and 10).

Engine layout: the ``B`` cells and ``H`` heads are stacked into one block-diagonal CSR matrix over
``B * H * L`` rows (the row order of a contiguous ``(B, H, L, d)`` tensor), so every hop is a single
CSR @ dense product for all heads. Edge scores come from a sampled dense-dense product (no ``(E, H, d)``
gathers), the softmax is a segment softmax over CSR rows, and a hand-written backward
(:class:`torch.autograd.Function`) keeps memory linear in edges: it recomputes the hop outputs instead of
storing them in the forward pass, uses the transposed CSR for ``A^T dY``, the sampled product
``dY X^T`` on the pattern for the gradient of ``A``, and CSR products for ``dQ = dS K``, ``dK = dS^T Q``.
The two sparse primitives (CSR @ dense with a fused axpby, and the sampled product) run as numba kernels
with prefetched row gathers on CPU (:mod:`genohoption.nn._kernels`, the default there) and as
``torch.sparse`` (MKL on CPU, cuSPARSE on CUDA) otherwise; the rest of the engine is shared. Half-precision inputs are
computed in float32.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import _kernels
from ._graph import BatchGraph, HeadLayout

logger = logging.getLogger(__name__)

__all__ = [
    "DiffusionStats",
    "GraphDiffusionAttention",
    "dense_diffusion_reference",
    "graph_diffusion_attention",
    "last_diffusion_stats",
]

METHODS = ("ppr", "heat", "mask")
"""Sparse attention kinds of :func:`graph_diffusion_attention`."""

MODULE_ATTENTIONS = (*METHODS, "dense")
"""Attention kinds of :class:`GraphDiffusionAttention`."""


@dataclass(frozen=True)
class DiffusionStats:
    """What the last call of :func:`graph_diffusion_attention` did.

    Attributes
    ----------
    method
        ``"ppr"``, ``"heat"`` or ``"mask"``.
    n_hops
        Hops actually run (``< n_hops`` requested when ``tol`` stopped early).
    residual
        Last relative change ``||V_k - V_{k-1}|| / ||V_k||`` (PPR) or ``||V_k|| / ||sum_{i<=k} V_i||``
        (heat); ``None`` when ``tol`` was not given.
    converged
        Whether ``residual < tol``; ``None`` when ``tol`` was not given.
    """

    method: str
    n_hops: int
    residual: float | None = None
    converged: bool | None = None


_LAST_STATS: DiffusionStats | None = None


def last_diffusion_stats() -> DiffusionStats | None:
    """Return the :class:`DiffusionStats` of the most recent :func:`graph_diffusion_attention` call (this process)."""
    return _LAST_STATS


def _check_params(
    method: str, n_hops: int, alpha: float, t: float, methods: tuple[str, ...] = METHODS
) -> None:
    if method not in methods:
        raise ValueError(
            f"Unknown attention method {method!r}; choose one of {', '.join(map(repr, methods))}."
        )
    if isinstance(n_hops, bool) or not isinstance(n_hops, int) or n_hops < 1:
        raise ValueError(f"n_hops must be an integer >= 1, got {n_hops!r}.")
    if not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha (PPR teleport probability) must be in (0, 1], got {alpha!r}.")
    if not float(t) > 0.0:
        raise ValueError(f"t (heat-kernel diffusion time) must be > 0, got {t!r}.")


@dataclass(frozen=True)
class _Recurrence:
    """``X_0 = c0 V``; ``X_k = a_k A X_{k-1} + b_k V``; output ``scale * sum_k w_k X_k`` (``w`` is 0/1)."""

    method: str
    c0: float
    alpha: float
    t: float
    normalize: bool

    def a(self, k: int) -> float:
        if self.method == "ppr":
            return 1.0 - self.alpha
        if self.method == "heat":
            return self.t / k
        return 1.0

    def b(self, k: int) -> float:
        return self.alpha if self.method == "ppr" else 0.0

    def w(self, k: int, n_hops: int) -> float:
        if self.method == "heat":
            return 1.0
        return 1.0 if k == n_hops else 0.0

    def scale(self, n_hops: int) -> float:
        if self.method == "heat" and self.normalize:
            return 1.0 / (math.exp(-self.t) * sum(self.t**k / math.factorial(k) for k in range(n_hops + 1)))
        return 1.0


def _recurrence(method: str, alpha: float, t: float, normalize: bool) -> _Recurrence:
    c0 = math.exp(-t) if method == "heat" else 1.0
    return _Recurrence(method, c0, float(alpha), float(t), bool(normalize))


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)


def _edge_softmax_(s: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """In-place softmax of edge scores ``s`` (nnz,) within each CSR row (eq. 4)."""
    offsets = layout.crow if layout.crow.dtype == torch.int64 else layout.crow.long()
    row_max = torch.segment_reduce(s, "max", offsets=offsets, unsafe=True)
    s.sub_(row_max.index_select(0, layout.rows)).exp_()
    row_sum = torch.segment_reduce(s, "sum", offsets=offsets, unsafe=True)
    return s.div_(row_sum.index_select(0, layout.rows))


class _Ops:
    """The two sparse primitives of the engine, on one backend.

    ``spmm(crow, col, val, x, out, alpha, v, beta, total)``: ``out = alpha A x + beta v`` (then
    ``total += out`` if given); ``sddmm(crow, col, a, b, out, alpha, beta)``: ``out[e] = alpha <a_i, b_j> +
    beta out[e]`` on the pattern of ``(crow, col)``.
    """

    name = "torch"

    def __init__(self, n: int):
        self.n = n

    def spmm(self, crow, col, val, x, out, alpha=1.0, v=None, beta=0.0, total=None):
        mat = _csr(crow, col, val, self.n)
        if beta != 0.0:
            torch.addmm(v, mat, x, beta=beta, alpha=alpha, out=out)
        else:
            out.zero_()  # addmm with beta=0 still propagates NaN from an uninitialised buffer
            torch.addmm(out, mat, x, beta=0.0, alpha=alpha, out=out)
        if total is not None:
            total.add_(out)
        return out

    def sddmm(self, crow, col, a, b, out, alpha=1.0, beta=0.0):
        mat = _csr(crow, col, out, self.n)
        if beta == 0.0:
            out.zero_()
        torch.sparse.sampled_addmm(mat, a, b.t(), beta=beta, alpha=alpha, out=mat)
        return out


class _NumbaOps(_Ops):
    """CPU kernels with prefetched row gathers (:mod:`genohoption.nn._kernels`)."""

    name = "numba"

    def spmm(self, crow, col, val, x, out, alpha=1.0, v=None, beta=0.0, total=None):
        return _kernels.spmm(crow, col, val, x, out, alpha=alpha, v=v, beta=beta, total=total)

    def sddmm(self, crow, col, a, b, out, alpha=1.0, beta=0.0):
        return _kernels.sddmm(crow, col, a, b, out, alpha=alpha, beta=beta)


BACKENDS = ("auto", "numba", "torch")
"""Kernel backends of :func:`graph_diffusion_attention`."""


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}.")


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    _check_backend(backend)
    cpu_ok = device.type == "cpu" and _kernels.available(dtype)
    if backend == "numba" and not cpu_ok:
        raise ValueError(
            f"backend='numba' runs on CPU float32/float64 tensors with numba installed; got {device} {dtype}. "
            "Use backend='auto' or 'torch'."
        )
    if backend == "auto":
        return "numba" if cpu_ok else "torch"
    return backend


def _hop(ops: _Ops, layout: HeadLayout, a_vals, x, v, a_k: float, b_k: float, out, total=None):
    """``out = a_k A x + b_k v`` (``out`` must not alias ``x``); ``total += out`` if given."""
    return ops.spmm(layout.crow, layout.col, a_vals, x, out, a_k, v, b_k, total)


def _forward_hops(ops: _Ops, layout: HeadLayout, a_vals, v, rec: _Recurrence, n_hops: int, tol: float | None):
    """Run the power iteration; returns ``(output, hops_used, residual)`` (output not yet row-masked)."""
    x = v if rec.c0 == 1.0 else v * rec.c0
    acc = None
    if rec.method == "heat":
        acc = x.clone()
    bufs = [torch.empty_like(v), torch.empty_like(v)]
    residual = None
    hops = 0
    for k in range(1, n_hops + 1):
        out = bufs[k % 2]
        x_new = _hop(ops, layout, a_vals, x, v, rec.a(k), rec.b(k), out, acc)
        hops = k
        if tol is not None:
            if acc is not None:
                residual = float(
                    torch.linalg.vector_norm(x_new) / torch.linalg.vector_norm(acc).clamp_min(1e-30)
                )
            else:
                residual = float(
                    torch.linalg.vector_norm(x_new - x) / torch.linalg.vector_norm(x_new).clamp_min(1e-30)
                )
        x = x_new
        if tol is not None and residual < tol:
            break
    result = acc if acc is not None else x
    scale = rec.scale(hops)
    if scale != 1.0:
        result.mul_(scale)
    return result, hops, residual


def _reverse_hop_inputs(ops: _Ops, layout: HeadLayout, a_vals, x0, v, rec: _Recurrence, n_hops: int):
    """Yield ``X_{K-1}, ..., X_0`` by checkpointed recomputation.

    Checkpoints every ``s = ceil(sqrt(K))`` hops, then recomputes one segment at a time, so at most
    ``K / s + s`` hop outputs are alive (3 instead of 5 new arrays for K = 6) for about ``K`` extra hops.
    A yielded array is reused once the consumer asks for the next one (fresh large arrays cost a page
    fault per 4 KiB on first touch, about as much as a hop at n = 3000, B = 8).
    """
    seg = max(1, math.ceil(math.sqrt(n_hops)))
    last = ((n_hops - 1) // seg) * seg
    free: list[torch.Tensor] = []

    def buffer() -> torch.Tensor:
        return free.pop() if free else torch.empty_like(v)

    ckpt = {0: x0}
    x = x0
    for kk in range(1, last + 1):
        x_new = _hop(ops, layout, a_vals, x, v, rec.a(kk), rec.b(kk), buffer())
        if (kk - 1) % seg != 0:  # the previous output is not a checkpoint (X_0 is one)
            free.append(x)
        x = x_new
        if kk % seg == 0:
            ckpt[kk] = x
    del x
    for start in range(last, -1, -seg):
        stop = min(start + seg, n_hops)
        del free[stop - start - 1 :]  # keep no more spare arrays than this segment needs (peak memory)
        xs = [ckpt.pop(start)]
        for kk in range(start + 1, stop):
            xs.append(_hop(ops, layout, a_vals, xs[-1], v, rec.a(kk), rec.b(kk), buffer()))
        while xs:
            x = xs.pop()
            yield x
            if start > 0 and x is not x0:  # the last segment returns nothing to the pool
                free.append(x)


class _GraphDiffusion(torch.autograd.Function):
    """Edge softmax + power iteration with a memory-lean hand-written backward."""

    @staticmethod
    def forward(ctx, q, k, v, layout: HeadLayout, rec: _Recurrence, n_hops: int, tol, scale: float, ops: _Ops):
        # q, k, v: (N, d) contiguous, N = B * H * L in (b, h, i) order
        s = torch.empty(layout.nnz, dtype=q.dtype, device=q.device)
        ops.sddmm(layout.crow, layout.col, q, k, s, scale, 0.0)  # scores on edges
        a_vals = _edge_softmax_(s, layout)  # in place: s now holds the attention weights
        out, hops, residual = _forward_hops(ops, layout, a_vals, v, rec, n_hops, tol)
        if layout.empty_rows is not None:
            out.index_fill_(0, layout.empty_rows, 0.0)
        ctx.save_for_backward(q, k, v, a_vals)
        ctx.layout, ctx.rec, ctx.hops, ctx.scale, ctx.ops = layout, rec, hops, scale, ops
        global _LAST_STATS
        _LAST_STATS = DiffusionStats(
            rec.method, hops, residual, None if tol is None or residual is None else residual < tol
        )
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        q, k, v, a_vals = ctx.saved_tensors
        layout: HeadLayout = ctx.layout
        rec: _Recurrence = ctx.rec
        ops: _Ops = ctx.ops
        n_hops: int = ctx.hops
        need_qk = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]

        g = g.contiguous()
        if layout.empty_rows is not None:  # the output rows of edge-less tokens were zeroed
            g = g.index_fill(0, layout.empty_rows, 0.0)
        sc = rec.scale(n_hops)
        if sc != 1.0:
            g = g * sc

        at_vals = a_vals.index_select(0, layout.t_perm)  # A^T on the transposed pattern

        # hop inputs X_{K-1}, ..., X_0, recomputed (not stored by the forward pass), O(sqrt K) alive
        x0 = v if rec.c0 == 1.0 else v * rec.c0
        inputs = _reverse_hop_inputs(ops, layout, a_vals, x0, v, rec, n_hops) if need_qk else None

        d_a = torch.zeros_like(a_vals)
        dv = None
        gbar = g if rec.w(n_hops, n_hops) == 1.0 else torch.zeros_like(g)
        spare = [torch.empty_like(g), torch.empty_like(g)]
        for kk in range(n_hops, 0, -1):
            a_k, b_k = rec.a(kk), rec.b(kk)
            if need_qk:  # dL/dA += a_k * gbar X_{k-1}^T on the pattern
                x_prev = next(inputs)
                ops.sddmm(layout.crow, layout.col, gbar, x_prev, d_a, a_k, 1.0)
                del x_prev
            if b_k != 0.0:
                dv = gbar * b_k if dv is None else dv.add_(gbar, alpha=b_k)
            # gbar_{k-1} = w_{k-1} g + a_k A^T gbar_k
            gbar = ops.spmm(
                layout.t_crow, layout.t_col, at_vals, gbar, spare[kk % 2], a_k, g, rec.w(kk - 1, n_hops)
            )
        dv = gbar * rec.c0 if dv is None else dv.add_(gbar, alpha=rec.c0)
        del gbar, inputs, at_vals  # the two spare buffers now take dQ and dK (no fresh pages)

        dq = dk = None
        if need_qk:
            # softmax backward on edges: dS = a * (dA - rowsum(a * dA)), times 1/sqrt(d)
            offsets = layout.crow if layout.crow.dtype == torch.int64 else layout.crow.long()
            d_a.mul_(a_vals)
            row_sum = torch.segment_reduce(d_a, "sum", offsets=offsets, unsafe=True)
            d_a.sub_(a_vals * row_sum.index_select(0, layout.rows)).mul_(ctx.scale)
            if ctx.needs_input_grad[0]:
                dq = ops.spmm(layout.crow, layout.col, d_a, k, spare[0])
            if ctx.needs_input_grad[1]:
                d_s_t = d_a.index_select(0, layout.t_perm)
                dk = ops.spmm(layout.t_crow, layout.t_col, d_s_t, q, spare[1])
        return dq, dk, dv, None, None, None, None, None, None


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
        synchronisation per hop. The hops used are returned by :func:`last_diffusion_stats` and logged at
        DEBUG level; the backward pass uses the same number.
    backend
        Sparse kernels: ``"numba"`` (CPU kernels with prefetched row gathers, about 2x faster than MKL per
        hop), ``"torch"`` (``torch.sparse`` CSR: MKL on CPU, cuSPARSE on CUDA) or ``"auto"`` (default:
        ``"numba"`` for CPU tensors when numba is installed, else ``"torch"``). Both give the same values
        to rounding (tested to 1e-6) and train alike (10 seeds of the test suite's toy training: same
        losses to 3 decimals, query accuracy 0.765 +- 0.025 with either).

    Returns
    -------
    ``(B, H, L, d)`` tensor. Rows of tokens without edges (padding) are 0.

    Raises
    ------
    ValueError
        Unknown ``method``, ``n_hops < 1``, ``alpha`` not in ``(0, 1]``, ``t <= 0``, ``tol <= 0``, shape
        mismatch between ``q``, ``k``, ``v`` and ``graph``, ``graph`` on another device, unknown
        ``backend``, or ``backend="numba"`` for CUDA tensors.

    Notes
    -----
    Time ``O(B H E_b d K)``, memory ``O(B H E_b + K B H L d)`` in the backward pass (hop outputs are
    recomputed there, not stored), where ``E_b`` is the number of edges per cell.
    """
    _check_params(method, n_hops, alpha, t)
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

    rec = _recurrence(method, alpha, t, normalize)
    ops_cls = _NumbaOps if _resolve_backend(backend, q.device, compute_dtype) == "numba" else _Ops
    out = _GraphDiffusion.apply(
        flat(q), flat(k), flat(v), layout, rec, n_hops, tol, 1.0 / math.sqrt(d), ops_cls(n)
    )
    if tol is not None:
        stats = _LAST_STATS
        logger.debug(
            "graph_diffusion_attention: %s used %d hops (residual %s)", method, stats.n_hops, stats.residual
        )
    return out.view(b, h, n_tok, d).to(out_dtype)


def dense_diffusion_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    method: str = "ppr",
    n_hops: int = 6,
    alpha: float = 0.25,
    t: float = 5.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Dense (``L x L``) reference of :func:`graph_diffusion_attention`; the test oracle.

    Parameters
    ----------
    q, k, v
        ``(B, H, L, d)``.
    mask
        ``(B, L, L)`` bool, ``mask[b, i, j]`` = token ``i`` attends to token ``j``
        (e.g. :meth:`BatchGraph.to_dense_mask`).
    method, n_hops, alpha, t, normalize
        As in :func:`graph_diffusion_attention` (eqs. 4, 6-8, 10).

    Returns
    -------
    ``(B, H, L, d)``; rows whose mask row has no ``True`` are 0. Differentiable by plain autograd.
    Memory ``O(B H L^2)``.

    Raises
    ------
    ValueError
        Bad parameters or shapes.
    """
    _check_params(method, n_hops, alpha, t)
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError("q, k, v must all have shape (B, H, L, d).")
    b, _, n_tok, d = q.shape
    if mask.shape != (b, n_tok, n_tok) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape (B, L, L) = ({b}, {n_tok}, {n_tok}).")
    m = mask[:, None]
    has = m.any(-1, keepdim=True)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    s = s.masked_fill(~m, float("-inf")).masked_fill(~has, 0.0)
    a = torch.softmax(s, dim=-1) * m
    if method == "mask":
        out = a @ v
    elif method == "ppr":
        x = v
        for _ in range(n_hops):
            x = (1 - alpha) * (a @ x) + alpha * v
        out = x
    else:
        x = math.exp(-t) * v
        out = x
        for kk in range(1, n_hops + 1):
            x = (t / kk) * (a @ x)
            out = out + x
        if normalize:
            out = out / (math.exp(-t) * sum(t**kk / math.factorial(kk) for kk in range(n_hops + 1)))
    return out * has


class GraphDiffusionAttention(nn.Module):
    """Multi-head graph-diffusion attention with scGPT's parameter names (GenoHoption, eqs. 1, 4, 6-8, 10).

    ``Q, K, V = x Wqkv`` (packed in that order, heads contiguous: ``(B, L, 3, H, d)``), attention by
    :func:`graph_diffusion_attention` (or dense scaled-dot-product attention), then ``out_proj``.
    Dropout, residual and LayerNorm belong to the enclosing transformer layer.

    Parameters
    ----------
    d_model
        Model width; must be divisible by ``n_heads``.
    n_heads
        Number of heads ``H``; head width ``d = d_model / H``.
    attention
        ``"ppr"`` (default), ``"heat"``, ``"mask"`` or ``"dense"`` (full attention over non-padding keys,
        the backbone's baseline; the graph is ignored).
    n_hops, alpha, t, normalize
        Diffusion parameters, see :func:`graph_diffusion_attention` (defaults 6, 0.25, 5.0, ``False``).
    bias
        Biases in ``Wqkv`` and ``out_proj``.
    backend
        Sparse kernels of :func:`graph_diffusion_attention` (default ``"auto"``); may be changed on the
        module later (``layer.backend = "torch"``).

    Raises
    ------
    ValueError
        Bad ``attention``, diffusion parameters or ``backend``, or ``d_model`` not divisible by ``n_heads``.

    Attributes
    ----------
    Wqkv
        ``nn.Linear(d_model, 3 * d_model)``.
    out_proj
        ``nn.Linear(d_model, d_model)``.
    last_stats
        :class:`DiffusionStats` of the last forward pass (``None`` for dense).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        attention: str = "ppr",
        n_hops: int = 6,
        alpha: float = 0.25,
        t: float = 5.0,
        normalize: bool = False,
        bias: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_params(attention, n_hops, alpha, t, MODULE_ATTENTIONS)
        _check_backend(backend)
        self.backend = backend
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads}).")
        self.d_model, self.n_heads = d_model, n_heads
        self.attention, self.n_hops, self.alpha, self.t, self.normalize = (
            attention,
            n_hops,
            alpha,
            t,
            normalize,
        )
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.last_stats: DiffusionStats | None = None

    def extra_repr(self) -> str:
        extra = "" if self.attention in ("dense", "mask") else f", n_hops={self.n_hops}"
        if self.attention == "ppr":
            extra += f", alpha={self.alpha}"
        elif self.attention == "heat":
            extra += f", t={self.t}, normalize={self.normalize}"
        if self.attention != "dense":
            extra += f", backend={self.backend!r}"
        return f"d_model={self.d_model}, n_heads={self.n_heads}, attention={self.attention!r}{extra}"

    def forward(
        self,
        x: torch.Tensor,
        graph: BatchGraph | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        x
            ``(B, L, d_model)``.
        graph
            :class:`BatchGraph` of this batch; required unless ``attention == "dense"``.
        key_padding_mask
            ``(B, L)`` bool, ``True`` = padding. Used by ``"dense"``; the sparse kinds take padding from
            ``graph`` (padding tokens have no edges) and ignore it.

        Returns
        -------
        ``(B, L, d_model)`` after ``out_proj``.

        Raises
        ------
        ValueError
            ``graph`` missing for a sparse attention kind, or shape mismatch.
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, L, {self.d_model}), got {tuple(x.shape)}.")
        b, n_tok, _ = x.shape
        h, d = self.n_heads, self.d_model // self.n_heads
        if key_padding_mask is not None and key_padding_mask.shape != (b, n_tok):
            raise ValueError(f"key_padding_mask must have shape (B, L) = ({b}, {n_tok}).")
        qkv = self.Wqkv(x).view(b, n_tok, 3, h, d)
        if self.attention == "dense":
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            self.last_stats = None
        else:
            if graph is None:
                raise ValueError(
                    f"attention={self.attention!r} needs the batch graph: pass graph=induced_batch_graph(tokens, ...)."
                )
            q, k, v = (
                qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)
            )  # one copy, each (B, H, L, d) contiguous
            out = graph_diffusion_attention(
                q,
                k,
                v,
                graph,
                method=self.attention,
                n_hops=self.n_hops,
                alpha=self.alpha,
                t=self.t,
                normalize=self.normalize,
                backend=self.backend,
            )
            self.last_stats = last_diffusion_stats()
        return self.out_proj(out.transpose(1, 2).reshape(b, n_tok, self.d_model))
