"""scGPT-style backbone whose self-attention is graph-diffusion attention.

Parameter names follow the public scGPT ``TransformerModel`` (``encoder.embedding``,
``encoder.enc_norm``, ``value_encoder.linear1``…, ``transformer_encoder.layers.{i}.self_attn.Wqkv``,
``…out_proj``, ``linear1``, ``linear2``, ``norm1``, ``norm2``) so that official checkpoints map onto
it key by key.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._attention import GraphDiffusionAttention
from ._graph import BatchGraph


class GeneEncoder(nn.Module):
    """Gene-token embedding followed by LayerNorm (scGPT ``GeneEncoder``).

    Parameters
    ----------
    n_tokens
        Vocabulary size (genes plus special tokens).
    d_model
        Embedding width.
    padding_idx
        Token id of ``<pad>``; its embedding is zero and receives no gradient.
    """

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, L)`` token ids into ``(B, L, d_model)``."""
        return self.enc_norm(self.embedding(tokens))


class ContinuousValueEncoder(nn.Module):
    """Encode a scalar expression value per token (scGPT ``ContinuousValueEncoder``).

    ``LayerNorm(Linear(ReLU(Linear(min(x, max_value)))))`` followed by dropout.

    Parameters
    ----------
    d_model
        Output width.
    dropout
        Dropout probability.
    max_value
        Values are clipped at this value before encoding.
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, L)`` values into ``(B, L, d_model)``."""
        x = torch.clamp(values.unsqueeze(-1), max=self.max_value)
        x = self.norm(self.linear2(self.activation(self.linear1(x))))
        return self.dropout(x)


