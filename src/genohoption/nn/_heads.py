"""Task heads on top of the backbone."""

from __future__ import annotations

import torch
from torch import nn


class ClsDecoder(nn.Module):
    """Cell-type classifier on the CLS embedding (scGPT ``ClsDecoder``).

    ``n_layers - 1`` blocks of ``Linear → ReLU → LayerNorm`` then ``out_layer``.

    Parameters
    ----------
    d_model
        Input width.
    n_classes
        Number of cell types.
    n_layers
        Number of linear layers including the output layer (scGPT ``n_layers_cls``, default 3).
    input_norm
        Standardise the cell embedding across the batch first (:class:`~torch.nn.BatchNorm1d`, running
        statistics at inference). Not in scGPT: a model trained from scratch starts with CLS embeddings
        that differ between cells by ~1% of their norm (the CLS token's own, shared, embedding dominates
        the residual), which left a plain head stuck at the majority class for many epochs; standardising
        lets the head use those differences from the first step.
    """

    def __init__(self, d_model: int, n_classes: int, n_layers: int = 3, input_norm: bool = False):
        super().__init__()
        self.input_norm = nn.BatchNorm1d(d_model) if input_norm else nn.Identity()
        blocks: list[nn.Module] = []
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(d_model, d_model), nn.ReLU(), nn.LayerNorm(d_model)]
        self._decoder = nn.ModuleList(blocks)
        self.out_layer = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, d_model)`` to logits ``(B, n_classes)``."""
        x = self.input_norm(x)
        for block in self._decoder:
            x = block(x)
        return self.out_layer(x)
