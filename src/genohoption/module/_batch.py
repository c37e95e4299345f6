"""The batch parts of the task modules (annotation, pretraining): construction and inputs."""

from __future__ import annotations

import torch
from torch import nn

from ..data._tokenize import Tokens
from ..nn import AdversarialDiscriminator, BatchInputs, ScGPTBackbone
from ..nn._batch import adversarial_batch_loss, batch_parts


def build_batch_inputs(backbone: nn.Module, n_batches: int, batch_representation: str | None) -> BatchInputs | None:
    """Build the :class:`~genohoption.nn.BatchInputs` of a model with ``n_batches`` training batches, or ``None``.

    ``"token"``: a batch embedding; ``"dsbn"``: domain-specific normalisation of the input embeddings (scGPT
    backbone; the Geneformer backbone has no such input). ``None`` without batches or without either part.

    Raises
    ------
    ValueError
        For an unknown ``batch_representation``.
    """
    token, dsbn = batch_parts(batch_representation)
    dsbn = dsbn and isinstance(backbone, ScGPTBackbone)
    if not n_batches or not (token or dsbn):
        return None
    return BatchInputs(n_batches, backbone.d_model, token=token, dsbn=dsbn)


def build_discriminator(d_in: int, n_batches: int, batch_adversarial: float) -> AdversarialDiscriminator | None:
    """Build an adversarial batch discriminator on ``d_in``-wide cell embeddings when ``batch_adversarial > 0``.

    Raises
    ------
    ValueError
        For a negative weight, or a positive weight with fewer than two batches.
    """
    if not batch_adversarial:
        return None
    if batch_adversarial < 0:
        raise ValueError(f"batch_adversarial must be >= 0, got {batch_adversarial!r}.")
    if n_batches < 2:
        raise ValueError(f"batch_adversarial={batch_adversarial} needs at least two batches, got {n_batches}.")
    return AdversarialDiscriminator(d_in, n_batches)


def batch_index_for(module: nn.Module, batch_index: torch.Tensor | None, n_cells: int) -> torch.Tensor | None:
    """Check the ``(B,)`` batch codes given to a module's forward; ``None`` when the module has no batch part.

    Raises
    ------
    ValueError
        If the module has batch parts and no codes are given, or their number is not ``n_cells``.
    """
    if module.n_batches == 0:
        return None
    if batch_index is None:
        raise ValueError("This model was set up with batch_key: pass each cell's batch code (batch_index).")
    batch_index = batch_index.reshape(-1).long()
    if batch_index.shape[0] != n_cells:
        raise ValueError(f"batch_index has {batch_index.shape[0]} codes for {n_cells} cells.")
    return batch_index


def gene_tokens(tokens: Tokens) -> torch.Tensor:
    """``(B, L)`` bool: the gene tokens (not CLS, not padding), those the input normalisation sees."""
    return ~tokens.padding_mask & (tokens.genes >= 0)


def adversarial_loss(module: nn.Module, outputs: dict[str, torch.Tensor],
                     batch_index: torch.Tensor | None) -> torch.Tensor | None:
    """Weighted adversarial batch loss ``batch_adversarial * CE(batch_logits, batch)``, or ``None`` without one."""
    if "batch_logits" not in outputs or batch_index is None:
        return None
    return module.batch_adversarial * adversarial_batch_loss(outputs["batch_logits"], batch_index)
