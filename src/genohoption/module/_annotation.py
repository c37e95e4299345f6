"""Cell-type annotation module: graph-diffusion backbone + classifier on the cell embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data._tokenize import TokenRandom, Tokens
from ..nn import ClsDecoder, DomainSpecificBatchNorm
from ..nn._batch import batch_parts
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

CELL_EMBEDDINGS = ("cls", "cls+expr")
"""What the classifier of :class:`AnnotationModule` reads."""

GENE_TOKENS = ("expressed", "all")
"""Which genes of a cell are tokens: those it expresses, or every gene (scGPT's ``include_zero_gene="all"``)."""


class AnnotationModule(TaskModule):
    """Classify cells from their gene tokens (scGPT-style backbone + classifier).

    For each minibatch of expression rows ``(B, n_vars)``: tokenize the expressed genes
    (:func:`~genohoption.data.tokenize`), induce the gene graph on each cell's tokens
    (:func:`~genohoption.nn.induced_batch_graph`), encode with the backbone
    (:class:`~genohoption.nn.ScGPTBackbone` or :class:`~genohoption.nn.GeneformerBackbone`) and classify
    the cell embedding with :class:`~genohoption.nn.ClsDecoder`. Loss: cross-entropy.

    Parameters
    ----------
    n_genes
        Number of genes (``n_vars``).
    n_labels
        Number of cell types.
    graph_indptr, graph_indices
        Global gene graph in CSR form over the ``n_genes`` genes (row ``i`` = genes ``i`` attends to).
    max_seq_len
        Maximum tokens per cell including CLS.
    n_cls_layers
        Layers of the classifier head.
    cls_input_norm
        Normalisation of the cell embedding before the head (see :class:`~genohoption.nn.ClsDecoder`).
    backbone
        ``"scgpt"`` (CLS embedding) or ``"geneformer"`` (rank-value tokens, mean-pooled embedding).
    backbone_config
        Architecture of a pretrained checkpoint (see :func:`genohoption.model.read_pretrained`);
        ``None`` trains from scratch.
    cell_emb
        What the classifier reads: ``"cls"`` (the backbone's cell embedding: CLS output for scGPT, mean
        of gene tokens for Geneformer) or ``"cls+expr"`` (that, concatenated with a learned linear
        projection of the cell's expression vector, ``x W``, ``W`` of shape ``(n_genes, d_model)``: a
        direct path from the expression to the head, next to the transformer's).
    gene_tokens
        ``"expressed"`` (each cell's expressed genes are its tokens) or ``"all"`` (every gene, expressed
        or not, scGPT's ``include_zero_gene="all"``; scGPT backbone only).
    n_batches
        Number of training batches (0: the model does not see batches; ``forward`` then takes no
        ``batch_index``).
    batch_representation
        How the batch enters (with ``n_batches > 0``): ``"token"`` (a batch embedding,
        :class:`~genohoption.nn.BatchEncoder`, read by the decoders of masked-expression pretraining of this
        backbone; the classifier does not read it), ``"dsbn"`` (domain-specific normalisation,
        :class:`~genohoption.nn.DomainSpecificBatchNorm`, of the gene tokens' input embeddings (scGPT
        backbone) and, with ``cls_input_norm="batch"``, of the cell embedding before the classifier, with a
        shared affine), ``"token+dsbn"`` or ``None``.
    batch_adversarial
        Weight of the adversarial batch loss (:class:`~genohoption.nn.AdversarialDiscriminator` on the cell
        embedding, gradient reversed); 0: none.
    conventions
        Input and read-out conventions (:class:`~genohoption.module.Conventions` fields, see
        :func:`~genohoption.module.resolve_conventions`); ``None``: the defaults for ``backbone`` and
        ``backbone_config``.
    **backbone_kwargs
        Sizes, dropout and attention arguments of the backbone.
    """

    def __init__(
        self,
        n_genes: int,
        n_labels: int,
        graph_indptr: torch.Tensor,
        graph_indices: torch.Tensor,
        *,
        max_seq_len: int = 512,
        n_cls_layers: int = 3,
        cls_input_norm: str | bool | None = "batch",
        backbone: str = "scgpt",
        backbone_config: dict | None = None,
        cell_emb: str = "cls",
        gene_tokens: str = "expressed",
        n_batches: int = 0,
        batch_representation: str | None = None,
        batch_adversarial: float = 0.0,
        conventions: dict | None = None,
        **backbone_kwargs,
    ):
        super().__init__(graph_indptr, graph_indices)
        self.n_genes = n_genes
        self.max_seq_len = max_seq_len
        self.attention = backbone_kwargs.get("attention", "ppr")
        self.conventions = Conventions(**resolve_conventions(backbone, backbone_config, conventions))
        self.n_bins = self.conventions.n_bins  # scGPT value binning
        self.backbone = build_backbone(n_genes, backbone, backbone_config,
                                       {**backbone_kwargs, "max_seq_len": max_seq_len})
        if cell_emb not in CELL_EMBEDDINGS:
            raise ValueError(f"cell_emb={cell_emb!r} is unknown; choose one of {CELL_EMBEDDINGS}.")
        self.cell_emb = cell_emb
        if gene_tokens not in GENE_TOKENS:
            raise ValueError(f"gene_tokens={gene_tokens!r} is unknown; choose one of {GENE_TOKENS}.")
        if gene_tokens == "all" and backbone == "geneformer":
            raise ValueError("gene_tokens='all' applies to the scGPT backbone; Geneformer ranks expressed genes.")
        self.include_zero = gene_tokens == "all"
        d = self.backbone.d_model
        self.expr_proj = nn.Linear(n_genes, d, bias=False) if cell_emb == "cls+expr" else None
        d_latent = d * (2 if self.expr_proj is not None else 1)
        # the batch: shared input parts, a per-batch normalisation of the classifier's input, a discriminator
        self.n_batches, self.batch_adversarial = int(n_batches), float(batch_adversarial)
        self.batch = build_batch_inputs(self.backbone, self.n_batches, batch_representation)
        head_dsbn = self.n_batches > 0 and batch_parts(batch_representation)[1] and cls_input_norm in ("batch", True)
        self.batch_head_norm = DomainSpecificBatchNorm(d_latent, self.n_batches, affine=True) if head_dsbn else None
        self.batch_discriminator = build_discriminator(d_latent, self.n_batches, self.batch_adversarial)
        self.cls_decoder = ClsDecoder(d_latent, n_labels, n_cls_layers,
                                      input_norm=None if head_dsbn else cls_input_norm)

    @property
    def d_latent(self) -> int:
        """Width of the cell embedding ``z`` (``d_model``, twice that with ``cell_emb="cls+expr"``)."""
        return self.cls_decoder.out_layer.in_features

    def inference_random(self) -> TokenRandom:
        """Random streams for one inference pass over cells (seeded with ``conventions.seed``)."""
        return TokenRandom(self.conventions.seed)

    def encode_tokens(self, x: torch.Tensor, batch_index: torch.Tensor | None = None, rng: TokenRandom | None = None,
                      *, all_layers: bool = False) -> tuple[torch.Tensor | list[torch.Tensor], Tokens]:
        """Token embeddings ``(B, L, d_model)`` of ``(B, n_genes)`` expression, and the batch's tokens.

        During training a random subset of expressed genes is kept when a cell has more than
        ``max_seq_len - 1``; in evaluation mode the conventions' ``sampling`` decides (draws from ``rng``).
        ``batch_index`` ``(B,)``: the cells' batch codes (models with batches). ``all_layers``: every layer's
        outputs (a list, embeddings first).
        """
        tokens = backbone_tokens(self.backbone, x, self.max_seq_len, sample=self.training,
                                 include_zero=self.include_zero, conventions=self.conventions, rng=rng)
        graph = None
        if self.attention != "dense":
            graph = backbone_graph(self.backbone, tokens, self.graph_indptr, self.graph_indices)
        batch_index = batch_index_for(self, batch_index, x.shape[0])
        norm = None if self.batch is None else self.batch.input_norm(batch_index, gene_tokens(tokens))
        extra = {} if norm is None else {"input_norm": norm}  # the Geneformer backbone takes no input normalisation
        h = self.backbone(tokens.genes, tokens.values, tokens.padding_mask, graph, all_layers=all_layers, **extra)
        return h, tokens

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor | None = None, *,
                rng: TokenRandom | None = None) -> dict[str, torch.Tensor]:
        """Return the classifier's input ``z``, the class ``logits`` and the cell embedding ``latent``.

        ``z`` ``(B, d_latent)`` pools the last layer as ``conventions.emb_mode`` says (scGPT: CLS output;
        Geneformer V1: mean of the gene tokens); ``latent`` ``(B, d_latent)`` pools the layer
        ``conventions.emb_layer``, L2-normalised with ``emb_norm="l2"`` (the original pipelines' cell
        embedding); with ``cell_emb="cls+expr"`` both are followed by the expression projection. With a
        domain-specific normalisation of the classifier's input, ``z`` is the normalised embedding the
        classifier reads and ``latent`` is that same batch-corrected embedding. ``batch_index`` ``(B,)``: batch
        codes, required by models with batches; with an adversarial discriminator the outputs also hold
        ``"batch_logits"`` ``(B, n_batches)``. ``rng``: random streams of an inference pass (see
        :meth:`inference_random`).
        """
        x = x.float()
        batch_index = batch_index_for(self, batch_index, x.shape[0])
        hidden, tokens = self.encode_tokens(x, batch_index, rng, all_layers=True)
        z, latent = read_out(self.backbone, hidden, tokens, self.conventions)
        if self.expr_proj is not None:
            e = self.expr_proj(x)
            z, latent = torch.cat([z, e], 1), torch.cat([latent, e], 1)
        if self.batch_head_norm is not None:
            z = latent = self.batch_head_norm(z, batch_index)
        out = {"z": z, "logits": self.cls_decoder(z), "latent": latent}
        if self.batch_discriminator is not None:
            out["batch_logits"] = self.batch_discriminator(z)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, *, class_weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy of ``outputs["logits"]`` against integer ``labels`` ``(B,)``.

        Parameters
        ----------
        outputs
            Output of :meth:`forward`.
        labels
            ``(B,)`` class indices.
        class_weight
            ``(n_labels,)`` weight of each class (the loss is the weighted mean, as
            :func:`torch.nn.functional.cross_entropy`); ``None``: all 1.
        label_smoothing
            Label smoothing in ``[0, 1)`` (Szegedy et al. 2016).
        """
        return F.cross_entropy(outputs["logits"], labels.view(-1).long(), weight=class_weight,
                               label_smoothing=label_smoothing)
