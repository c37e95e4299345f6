"""Task heads on top of the backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_NORMS = ("batch", "layer", None)
"""Normalisations of :class:`ClsDecoder`'s input."""


class CellBatchNorm1d(nn.BatchNorm1d):
    """:class:`~torch.nn.BatchNorm1d` that also takes a minibatch of one cell.

    In training, a minibatch of one cell has no batch statistics (PyTorch raises "Expected more than 1
    value per channel"); it is then normalised with the running statistics, which it does not update.
    Larger minibatches and evaluation behave exactly as :class:`~torch.nn.BatchNorm1d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, C)``."""
        if self.training and x.shape[0] == 1 and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ClsDecoder(nn.Module):
    """Cell-type classifier on the cell embedding (scGPT ``ClsDecoder``).

    An optional normalisation of the input, then ``n_layers - 1`` blocks of
    ``Linear → ReLU → LayerNorm`` and ``out_layer`` (scGPT, Cui et al. 2024).

    Parameters
    ----------
    d_model
        Input width.
    n_classes
        Number of cell types.
    n_layers
        Number of linear layers including the output layer (scGPT ``n_layers_cls``, default 3).
    input_norm
        Normalisation of the cell embedding before the first layer: ``"batch"`` (default;
        :class:`CellBatchNorm1d`, standardises each feature across cells, running statistics at
        inference), ``"layer"`` (:class:`~torch.nn.LayerNorm`, per cell) or ``None`` (none, as scGPT).
        ``True`` / ``False`` are read as ``"batch"`` / ``None``. A model trained from scratch starts with
        cell embeddings that differ between cells by a small fraction of their norm (the CLS token's own,
        shared, embedding dominates the residual stream); standardising each feature across cells lets
        the head use those differences from the first step, which a per-cell LayerNorm does not.

    Raises
    ------
    ValueError
        For an unknown ``input_norm``.
    """

    def __init__(self, d_model: int, n_classes: int, n_layers: int = 3, input_norm: str | bool | None = "batch"):
        super().__init__()
        input_norm = {True: "batch", False: None}.get(input_norm, input_norm)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm={input_norm!r} is unknown; choose one of {INPUT_NORMS}.")
        if input_norm == "layer":
            self.input_norm = nn.LayerNorm(d_model)
        elif input_norm == "batch":
            self.input_norm = CellBatchNorm1d(d_model)
        else:
            self.input_norm = nn.Identity()
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
