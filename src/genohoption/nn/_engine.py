"""The diffusion engine: edge softmax, power iteration, and its hand-written backward.

Layout: the ``B`` cells and ``H`` heads are stacked into one block-diagonal CSR matrix over ``B * H * L``
rows (the row order of a contiguous ``(B, H, L, d)`` tensor, :class:`~genohoption.nn._graph.HeadLayout`),
so every hop is a single CSR @ dense product for all heads. Edge scores come from a sampled dense-dense
product (no ``(E, H, d)`` gathers) and the softmax is a segment softmax over CSR rows (eq. 4). The hops
follow a :class:`~genohoption.nn._recurrence.Recurrence` (eqs. 6-8, 10).

The backward pass (:class:`GraphDiffusion`, a :class:`torch.autograd.Function`) keeps memory linear in
edges: it recomputes the hop outputs instead of storing them in the forward pass (``O(sqrt K)`` alive, see
:func:`reverse_hop_inputs`), uses the transposed CSR for ``A^T dY``, the sampled product ``dY X^T`` on the
pattern for the gradient of ``A``, and CSR products for ``dQ = dS K``, ``dK = dS^T Q``. The sparse
primitives come from a backend of :mod:`genohoption.nn._backends`.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ._backends import TorchOps
from ._graph import HeadLayout
from ._recurrence import Recurrence
from ._stats import DiffusionStats, record_stats

__all__ = ["GraphDiffusion", "edge_softmax_", "forward_hops", "hop", "reverse_hop_inputs"]


def edge_softmax_(s: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """In-place softmax of edge scores ``s`` ``(nnz,)`` within each CSR row of ``layout`` (eq. 4); returns ``s``."""
    offsets = layout.crow if layout.crow.dtype == torch.int64 else layout.crow.long()
    row_max = torch.segment_reduce(s, "max", offsets=offsets, unsafe=True)
    s.sub_(row_max.index_select(0, layout.rows)).exp_()
    row_sum = torch.segment_reduce(s, "sum", offsets=offsets, unsafe=True)
    return s.div_(row_sum.index_select(0, layout.rows))


def hop(ops: TorchOps, layout: HeadLayout, a_vals, x, v, a_k: float, b_k: float, out, total=None):
    """``out = a_k A x + b_k v`` (``out`` must not alias ``x``); ``total += out`` if given. Returns ``out``."""
    return ops.spmm(layout.crow, layout.col, a_vals, x, out, a_k, v, b_k, total)


def forward_hops(
    ops: TorchOps, layout: HeadLayout, a_vals, v, rec: Recurrence, n_hops: int, tol: float | None
):
    """Run the power iteration; return ``(output, hops_used, residual)`` (output not yet row-masked).

    With ``tol``, stop after hop ``k`` once the residual (see :class:`~genohoption.nn.DiffusionStats`) is
    below ``tol``; ``residual`` is ``None`` without ``tol``.
    """
    x = v if rec.c0 == 1.0 else v * rec.c0
    acc = None
    if rec.method == "heat":
        acc = x.clone()
    bufs = [torch.empty_like(v), torch.empty_like(v)]
    residual = None
    hops = 0
    for k in range(1, n_hops + 1):
        out = bufs[k % 2]
        x_new = hop(ops, layout, a_vals, x, v, rec.a(k), rec.b(k), out, acc)
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


def reverse_hop_inputs(ops: TorchOps, layout: HeadLayout, a_vals, x0, v, rec: Recurrence, n_hops: int):
    """Yield ``X_{K-1}, ..., X_0`` by checkpointed recomputation.

    Checkpoints every ``s = ceil(sqrt(K))`` hops, then recomputes one segment at a time, so at most
    ``K / s + s`` hop outputs are alive (3 instead of 5 new arrays for K = 6) for about ``K`` extra hops.
    A yielded array is reused once the consumer asks for the next one (a fresh large array costs a page
    fault per 4 KiB on first touch).
    """
    seg = max(1, math.ceil(math.sqrt(n_hops)))
    last = ((n_hops - 1) // seg) * seg
    free: list[torch.Tensor] = []

    def buffer() -> torch.Tensor:
        return free.pop() if free else torch.empty_like(v)

    ckpt = {0: x0}
    x = x0
    for kk in range(1, last + 1):
        x_new = hop(ops, layout, a_vals, x, v, rec.a(kk), rec.b(kk), buffer())
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
            xs.append(hop(ops, layout, a_vals, xs[-1], v, rec.a(kk), rec.b(kk), buffer()))
        while xs:
            x = xs.pop()
            yield x
            if start > 0 and x is not x0:  # the last segment returns nothing to the pool
                free.append(x)


class GraphDiffusion(torch.autograd.Function):
    """Edge softmax + power iteration with a memory-lean hand-written backward.

    ``apply(q, k, v, layout, rec, n_hops, tol, scale, ops)``: ``q``, ``k``, ``v`` are contiguous
    ``(N, d)`` with ``N = B * H * L`` rows in ``(b, h, i)`` order; ``scale`` multiplies the scores
    (``1 / sqrt(d)``). Returns ``(N, d)``, rows without edges 0, and records
    :class:`~genohoption.nn.DiffusionStats` (:func:`~genohoption.nn.last_diffusion_stats`).
    """

    @staticmethod
    def forward(
        ctx, q, k, v, layout: HeadLayout, rec: Recurrence, n_hops: int, tol, scale: float, ops: TorchOps
    ):
        """Forward pass (see the class docstring)."""
        s = torch.empty(layout.nnz, dtype=q.dtype, device=q.device)
        ops.sddmm(layout.crow, layout.col, q, k, s, scale, 0.0)  # scores on edges
        a_vals = edge_softmax_(s, layout)  # in place: s now holds the attention weights
        out, hops, residual = forward_hops(ops, layout, a_vals, v, rec, n_hops, tol)
        if layout.empty_rows is not None:
            out.index_fill_(0, layout.empty_rows, 0.0)
        ctx.save_for_backward(q, k, v, a_vals)
        ctx.layout, ctx.rec, ctx.hops, ctx.scale, ctx.ops = layout, rec, hops, scale, ops
        record_stats(
            DiffusionStats(
                rec.method, hops, residual, None if tol is None or residual is None else residual < tol
            )
        )
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        """Gradients of ``q``, ``k``, ``v`` (hop outputs recomputed, see the module docstring)."""
        q, k, v, a_vals = ctx.saved_tensors
        layout: HeadLayout = ctx.layout
        rec: Recurrence = ctx.rec
        ops: TorchOps = ctx.ops
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
        inputs = reverse_hop_inputs(ops, layout, a_vals, x0, v, rec, n_hops) if need_qk else None

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
