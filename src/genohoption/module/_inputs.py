"""Backbone construction and per-backbone tokenization for the modules (scGPT and Geneformer)."""

from __future__ import annotations

import torch
from torch import nn

from .._constants import BACKBONES
from ..data import Tokens, bin_values, rank_value_encode, tokenize
from ..nn import BatchGraph, GeneformerBackbone, ScGPTBackbone, induced_batch_graph

# ScGPTBackbone / GeneformerBackbone arguments that a pretrained checkpoint fixes (see model._pretrained)
_SCGPT_ARCH = ("d_model", "n_heads", "n_layers", "d_hid", "n_tokens", "cls_id", "pad_id", "input_emb_style",
               "n_input_bins", "pad_value")
_GENEFORMER_ARCH = ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act", "pad_token_id",
                    "cls_token_id", "eos_token_id")
_ATTENTION_ARGS = ("attention", "n_hops", "alpha", "t", "normalize")


def build_backbone(n_genes: int, backbone: str, config: dict | None, kwargs: dict) -> nn.Module:
    """Build the backbone module.

    Parameters
    ----------
    n_genes
        Number of genes (``n_vars``).
    backbone
        ``"scgpt"`` or ``"geneformer"``.
    config
        Architecture of a pretrained checkpoint (:attr:`~genohoption.model.PretrainedCheckpoint.backbone_config`);
        ``None`` for a model trained from scratch, sized by ``kwargs``. The vocabulary buffers
        (``gene_to_token``, ``gene_medians``) are placeholders until the pretrained weights or a saved
        state are loaded.
    kwargs
        ``d_model``, ``n_heads``, ``n_layers``, ``d_hid``, ``dropout`` and the attention arguments.

    Raises
    ------
    ValueError
        For an unknown ``backbone``.
    """
    attn = {k: kwargs[k] for k in _ATTENTION_ARGS if k in kwargs}
    dropout = kwargs.get("dropout", 0.1)
    if backbone == "scgpt":
        if config is None:
            return ScGPTBackbone(n_genes, **{k: v for k, v in kwargs.items() if k != "max_seq_len"})
        arch = {k: config[k] for k in _SCGPT_ARCH}
        return ScGPTBackbone(n_genes, dropout=dropout, gene_to_token=torch.full((n_genes,), -1), **arch, **attn)
    if backbone == "geneformer":
        if config is None:  # from scratch: own vocabulary (<pad> = 0, genes 1…n), plain normalised ranks
            config = {
                "vocab_size": n_genes + 1, "hidden_size": kwargs.get("d_model", 64),
                "num_attention_heads": kwargs.get("n_heads", 4), "num_hidden_layers": kwargs.get("n_layers", 2),
                "intermediate_size": kwargs.get("d_hid", 128),
                "max_position_embeddings": kwargs.get("max_seq_len") or n_genes + 2,
                "type_vocab_size": 1, "layer_norm_eps": 1e-12, "hidden_act": "relu", "pad_token_id": 0,
                "cls_token_id": None, "eos_token_id": None,
            }
            g2t, medians = torch.arange(1, n_genes + 1), torch.ones(n_genes)
        else:
            g2t, medians = torch.full((n_genes,), -1), torch.full((n_genes,), float("nan"))
        arch = {k: config[k] for k in _GENEFORMER_ARCH}
        return GeneformerBackbone(g2t, medians, dropout=dropout, **arch, **attn)
    raise ValueError(f"backbone={backbone!r} is not available; use one of {BACKBONES}.")


def backbone_tokens(
    backbone: nn.Module,
    x: torch.Tensor,
    max_seq_len: int | None,
    *,
    sample: bool,
    n_bins: int | None = None,
    include_zero: bool = False,
) -> Tokens:
    """Tokenize ``(B, n_genes)`` expression rows the way the backbone was trained.

    scGPT: the cell's expressed genes that are in the vocabulary (``include_zero=True``: every gene of
    the vocabulary, expressed or not, scGPT's ``include_zero_gene="all"``), CLS first
    (:func:`~genohoption.data.tokenize`), values binned per cell when ``n_bins`` is given
    (:func:`~genohoption.data.bin_values`, scGPT ``input_style="binned"``). Geneformer: rank-value
    encoding (:func:`~genohoption.data.rank_value_encode`) truncated to ``min(max_seq_len, max_position_embeddings)``
    (``max_seq_len=None``: every expressed gene for scGPT, ``max_position_embeddings`` for Geneformer).
    """
    if isinstance(backbone, GeneformerBackbone):
        if include_zero:
            raise ValueError(
                "Geneformer ranks the genes a cell expresses: every gene as a token (gene_tokens='all') applies "
                "to the scGPT backbone only."
            )
        special = backbone.special_tokens
        length = backbone.max_len if max_seq_len is None else min(max_seq_len, backbone.max_len)
        return rank_value_encode(x, backbone.gene_medians, length,
                                 cls_token=special, eos_token=special)
    in_vocab = None
    if backbone.gene_to_token is not None:
        in_vocab = backbone.gene_to_token >= 0
        x = x * in_vocab.to(x.dtype)
    tokens = tokenize(x, max_seq_len, cls_token=True, sample=sample, include_zero=include_zero,
                      candidates=in_vocab if include_zero else None)
    if n_bins:
        binned = bin_values(x, n_bins)
        is_gene = tokens.genes >= 0
        tokens.values = torch.gather(binned, 1, tokens.genes.clamp(min=0)) * is_gene
    return tokens


def backbone_graph(backbone: nn.Module, tokens: Tokens, indptr: torch.Tensor, indices: torch.Tensor) -> BatchGraph:
    """Induce the gene graph on the tokens; ``<eos>`` (gene index ``n_genes``) gets its own empty graph row."""
    cls_token = not isinstance(backbone, GeneformerBackbone) or backbone.special_tokens
    if isinstance(backbone, GeneformerBackbone) and backbone.special_tokens:
        indptr = torch.cat([indptr, indptr[-1:]])
    return induced_batch_graph(tokens.genes, indptr, indices, cls_token=cls_token)


def cell_embedding(backbone: nn.Module, h: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """CLS output (scGPT) or mean of the gene tokens' outputs (Geneformer), ``(B, d_model)``."""
    if isinstance(backbone, GeneformerBackbone):
        return backbone.cell_embedding(h, tokens.genes, tokens.padding_mask)
    return h[:, 0]
