"""Turn expression rows into token sequences (vectorised, no per-cell loop)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

PAD = -1
"""Gene index used for padding positions in :attr:`Tokens.genes`."""


@dataclass
class Tokens:
    """A batch of cells as gene-token sequences.

    Attributes
    ----------
    genes
        ``(B, L)`` int64 gene indices into ``var_names`` (``0 … n_vars - 1``); ``-1`` marks padding.
        With a CLS token, position 0 holds ``-1`` too (it is not a gene); use :attr:`padding_mask`.
    values
        ``(B, L)`` float expression values of the tokens (0 for CLS and padding).
    padding_mask
        ``(B, L)`` bool, ``True`` where the position is padding.
    """

    genes: torch.Tensor
    values: torch.Tensor
    padding_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real (non-padding) tokens per cell, ``(B,)``."""
        return (~self.padding_mask).sum(1)


def tokenize(
    x: torch.Tensor,
    max_seq_len: int | None,
    *,
    cls_token: bool = True,
    sample: bool = False,
    force: torch.Tensor | None = None,
    include_zero: bool = False,
    candidates: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    score: torch.Tensor | None = None,
) -> Tokens:
    """Select each cell's expressed genes as a token sequence.

    The genes of a cell are its non-zero entries (scGPT's ``include_zero_gene=False``). When a cell
    expresses more than ``max_seq_len - 1`` genes (one position goes to CLS), either a uniform random
    subset is kept (``sample=True``, scGPT's training behaviour) or the most highly expressed ones
    (``sample=False``, deterministic, used for inference). Kept genes appear in increasing gene
    index; padding goes to the end of each row. The sequence length of the batch is the longest cell,
    capped at ``max_seq_len``.

    Parameters
    ----------
    x
        ``(B, n_vars)`` dense expression, non-negative.
    max_seq_len
        Maximum sequence length including the CLS token, at least 2; ``None``: no cap (every kept gene
        of the cell is a token).
    cls_token
        Put a CLS token at position 0 of every row.
    sample
        Random (``True``) or top-expressed (``False``) subset when a cell has too many genes.
    force
        Optional ``(B, n_vars)`` bool; genes set here are always kept, even when not expressed
        (used for perturbed genes).
    include_zero
        Treat every gene as a candidate token, expressed or not (scGPT's ``include_zero_gene="all"``,
        used for perturbation prediction, where unexpressed genes still need a predicted value). The
        default ``False`` keeps only expressed (and forced) genes.
    candidates
        Optional ``(n_vars,)`` or ``(B, n_vars)`` bool: only these genes can be tokens (e.g. the genes
        of a pretrained vocabulary), expressed or not; forced genes are kept regardless.
    generator
        Random generator for ``sample=True``.
    score
        Optional ``(B, n_vars)`` selection score that replaces the two rules above: the genes with the
        highest score are kept (e.g. :meth:`TokenRandom.subset_score`, scGPT's random subset).

    Returns
    -------
    :class:`Tokens` with ``(B, L)`` tensors, ``L ≤ max_seq_len``.

    Raises
    ------
    ValueError
        If ``max_seq_len < 2`` or ``x`` is not 2-D.
    """
    if max_seq_len is not None and max_seq_len < 2:
        raise ValueError(f"max_seq_len must be at least 2 (one CLS and one gene token), got {max_seq_len}.")
    if x.ndim != 2:
        raise ValueError(f"x must be (B, n_vars), got shape {tuple(x.shape)}.")
    n_cells, n_vars = x.shape
    keep = torch.ones_like(x, dtype=torch.bool) if include_zero else x > 0
    if candidates is not None:
        keep = keep & candidates.to(device=x.device, dtype=torch.bool)
    if force is not None:
        keep = keep | force
    n_gene_slots = n_vars if max_seq_len is None else min(max_seq_len - int(cls_token), n_vars)
    n_keep = int(keep.sum(1).max()) if n_cells else 0
    n_gene_slots = max(min(n_gene_slots, n_keep), 1)
    if score is not None:
        score = score.to(device=x.device, dtype=torch.float32).clone()
    elif sample:
        score = torch.rand(x.shape, generator=generator, device=x.device)
    else:
        score = x.float().clone()
    if force is not None:
        # forced genes win the selection
        score = torch.where(force, torch.full_like(score, float("inf")), score)
    score = torch.where(keep, score, torch.full_like(score, float("-inf")))
    top_score, idx = torch.topk(score, n_gene_slots, dim=1, sorted=False)
    valid = top_score > float("-inf")
    # order kept genes by index, padding last
    idx = torch.where(valid, idx, torch.full_like(idx, n_vars))
    idx, _ = torch.sort(idx, dim=1)
    valid = idx < n_vars
    genes = torch.where(valid, idx, torch.full_like(idx, PAD))
    values = torch.gather(x, 1, idx.clamp(max=n_vars - 1)) * valid
    pad = ~valid
    if cls_token:
        genes = torch.cat([torch.full_like(genes[:, :1], PAD), genes], 1)
        values = torch.cat([torch.zeros_like(values[:, :1]), values], 1)
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], 1)
    return Tokens(genes=genes, values=values.to(x.dtype), padding_mask=pad)


