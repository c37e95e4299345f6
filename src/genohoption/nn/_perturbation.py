"""Perturbation building blocks: the perturbation-flag embedding (scGPT ``pert_encoder``)."""

from __future__ import annotations

import torch
from torch import nn

PERT_FLAG_PAD = 2
"""Flag of padding tokens in :class:`PerturbationEncoder` (0 = not perturbed, 1 = perturbed)."""


class PerturbationEncoder(nn.Module):
    """Embed per-token perturbation flags (scGPT ``pert_encoder``, Cui et al. 2024).

    An :class:`~torch.nn.Embedding` with three rows: 0 = not perturbed, 1 = perturbed, 2 = padding
    (zero vector, no gradient). Its output is added to the gene and value embeddings of every token, so a
    knocked-down gene's token carries the perturbation into the attention layers.

    Parameters
    ----------
    d_model
        Embedding width.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(3, d_model, padding_idx=PERT_FLAG_PAD)

    def forward(self, flags: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, L)`` integer flags into ``(B, L, d_model)``."""
        return self.embedding(flags.long())
