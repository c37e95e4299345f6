"""scvi-tools module for cell-type annotation with a graph-diffusion backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ..data._tokenize import tokenize
from ..nn import ClsDecoder, ScGPTBackbone, induced_batch_graph


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
    **backbone_kwargs
        Passed to :class:`~genohoption.nn.ScGPTBackbone`.
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
        **backbone_kwargs,
    ):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.attention = backbone_kwargs.get("attention", "ppr")
        self.register_buffer("graph_indptr", graph_indptr.to(torch.int64).clone())
        self.register_buffer("graph_indices", graph_indices.to(torch.int64).clone())
        self.backbone = ScGPTBackbone(n_genes, **backbone_kwargs)
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
        tokens = tokenize(x, self.max_seq_len, cls_token=True, sample=self.training)
        graph = None
        if self.attention != "dense":
            graph = induced_batch_graph(tokens.genes, self.graph_indptr, self.graph_indices, cls_token=True)
        return self.backbone(tokens.genes, tokens.values, tokens.padding_mask, graph)

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the CLS embedding ``z`` ``(B, d_model)`` and class ``logits`` ``(B, n_labels)``."""
        z = self.encode(x.float())[:, 0]
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
