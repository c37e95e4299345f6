"""Geneformer-style (BERT) backbone whose self-attention is graph-diffusion attention.

Module names follow Hugging Face ``BertModel`` (``embeddings.word_embeddings``, ``…position_embeddings``,
``…token_type_embeddings``, ``…LayerNorm``, ``encoder.layer.{i}.attention.output.LayerNorm``,
``…intermediate.dense``, ``…output.dense``, ``…output.LayerNorm``) so that a Geneformer checkpoint maps
onto it key by key, except the attention: BERT's separate ``attention.self.query/key/value`` are packed
into ``attention.self.Wqkv`` and ``attention.output.dense`` becomes ``attention.self.out_proj`` of
:class:`~genohoption.nn.GraphDiffusionAttention` (done by :mod:`genohoption.model._pretrained`).

Sources: Devlin et al., "BERT" (2019) and Hugging Face ``transformers`` ``modeling_bert.py`` (post-LN
layer equations); Theodoris et al., "Transfer learning enables predictions in network biology",
Nature 2023 (Geneformer: rank-value encoded genes, absolute position embeddings; cell embedding as its
``EmbExtractor``: mean of the gene tokens or ``<cls>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import GraphDiffusionAttention
from ._graph import BatchGraph

__all__ = ["GeneformerBackbone", "GeneformerLayer"]

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


class _Embeddings(nn.Module):
    def __init__(self, vocab_size, hidden, max_pos, type_vocab, eps, dropout, pad_id):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class _AddNorm(nn.Module):
    """BERT's ``…output``: ``LayerNorm(dropout(dense(h)) + residual)``; ``dense`` optional."""

    def __init__(self, d_in, hidden, eps, dropout, dense: bool = True):
        super().__init__()
        if dense:
            self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "dense"):
            h = self.dense(h)
        return self.LayerNorm(self.dropout(h) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden, n_heads, eps, dropout, attn_kwargs):
        super().__init__()
        self.self = GraphDiffusionAttention(hidden, n_heads, **attn_kwargs)  # out_proj = BERT output.dense
        self.output = _AddNorm(hidden, hidden, eps, dropout, dense=False)

    def forward(self, x, graph, padding_mask):
        return self.output(self.self(x, graph, padding_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden, inter, act):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)
        self.act = _ACTIVATIONS[act]

    def forward(self, x):
        return self.act(self.dense(x))


