"""Self-supervised pretraining module: masked expression modelling through the graph-diffusion layers."""

from __future__ import annotations

import torch
from torch import nn

from ..data import TokenRandom
from ..nn import ScGPTBackbone
from ..nn._backbones import ExprDecoder
from ._base import TaskModule
from ._batch import batch_index_for, build_batch_inputs, build_discriminator, gene_tokens
from ._inputs import (
    Conventions,
    backbone_graph,
    backbone_tokens,
    build_backbone,
    read_out,
    resolve_conventions,
)

MASK_VALUE = -1.0
"""Input value of a masked token (expression values are non-negative, so it cannot be confused)."""


class MVCDecoder(nn.Module):
    """Predict a gene's expression from the cell embedding (scGPT ``MVCDecoder``, "GEPC" objective).

    ``ŷ_g = <σ(W e_g), z>``: the gene's embedding ``e_g`` is mapped to a query that is matched with the
    cell embedding ``z``, so ``z`` must summarise the whole cell (Cui et al. 2024, scGPT, "gene expression
    prediction for cell modelling").

    Parameters
    ----------
    d_model
        Width of gene and cell embeddings.
    d_cell
        Width of what the queries are matched with, when it differs from ``d_model`` (scGPT's
        ``use_batch_labels``: the cell embedding concatenated with the batch embedding, ``2 * d_model``); the
        queries are then mapped to it by a linear layer ``W`` without bias, as scGPT's.
    """

    def __init__(self, d_model: int, d_cell: int | None = None):
        super().__init__()
        self.gene2query = nn.Linear(d_model, d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d_model, d_cell, bias=False) if d_cell not in (None, d_model) else None

    def forward(self, cell_emb: torch.Tensor, gene_embs: torch.Tensor) -> torch.Tensor:
        """``(B, d_cell)`` cell embeddings and ``(B, L, d)`` gene embeddings → ``(B, L)`` predicted values."""
        query = self.query_activation(self.gene2query(gene_embs))
        if self.W is not None:
            query = self.W(query)
        return torch.bmm(query, cell_emb.unsqueeze(2)).squeeze(2)


