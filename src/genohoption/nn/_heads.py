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
    """

    def __init__(self, d_model: int, n_classes: int, n_layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(d_model, d_model), nn.ReLU(), nn.LayerNorm(d_model)]
        self._decoder = nn.ModuleList(blocks)
        self.out_layer = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, d_model)`` to logits ``(B, n_classes)``."""
        for block in self._decoder:
            x = block(x)
        return self.out_layer(x)
