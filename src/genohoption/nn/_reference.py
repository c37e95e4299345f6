"""Dense reference of the graph-diffusion attention (the test oracle of the sparse engine)."""

from __future__ import annotations

import math

import torch

from ._recurrence import check_params

__all__ = ["dense_diffusion_reference"]


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
    """Dense (``L x L``) reference of :func:`~genohoption.nn.graph_diffusion_attention`; the test oracle.

    Parameters
    ----------
    q, k, v
        ``(B, H, L, d)``.
    mask
        ``(B, L, L)`` bool, ``mask[b, i, j]`` = token ``i`` attends to token ``j``
        (e.g. :meth:`~genohoption.nn.BatchGraph.to_dense_mask`).
    method, n_hops, alpha, t, normalize
        As in :func:`~genohoption.nn.graph_diffusion_attention` (eqs. 4, 6-8, 10).

    Returns
    -------
    ``(B, H, L, d)``; rows whose mask row has no ``True`` are 0. Differentiable by plain autograd.
    Memory ``O(B H L^2)``.

    Raises
    ------
    ValueError
        Bad parameters or shapes.
    """
    check_params(method, n_hops, alpha, t)
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