class PretrainingModule(TaskModule):
    """Masked expression modelling on unlabelled cells (scGPT's GEP + GEPC objectives, Cui et al. 2024).

    For each minibatch of expression rows ``(B, n_vars)``: tokenize the expressed genes (CLS first), hide
    the values of a random ``mask_ratio`` of each cell's gene tokens (their input value becomes
    :data:`MASK_VALUE`; the gene identity stays visible), run the graph-diffusion backbone, and predict
    the hidden values twice: from each token's output (:class:`~genohoption.nn.ExprDecoder`, "GEP") and
    from the cell embedding (:class:`MVCDecoder`, "GEPC"), so that both the token and the CLS outputs
    learn the cell's state. Loss: mean squared error on the masked tokens, summed over the two heads.

    Parameters
    ----------
    n_genes
        Number of genes (``n_vars``).
    graph_indptr, graph_indices
        Global gene graph in CSR form (row ``i`` = genes ``i`` attends to).
    max_seq_len
        Maximum tokens per cell including CLS; ``None`` keeps every expressed gene.
    mask_ratio
        Fraction of each cell's gene tokens whose value is hidden, in ``(0, 1)`` (default 0.4).
    backbone
        An existing :class:`~genohoption.nn.ScGPTBackbone` to pretrain (shared, not copied); ``None``
        builds one from ``backbone_kwargs``.
    n_batches
        Number of training batches (0: batches are not seen; ``forward`` then takes no ``batch_index``).
    batch_representation
        How the batch enters (with ``n_batches > 0``; scGPT's integration): ``"token"`` (a batch embedding,
        :class:`~genohoption.nn.BatchEncoder`, concatenated to each token's output before the expression
        decoder and to the cell embedding before the cell decoder, so that the cell embedding need not
        carry the batch), ``"dsbn"`` (domain-specific normalisation of the gene tokens' input embeddings),
        ``"token+dsbn"`` or ``None``.
    batch_adversarial
        Weight of the adversarial batch loss on the cell embedding (0: none).
    batch_inputs
        Existing :class:`~genohoption.nn.BatchInputs` to share (an annotation model's, with its backbone);
        ``None`` builds them from ``n_batches`` and ``batch_representation``.
    conventions
        Input and read-out conventions (see :class:`~genohoption.module.Conventions`; an annotation
        module's, when its backbone is pretrained); ``None``: those of an scGPT-style model trained from
        scratch.
    **backbone_kwargs
        Sizes, dropout and attention arguments of a new backbone.

    Raises
    ------
    ValueError
        If ``mask_ratio`` is not in ``(0, 1)`` or the backbone is not scGPT-style.
    """

    def __init__(
        self,
        n_genes: int,
        graph_indptr: torch.Tensor,
        graph_indices: torch.Tensor,
        *,
        max_seq_len: int | None = None,
        mask_ratio: float = 0.4,
        backbone: nn.Module | None = None,
        n_batches: int = 0,
        batch_representation: str | None = None,
        batch_adversarial: float = 0.0,
        batch_inputs: nn.Module | None = None,
        conventions: dict | Conventions | None = None,
        **backbone_kwargs,
    ):
        super().__init__(graph_indptr, graph_indices)
        if isinstance(conventions, Conventions):
            conventions = conventions.to_dict()
        self.conventions = Conventions(**resolve_conventions("scgpt", None, conventions))
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}.")
        self.n_genes = n_genes
        self.max_seq_len = max_seq_len
        self.mask_ratio = float(mask_ratio)
        if backbone is None:
            backbone = build_backbone(n_genes, "scgpt", None, {**backbone_kwargs, "max_seq_len": max_seq_len})
        if not isinstance(backbone, ScGPTBackbone):
            raise ValueError("Masked expression pretraining supports the scGPT-style backbone only (backbone='scgpt').")
        self.backbone = backbone
        self.attention = backbone.transformer_encoder.layers[0].self_attn.attention
        d = backbone.d_model
        self.n_batches, self.batch_adversarial = int(n_batches), float(batch_adversarial)
        self.batch = batch_inputs if batch_inputs is not None else build_batch_inputs(backbone, self.n_batches,
                                                                                       batch_representation)
        d_out = 2 * d if self.batch is not None and self.batch.encoder is not None else d
        self.decoder = ExprDecoder(d, d_in=d_out)
        self.mvc_decoder = MVCDecoder(d, d_cell=d_out)
        self.batch_discriminator = build_discriminator(d, self.n_batches, self.batch_adversarial)

    def _mask(self, tokens, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, L)`` bool: the gene tokens whose value is hidden (at least one per cell with genes)."""
        is_gene = ~tokens.padding_mask & (tokens.genes >= 0)
        score = torch.rand(is_gene.shape, generator=generator, device=is_gene.device)
        score = torch.where(is_gene, score, torch.full_like(score, 2.0))
        n_gene = is_gene.sum(1, keepdim=True)
        n_mask = torch.clamp((n_gene.float() * self.mask_ratio).round().long(), min=1)
        n_mask = torch.minimum(n_mask, n_gene)
        rank = score.argsort(1).argsort(1)
        return (rank < n_mask) & is_gene

    def forward(self, x: torch.Tensor, *, mask: bool = True, batch_index: torch.Tensor | None = None,
                rng: TokenRandom | None = None) -> dict[str, torch.Tensor]:
        """Encode a minibatch with part of the values hidden and predict them.

        Parameters
        ----------
        x
            ``(B, n_genes)`` expression.
        mask
            Hide values (training); ``False`` encodes the cells as they are (embeddings).
        batch_index
            ``(B,)`` batch codes; required by models with batches.
        rng
            Random streams of an inference pass (:class:`~genohoption.data.TokenRandom`); ``None``: new ones
            seeded with ``conventions.seed``.

        Returns
        -------
        ``"z"`` ``(B, d_model)`` cell embeddings; ``"latent"`` the same as read out by the conventions
        (``emb_layer``, ``emb_norm``); ``"pred"``, ``"pred_cell"`` ``(B, L)`` values predicted
        from the tokens and from the cell embedding; ``"target"`` ``(B, L)`` true values; ``"masked"``
        ``(B, L)`` bool; with an adversarial discriminator ``"batch_logits"`` ``(B, n_batches)``.
        """
        x = x.float()
        bb = self.backbone
        batch_index = batch_index_for(self, batch_index, x.shape[0])
        tokens = backbone_tokens(bb, x, self.max_seq_len, sample=self.training, conventions=self.conventions, rng=rng)
        masked = self._mask(tokens) if mask else torch.zeros_like(tokens.padding_mask)
        values = tokens.values.masked_fill(masked, MASK_VALUE)
        graph = None
        if self.attention != "dense":
            graph = backbone_graph(bb, tokens, self.graph_indptr, self.graph_indices)
        norm = None if self.batch is None else self.batch.input_norm(batch_index, gene_tokens(tokens))
        hidden = bb(tokens.genes, values, tokens.padding_mask, graph, input_norm=norm, all_layers=True)
        h = hidden[-1]
        z, latent = read_out(bb, hidden, tokens, self.conventions)
        gene_embs = bb.encoder(bb.token_ids(tokens.genes, tokens.padding_mask))
        b = None if self.batch is None else self.batch.embedding(batch_index)
        h_dec, z_dec = h, z
        if b is not None:  # scGPT's use_batch_labels: the decoders read the batch beside the outputs
            h_dec = torch.cat([h, b[:, None].expand(-1, h.shape[1], -1)], 2)
            z_dec = torch.cat([z, b], 1)
        out = {"z": z, "pred": self.decoder(h_dec), "pred_cell": self.mvc_decoder(z_dec, gene_embs),
               "target": tokens.values, "masked": masked, "latent": latent}
        if self.batch_discriminator is not None:
            out["batch_logits"] = self.batch_discriminator(z)
        return out

    def loss(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean squared errors on the masked tokens: total, from the tokens (GEP), from the cell (GEPC)."""
        m = outputs["masked"].to(outputs["pred"].dtype)
        n = m.sum().clamp(min=1.0)
        gep = (((outputs["pred"] - outputs["target"]) ** 2) * m).sum() / n
        gepc = (((outputs["pred_cell"] - outputs["target"]) ** 2) * m).sum() / n
        return gep + gepc, gep.detach(), gepc.detach()
