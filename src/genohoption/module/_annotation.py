"""scvi-tools module for cell-type annotation with a graph-diffusion backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ..data._tokenize import Tokens
from ..nn import ClsDecoder
from ._inputs import backbone_graph, backbone_tokens, build_backbone, cell_embedding


class AnnotationModule(BaseModuleClass):
    """Classify cells from their gene tokens (scGPT-style backbone + CLS classifier).

    For each minibatch of expression rows ``(B, n_vars)``: tokenize the expressed genes
    (:func:`~genohoption.data.tokenize`), induce the gene graph on each cell's tokens
    (:func:`~genohoption.nn.induced_batch_graph`), encode with :class:`~genohoption.nn.ScGPTBackbone`
    and classify the CLS embedding with :class:`~genohoption.nn.ClsDecoder`. Loss: cross-entropy.

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
        Standardise the CLS embedding before the head (see :class:`~genohoption.nn.ClsDecoder`).
    backbone
        ``"scgpt"`` (:class:`~genohoption.nn.ScGPTBackbone`, CLS embedding) or ``"geneformer"``
        (:class:`~genohoption.nn.GeneformerBackbone`, rank-value tokens, mean-pooled embedding).
    backbone_config
        Architecture of a pretrained checkpoint (see :func:`genohoption.model.read_pretrained`);
        ``None`` trains from scratch.
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
        cls_input_norm: bool = True,
        backbone: str = "scgpt",
        backbone_config: dict | None = None,
        **backbone_kwargs,
    ):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.attention = backbone_kwargs.get("attention", "ppr")
        self.register_buffer("graph_indptr", graph_indptr.to(torch.int64).clone())
        self.register_buffer("graph_indices", graph_indices.to(torch.int64).clone())
        self.n_bins = (backbone_config or {}).get("n_bins")  # scGPT value binning of pretrained models
        self.backbone = build_backbone(n_genes, backbone, backbone_config,
                                       {**backbone_kwargs, "max_seq_len": max_seq_len})
        self.cls_decoder = ClsDecoder(self.backbone.d_model, n_labels, n_cls_layers, input_norm=cls_input_norm)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs) -> dict:
        return {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings of a batch: ``(B, n_genes)`` expression → ``(B, L, d_model)``.

        During training a random subset of expressed genes is kept when a cell has more than
        ``max_seq_len - 1``; in evaluation mode the most expressed ones.
        """
        return self.encode_tokens(x)[0]

    def encode_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, Tokens]:
        """As :meth:`encode`, also returning the :class:`~genohoption.data.Tokens` of the batch."""
        tokens = backbone_tokens(self.backbone, x, self.max_seq_len, sample=self.training, n_bins=self.n_bins)
        graph = None
        if self.attention != "dense":
            graph = backbone_graph(self.backbone, tokens, self.graph_indptr, self.graph_indices)
        return self.backbone(tokens.genes, tokens.values, tokens.padding_mask, graph), tokens

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the cell embedding ``z`` ``(B, d_model)`` and class ``logits`` ``(B, n_labels)``.

        ``z`` is the CLS output (scGPT) or the mean of the gene tokens' outputs (Geneformer).
        """
        h, tokens = self.encode_tokens(x.float())
        z = cell_embedding(self.backbone, h, tokens)
        return {"z": z, "logits": self.cls_decoder(z)}

    def generative(self) -> dict:
        """No generative part: annotation is discriminative."""
        return {}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Cross-entropy of the predicted cell types, with accuracy as an extra metric."""
        logits = inference_outputs["logits"]
        labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        ce = F.cross_entropy(logits, labels, reduction="none")
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return LossOutput(
            loss=ce.mean(),
            reconstruction_loss=ce,
            n_obs_minibatch=labels.shape[0],
            extra_metrics={"accuracy": accuracy.detach()},
        )