class CategoryValueEncoder(nn.Module):
    """Encode a binned expression value per token (scGPT ``CategoryValueEncoder``).

    ``LayerNorm(Embedding(bin))`` (keys ``value_encoder.embedding``, ``value_encoder.enc_norm``), used by
    scGPT checkpoints with ``input_emb_style="category"``.

    Parameters
    ----------
    n_bins
        Number of embedding rows (scGPT ``n_input_bins``, usually ``n_bins + 2``).
    d_model
        Output width.
    padding_idx
        Bin id of padding (scGPT ``pad_value``); its embedding receives no gradient.
    """

    def __init__(self, n_bins: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(n_bins, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, L)`` bin ids (any dtype; rounded down) into ``(B, L, d_model)``."""
        return self.enc_norm(self.embedding(values.long()))


class ExprDecoder(nn.Module):
    """Per-token expression decoder (scGPT ``ExprDecoder``): ``d → d → d → 1`` with LeakyReLU.

    Keys ``decoder.fc.0``, ``decoder.fc.2``, ``decoder.fc.4`` as in scGPT checkpoints.

    Parameters
    ----------
    d_model
        Width of the hidden layers (and of the input by default).
    d_in
        Input width, when it differs (scGPT's ``use_batch_labels``: the token output concatenated with the
        batch embedding, ``2 * d_model``).
    """

    def __init__(self, d_model: int, d_in: int | None = None):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_in or d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, d_model), nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, L, d_in)`` to predicted values ``(B, L)``."""
        return self.fc(x).squeeze(-1)


class GenoHoptionLayer(nn.Module):
    """Post-LN transformer layer with graph-diffusion attention (the Graph2Seq step of Cheng et al.).

    ``x = norm1(x + dropout1(Attn(x)))``; ``x = norm2(x + dropout2(linear2(dropout(act(linear1(x))))))``,
    as scGPT's and BERT's post-LN layers. ``Attn`` is :class:`GraphDiffusionAttention`.

    Parameters
    ----------
    d_model
        Model width.
    n_heads
        Attention heads; must divide ``d_model``.
    d_hid
        Feed-forward width.
    dropout
        Dropout probability.
    **attention_kwargs
        Passed to :class:`GraphDiffusionAttention` (``attention``, ``n_hops``, ``alpha``, ``t``,
        ``normalize``).
    """

    def __init__(self, d_model: int, n_heads: int, d_hid: int, dropout: float = 0.1, **attention_kwargs):
        super().__init__()
        self.self_attn = GraphDiffusionAttention(d_model, n_heads, **attention_kwargs)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(
        self, x: torch.Tensor, graph: BatchGraph | None, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Apply the layer to ``(B, L, d_model)``."""
        x = self.norm1(x + self.dropout1(self.self_attn(x, graph, padding_mask)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class _LayerStack(nn.Module):
    """Holds ``layers`` so that keys read ``transformer_encoder.layers.{i}`` as in scGPT."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ScGPTBackbone(nn.Module):
    """scGPT-style encoder: gene embedding + value encoder, CLS at position 0, post-LN layers.

    Token ids, from scratch: genes ``0 … n_genes - 1``, then ``<cls>`` = ``n_genes`` and ``<pad>`` =
    ``n_genes + 1``. With a pretrained vocabulary (``gene_to_token`` given): gene ``g`` is token
    ``gene_to_token[g]`` (``-1``: not in the vocabulary, never a token), ``<cls>`` = ``cls_id``,
    ``<pad>`` = ``pad_id``; the embedding then has ``n_tokens`` rows (see
    :func:`genohoption.model.read_pretrained`).

    Parameters
    ----------
    n_genes
        Number of genes (``n_vars`` of the training data).
    d_model
        Model width (scGPT ``embsize``).
    n_heads
        Attention heads (scGPT ``nheads``).
    n_layers
        Transformer layers (scGPT ``nlayers``).
    d_hid
        Feed-forward width (scGPT ``d_hid``).
    dropout
        Dropout probability.
    attention
        ``"ppr"``, ``"heat"``, ``"mask"`` or ``"dense"``.
    n_hops, alpha, t, normalize
        Diffusion parameters (eqs. 6–10 of Cheng et al.; see
        :func:`~genohoption.nn.graph_diffusion_attention`).
    gene_to_token
        ``(n_genes,)`` int64 vocabulary id of each gene (``-1`` = unmatched) of a pretrained vocabulary;
        ``None`` (default) for the from-scratch ids above. Stored as a buffer.
    n_tokens, cls_id, pad_id
        Vocabulary size and ``<cls>`` / ``<pad>`` ids; required with ``gene_to_token``.
    input_emb_style
        ``"continuous"`` (default, :class:`ContinuousValueEncoder`) or ``"category"``
        (:class:`CategoryValueEncoder` over ``n_input_bins`` bins).
    n_input_bins
        Rows of the category value embedding.
    pad_value
        Value given to padding tokens (scGPT ``pad_value``; default 0).
    """

    def __init__(
        self,
        n_genes: int,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_hid: int = 128,
        dropout: float = 0.1,
        attention: str = "ppr",
        n_hops: int = 6,
        alpha: float = 0.25,
        t: float = 5.0,
        normalize: bool = False,
        gene_to_token: torch.Tensor | None = None,
        n_tokens: int | None = None,
        cls_id: int | None = None,
        pad_id: int | None = None,
        input_emb_style: str = "continuous",
        n_input_bins: int | None = None,
        pad_value: float = 0.0,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.d_model = d_model
        self.pad_value = pad_value
        if gene_to_token is None:
            self.cls_id, self.pad_id, n_tokens = n_genes, n_genes + 1, n_genes + 2
            self.register_buffer("gene_to_token", None)
        else:
            if n_tokens is None or cls_id is None or pad_id is None or gene_to_token.shape != (n_genes,):
                raise ValueError("gene_to_token (n_genes,) needs n_tokens, cls_id and pad_id.")
            self.cls_id, self.pad_id = cls_id, pad_id
            self.register_buffer("gene_to_token", gene_to_token.to(torch.int64).clone())
        self.encoder = GeneEncoder(n_tokens, d_model, padding_idx=self.pad_id)
        if input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model, dropout)
        elif input_emb_style == "category":
            if not n_input_bins:
                raise ValueError("input_emb_style='category' needs n_input_bins.")
            pad_bin = int(pad_value) if 0 <= pad_value < n_input_bins else None
            self.value_encoder = CategoryValueEncoder(n_input_bins, d_model, padding_idx=pad_bin)
        else:
            raise ValueError(f"input_emb_style={input_emb_style!r} is not supported; use 'continuous' or 'category'.")
        self.input_emb_style = input_emb_style
        attn = {"attention": attention, "n_hops": n_hops, "alpha": alpha, "t": t, "normalize": normalize}
        self.transformer_encoder = _LayerStack(
            [GenoHoptionLayer(d_model, n_heads, d_hid, dropout, **attn) for _ in range(n_layers)]
        )

    def token_ids(self, genes: torch.Tensor, padding_mask: torch.Tensor, cls_token: bool = True) -> torch.Tensor:
        """Map gene indices (``-1`` = padding/CLS) to vocabulary ids, ``(B, L)``."""
        if self.gene_to_token is not None:
            ids = self.gene_to_token[genes.clamp(0, self.n_genes - 1)]
            genes = torch.where(ids < 0, torch.full_like(genes, -1), ids)
        ids = torch.where(padding_mask | (genes < 0), torch.full_like(genes, self.pad_id), genes)
        if cls_token:
            ids[:, 0] = self.cls_id
        return ids

    def forward(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        graph: BatchGraph | None,
        input_norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        all_layers: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encode a batch of token sequences.

        Parameters
        ----------
        genes
            ``(B, L)`` gene indices, ``-1`` at CLS (position 0) and padding.
        values
            ``(B, L)`` expression values.
        padding_mask
            ``(B, L)`` bool, ``True`` at padding.
        graph
            Induced batch graph (see :func:`~genohoption.nn.induced_batch_graph`); ``None`` only
            for ``attention="dense"``.
        input_norm
            Applied to the ``(B, L, d_model)`` input embeddings (gene + value) before the first layer, e.g.
            the domain-specific normalisation of :class:`~genohoption.nn.BatchInputs`; ``None``: none.
        all_layers
            Return the input embeddings and every layer's outputs.

        Returns
        -------
        ``(B, L, d_model)`` token embeddings of the last layer; position 0 is the cell (CLS) embedding.
        With ``all_layers``, a list of ``n_layers + 1`` of them (input embeddings first, last layer last).
        """
        if self.pad_value != 0:
            pad = self.pad_value if self.input_emb_style == "continuous" or self.pad_value >= 0 else 0
            values = values.masked_fill(padding_mask, pad)
        x = self.encoder(self.token_ids(genes, padding_mask)) + self.value_encoder(values)
        if input_norm is not None:
            x = input_norm(x)
        hidden = [x]
        for layer in self.transformer_encoder.layers:
            x = layer(x, graph, padding_mask)
            if all_layers:
                hidden.append(x)
        return hidden if all_layers else x