@dataclass
class TokenRandom:
    """Random draws of the scGPT tokenization at inference, reproducible from one seed, in scGPT's order.

    scGPT's embedding pipeline (``scgpt.tasks.get_batch_cell_embeddings`` with its ``DataCollator``)
    draws, cell after cell: the tie-breaking uniforms of ``scgpt.preprocess._digitize`` from NumPy's
    global generator (one per expressed gene of the vocabulary, in gene order), and, for a cell with more
    genes than fit, its random subset with :func:`torch.randperm` from torch's global generator. This
    object holds the same two streams, seeded with ``seed``: a :class:`numpy.random.RandomState` and a
    CPU :class:`torch.Generator`; used for one pass over the cells in order, it gives what scGPT gives
    after ``numpy.random.seed(seed)`` / ``torch.manual_seed(seed)`` in one process (no data-loader
    workers), whatever the minibatch size.

    Parameters
    ----------
    seed
        Seed of both streams.

    Attributes
    ----------
    numpy_state
        The NumPy stream (tie-breaking uniforms).
    generator
        The torch stream (gene subsets).
    """

    seed: int
    numpy_state: np.random.RandomState = field(init=False, repr=False)
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.numpy_state = np.random.RandomState(int(self.seed))
        self.generator = torch.Generator().manual_seed(int(self.seed))

    def uniform_at(self, mask: torch.Tensor) -> torch.Tensor:
        """Return ``(B, n_vars)`` float64 uniforms in ``[0, 1)`` at the ``True`` entries of ``mask``, 0 elsewhere.

        One draw per entry, row after row, in column order (as scGPT bins cell after cell).
        """
        flat = mask.detach().cpu().reshape(-1)
        out = torch.zeros(flat.shape, dtype=torch.float64)
        out[flat] = torch.from_numpy(self.numpy_state.random_sample(int(flat.sum())))
        return out.reshape(mask.shape).to(mask.device)

    def subset_score(self, keep: torch.Tensor, n_slots: int) -> torch.Tensor:
        """``(B, n_vars)`` selection score: 1 for the genes a cell keeps, 0 for the others.

        A cell with at most ``n_slots`` candidate genes (``keep``) keeps them all; a cell with more keeps
        ``randperm(n)[:n_slots]`` of its ``n`` candidates in gene order (scGPT's ``DataCollator._sample``).
        """
        keep_cpu = keep.detach().cpu()
        out = keep_cpu.to(torch.float32)
        for i in torch.nonzero(keep_cpu.sum(1) > n_slots).flatten().tolist():
            idx = torch.nonzero(keep_cpu[i]).flatten()
            chosen = idx[torch.randperm(idx.numel(), generator=self.generator)[:n_slots]]
            out[i] = 0.0
            out[i, chosen] = 1.0
        return out.to(keep.device)