class GeneformerLayer(nn.Module):
    """Post-LN BERT layer with graph-diffusion attention (the Graph2Seq step of Cheng et al.).

    ``h = LN(x + dropout(out_proj(Attn(x))))``; ``y = LN(h + dropout(W_o act(W_i h)))``.
    """

    def __init__(self, hidden, n_heads, inter, eps, dropout, act, attn_kwargs):
        super().__init__()
        self.attention = _Attention(hidden, n_heads, eps, dropout, attn_kwargs)
        self.intermediate = _Intermediate(hidden, inter, act)
        self.output = _AddNorm(inter, hidden, eps, dropout)

    def forward(self, x, graph, padding_mask):
        h = self.attention(x, graph, padding_mask)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class GeneformerBackbone(nn.Module):
    """Geneformer (BERT) encoder on rank-value encoded genes, attention swapped for graph diffusion.

    Input tokens are the cell's genes in decreasing order of median-scaled expression
    (:func:`~genohoption.data.rank_value_encode`); gene indices (into ``n_vars``) are mapped to the
    checkpoint's vocabulary by the buffer ``gene_to_token``. The cell embedding is read from a layer's
    outputs by :meth:`cell_embedding`: the mean of the gene tokens' outputs or the ``<cls>`` output, as
    Geneformer's ``EmbExtractor`` (``emb_mode="cell"`` / ``"cls"``).

    Parameters
    ----------
    gene_to_token
        ``(n_genes,)`` int64: vocabulary id of each gene, ``-1`` for genes outside the vocabulary
        (they are never tokens).
    gene_medians
        ``(n_genes,)`` float: Geneformer's non-zero median of each gene (``gene_median_dictionary.pkl``);
        ``NaN`` where unknown. Kept in float64 (the dictionary's precision), so that genes rank as in
        Geneformer's tokenizer.
    vocab_size, hidden_size, num_attention_heads, num_hidden_layers, intermediate_size
        BERT sizes (``config.json``; Geneformer V1 6-layer: 25,426, 256, 4, 6, 512).
    max_position_embeddings
        Model input size (V1: 2,048; V2: 4,096).
    type_vocab_size
        Token-type embeddings (only type 0 is used).
    layer_norm_eps
        LayerNorm epsilon (BERT: 1e-12).
    hidden_act
        ``"relu"`` (Geneformer V1), ``"gelu"`` (V2), ``"gelu_new"``, ``"silu"``.
    dropout
        Hidden dropout probability (attention-probability dropout is not applied).
    pad_token_id
        Vocabulary id of ``<pad>`` (0).
    cls_token_id, eos_token_id
        Ids of ``<cls>`` / ``<eos>`` (Geneformer V2); ``None`` for V1 (no special tokens).
    attention, n_hops, alpha, t, normalize
        See :class:`~genohoption.nn.GraphDiffusionAttention`.

    Raises
    ------
    ValueError
        Unknown ``hidden_act`` or ``attention``, or ``hidden_size`` not divisible by the heads.
    """

    def __init__(
        self,
        gene_to_token: torch.Tensor,
        gene_medians: torch.Tensor,
        *,
        vocab_size: int,
        hidden_size: int = 256,
        num_attention_heads: int = 4,
        num_hidden_layers: int = 6,
        intermediate_size: int = 512,
        max_position_embeddings: int = 2048,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "relu",
        dropout: float = 0.02,
        pad_token_id: int = 0,
        cls_token_id: int | None = None,
        eos_token_id: int | None = None,
        attention: str = "ppr",
        n_hops: int = 6,
        alpha: float = 0.25,
        t: float = 5.0,
        normalize: bool = False,
    ):
        super().__init__()
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}.")
        if (cls_token_id is None) != (eos_token_id is None):
            raise ValueError("Give both cls_token_id and eos_token_id (Geneformer V2) or neither (V1).")
        self.d_model = hidden_size
        self.hidden_act = hidden_act
        self.max_len = max_position_embeddings
        self.pad_id, self.cls_id, self.eos_id = pad_token_id, cls_token_id, eos_token_id
        self.register_buffer("gene_to_token", gene_to_token.to(torch.int64).clone())
        self.register_buffer("gene_medians", gene_medians.to(torch.float64).clone())  # ranks as Geneformer's
        attn = {"attention": attention, "n_hops": n_hops, "alpha": alpha, "t": t, "normalize": normalize}
        self.embeddings = _Embeddings(vocab_size, hidden_size, max_position_embeddings, type_vocab_size,
                                      layer_norm_eps, dropout, pad_token_id)
        self.encoder = _Encoder(
            [GeneformerLayer(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps, dropout,
                             hidden_act, attn) for _ in range(num_hidden_layers)]
        )

    @property
    def special_tokens(self) -> bool:
        """Whether sequences carry ``<cls>`` and ``<eos>`` (Geneformer V2)."""
        return self.cls_id is not None

    def token_ids(self, genes: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Map gene indices to vocabulary ids, ``(B, L)``.

        ``-1`` is padding (or ``<cls>`` at position 0 when :attr:`special_tokens`), ``n_genes`` is
        ``<eos>``.
        """
        n_genes = self.gene_to_token.numel()
        ids = self.gene_to_token[genes.clamp(0, n_genes - 1)]
        ids = torch.where(padding_mask | (genes < 0) | (ids < 0), torch.full_like(ids, self.pad_id), ids)
        if self.special_tokens:
            ids = torch.where(genes == n_genes, torch.full_like(ids, self.eos_id), ids)
            ids[:, 0] = self.cls_id
        return ids

    def forward(
        self,
        genes: torch.Tensor,
        values: torch.Tensor | None,
        padding_mask: torch.Tensor,
        graph: BatchGraph | None,
        *,
        all_layers: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encode rank-ordered gene tokens.

        Parameters
        ----------
        genes
            ``(B, L)`` gene indices in rank order (see :func:`~genohoption.data.rank_value_encode`).
        values
            Ignored (the rank is the value); accepted for a common backbone signature.
        padding_mask
            ``(B, L)`` bool, ``True`` at padding.
        graph
            Induced batch graph; ``None`` only for ``attention="dense"``.
        all_layers
            Return the outputs of the embeddings and of every layer (Hugging Face's ``hidden_states``).

        Returns
        -------
        ``(B, L, hidden_size)`` token outputs of the last layer; with ``all_layers``, a list of
        ``num_hidden_layers + 1`` of them (embeddings first, last layer last).

        Raises
        ------
        ValueError
            If ``L`` exceeds ``max_position_embeddings``.
        """
        if genes.shape[1] > self.max_len:
            raise ValueError(f"sequence length {genes.shape[1]} exceeds max_position_embeddings={self.max_len}.")
        x = self.embeddings(self.token_ids(genes, padding_mask))
        hidden = [x]
        for layer in self.encoder.layer:
            x = layer(x, graph, padding_mask)
            if all_layers:
                hidden.append(x)
        return hidden if all_layers else x

    def cell_embedding(self, h: torch.Tensor, genes: torch.Tensor, padding_mask: torch.Tensor,
                       mode: str = "cell") -> torch.Tensor:
        """Cell embedding ``(B, hidden_size)`` from a layer's outputs ``h`` ``(B, L, hidden_size)``.

        ``mode="cell"``: mean of the gene tokens' outputs, special tokens and padding excluded (Geneformer's
        ``mean_nonpadding_embs``); ``"cls"``: the ``<cls>`` token's output (V2 only).

        Raises
        ------
        ValueError
            For ``mode="cls"`` without a ``<cls>`` token, or an unknown ``mode``.
        """
        if mode == "cls":
            if not self.special_tokens:
                raise ValueError("emb_mode='cls' needs a <cls> token (Geneformer V2); this backbone has none: "
                                 "use emb_mode='cell'.")
            return h[:, 0]
        if mode != "cell":
            raise ValueError(f"mode={mode!r} is unknown; use 'cell' or 'cls'.")
        is_gene = ~padding_mask & (genes >= 0) & (genes < self.gene_to_token.numel())
        w = is_gene.to(h.dtype)
        return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
