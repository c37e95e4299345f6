"""Geneformer rank-value encoding (vectorised, no per-cell loop)."""

from __future__ import annotations

import torch

from ._tokenize import PAD, Tokens

__all__ = ["rank_value_encode"]


def rank_value_encode(
    x: torch.Tensor,
    gene_medians: torch.Tensor,
    max_len: int,
    *,
    total_counts: torch.Tensor | None = None,
    target_sum: float = 10_000.0,
    cls_token: bool = False,
    eos_token: bool = False,
) -> Tokens:
    """Rank each cell's genes by median-scaled expression (Geneformer's rank-value encoding).

    ``v = x / total_counts × target_sum / gene_medians``; the genes with ``v > 0`` and a known median
    are ordered by decreasing ``v`` and the first ones kept, as Geneformer's ``TranscriptomeTokenizer``
    (Theodoris et al., Nature 2023; ``rank_genes`` and ``format_cell_features`` of its ``tokenizer.py``):
    ``max_len`` genes for V1 (2,048); V2 (4,096) adds ``<cls>`` in front and ``<eos>`` after the last
    gene, leaving ``max_len - 2`` for genes. ``v`` is computed as Geneformer computes it from float32
    counts and ``n_counts`` (``x / n_counts * target_sum`` in float32, then divided by the float64 median),
    so that the order is Geneformer's bit for bit; genes with exactly equal ``v`` are ordered by gene
    index (Geneformer's ``numpy.argsort`` leaves their order unspecified). One :func:`torch.sort` per
    batch.

    Parameters
    ----------
    x
        ``(B, n_vars)`` raw counts (non-negative).
    gene_medians
        ``(n_vars,)`` non-zero median of each gene's normalised expression over the pretraining corpus
        (``gene_median_dictionary.pkl``); ``NaN``, ``0`` or negative for genes the model does not know,
        which are never tokens.
    max_len
        Model input size including special tokens (Geneformer V1: 2,048; V2: 4,096).
    total_counts
        ``(B,)`` total counts per cell (Geneformer's ``n_counts``, over all genes measured);
        defaults to ``x.sum(1)`` (exact in float32 for integer counts below 2**24). It scales every gene
        of a cell alike, so it changes the order only through rounding.
    target_sum
        Counts per cell after normalisation (Geneformer: 10,000).
    cls_token, eos_token
        Add ``<cls>`` at position 0 / ``<eos>`` after the last gene (Geneformer V2).

    Returns
    -------
    :class:`~genohoption.data.Tokens` with ``(B, L)`` tensors in rank order (highest first):
    ``genes`` are indices into ``n_vars``, ``-1`` at ``<cls>`` and padding, ``n_vars`` at ``<eos>``;
    ``values`` are the scaled values ``v`` (0 at special tokens and padding).

    Raises
    ------
    ValueError
        If ``x`` is not 2-D, shapes disagree, or ``max_len`` leaves no room for a gene.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (B, n_vars), got shape {tuple(x.shape)}.")
    n_cells, n_vars = x.shape
    if gene_medians.shape != (n_vars,):
        raise ValueError(f"gene_medians must have shape ({n_vars},), got {tuple(gene_medians.shape)}.")
    n_special = int(cls_token) + int(eos_token)
    if max_len - n_special < 1:
        raise ValueError(f"max_len={max_len} leaves no room for a gene after {n_special} special token(s).")
    # Geneformer's arithmetic on float32 counts and n_counts: x / n_counts * target_sum in float32, then the
    # division by the (float64) median in float64
    xf = x.float()
    total = xf.sum(1) if total_counts is None else total_counts.to(xf)
    med = gene_medians.to(device=x.device, dtype=torch.float64)
    known = torch.isfinite(med) & (med > 0)
    scaled = xf / total.clamp_min(1e-12).unsqueeze(1) * target_sum
    v = scaled.double() / torch.where(known, med, torch.ones_like(med))
    keep = (xf > 0) & known
    n_slots = max(1, min(max_len - n_special, int(keep.sum(1).max()) if n_cells else 1, n_vars))
    score = torch.where(keep, v, torch.full_like(v, float("-inf")))
    top, idx = torch.sort(score, dim=1, descending=True, stable=True)
    top, idx = top[:, :n_slots], idx[:, :n_slots]
    valid = top > float("-inf")
    genes = torch.where(valid, idx, torch.full_like(idx, PAD))
    values = torch.where(valid, top, torch.zeros_like(top)).float()
    pad = ~valid
    if eos_token:
        # <eos> right after the last gene: append one slot and write it at position n_genes(cell)
        genes = torch.cat([genes, torch.full_like(genes[:, :1], PAD)], 1)
        values = torch.cat([values, torch.zeros_like(values[:, :1])], 1)
        pad = torch.cat([pad, torch.ones_like(pad[:, :1])], 1)
        n_genes = valid.sum(1, keepdim=True)
        genes.scatter_(1, n_genes, n_vars)
        pad.scatter_(1, n_genes, False)
    if cls_token:
        genes = torch.cat([torch.full_like(genes[:, :1], PAD), genes], 1)
        values = torch.cat([torch.zeros_like(values[:, :1]), values], 1)
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], 1)
    return Tokens(genes=genes, values=values, padding_mask=pad)
