"""Encode cells through a module's backbone the way the module itself does at inference (no head)."""

from __future__ import annotations

import torch

from ..data._tokenize import Tokens
from ..nn import BatchGraph
from ._annotation import AnnotationModule
from ._batch import batch_index_for, gene_tokens
from ._inputs import backbone_graph, backbone_tokens, cell_embedding
from ._pretraining import PretrainingModule

ENCODABLE = (AnnotationModule, PretrainingModule)
"""Modules whose backbone reads expression rows directly (annotation and pretraining models)."""


def check_encodable(module: torch.nn.Module, what: str) -> None:
    """Raise a ``TypeError`` naming the fix unless ``module`` is an annotation or pretraining module."""
    if not isinstance(module, ENCODABLE):
        raise TypeError(
            f"{what} needs a model that encodes cells from their expression (set up with labels_key= for "
            "annotation, or labels_key=None for pretraining); perturbation models encode control cells together "
            "with the perturbation: pretrain a model on the control cells instead."
        )


def encode_cells(module: torch.nn.Module, x: torch.Tensor,
                 batch_index: torch.Tensor | None = None) -> tuple[torch.Tensor, Tokens, BatchGraph | None]:
    """Token outputs of ``(B, n_genes)`` expression rows, tokenized as the module does in evaluation mode.

    ``batch_index`` ``(B,)``: the cells' batch codes, required by a model set up with ``batch_key`` (its
    domain-specific input normalisation reads them). The conventions' random draws (ties, genes kept above
    ``max_seq_len``) come from new streams seeded with ``conventions.seed`` at each call.

    Returns
    -------
    ``(h, tokens, graph)``: ``(B, L, d_model)`` token outputs, the tokens (gene index per position, ``-1``
    at CLS and padding) and the induced batch graph (``None`` for dense attention).
    """
    check_encodable(module, "encode_cells")
    bb = module.backbone
    tokens = backbone_tokens(bb, x.float(), module.max_seq_len, sample=False,
                             include_zero=getattr(module, "include_zero", False), conventions=module.conventions)
    graph = None
    if module.attention != "dense":
        graph = backbone_graph(bb, tokens, module.graph_indptr, module.graph_indices)
    batch_index = batch_index_for(module, batch_index, x.shape[0])
    norm = None if module.batch is None else module.batch.input_norm(batch_index, gene_tokens(tokens))
    if norm is None:
        return bb(tokens.genes, tokens.values, tokens.padding_mask, graph), tokens, graph
    return bb(tokens.genes, tokens.values, tokens.padding_mask, graph, input_norm=norm), tokens, graph


def module_forward(module: torch.nn.Module, x: torch.Tensor, batch_index: torch.Tensor | None = None):
    """Run the module's own evaluation forward pass on expression rows (pretraining: nothing hidden)."""
    if isinstance(module, PretrainingModule):
        return module(x, mask=False, batch_index=batch_index)
    return module(x, batch_index=batch_index)


def backbone_cell_embedding(module: torch.nn.Module, h: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """Return the backbone's cell embedding ``(B, d_model)``: CLS output (scGPT) or mean of gene tokens (Geneformer)."""
    return cell_embedding(module.backbone, h, tokens, module.conventions.emb_mode)
