"""Multi-head graph-diffusion attention layer with scGPT's parameter names (GenoHoption, eqs. 1, 4, 6-8, 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._backends import check_backend
from ._functional import graph_diffusion_attention
from ._graph import BatchGraph
from ._recurrence import METHODS, check_params
from ._stats import DiffusionStats, last_diffusion_stats

__all__ = ["MODULE_ATTENTIONS", "GraphDiffusionAttention"]

MODULE_ATTENTIONS = (*METHODS, "dense")
"""Attention kinds of :class:`GraphDiffusionAttention`."""


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
        check_params(attention, n_hops, alpha, t, MODULE_ATTENTIONS)
        check_backend(backend)
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
