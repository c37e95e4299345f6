"""Neural-network building blocks: batched induced gene graphs and sparse graph-diffusion attention."""

from __future__ import annotations

from ._attention import GraphDiffusionAttention
from ._backbones import (
    CategoryValueEncoder,
    ContinuousValueEncoder,
    ExprDecoder,
    GeneEncoder,
    GenoHoptionLayer,
    ScGPTBackbone,
)
from ._batch import AdversarialDiscriminator, BatchEncoder, BatchInputs, DomainSpecificBatchNorm, grad_reverse
from ._functional import graph_diffusion_attention
from ._geneformer import GeneformerBackbone, GeneformerLayer
from ._graph import BatchGraph, induced_batch_graph
from ._heads import ClsDecoder
from ._perturbation import PerturbationEncoder
from ._reference import dense_diffusion_reference
from ._stats import DiffusionStats, last_diffusion_stats

__all__ = [
    "AdversarialDiscriminator",
    "BatchEncoder",
    "BatchGraph",
    "BatchInputs",
    "CategoryValueEncoder",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "DiffusionStats",
    "DomainSpecificBatchNorm",
    "ExprDecoder",
    "GeneEncoder",
    "GeneformerBackbone",
    "GeneformerLayer",
    "GenoHoptionLayer",
    "GraphDiffusionAttention",
    "PerturbationEncoder",
    "ScGPTBackbone",
    "dense_diffusion_reference",
    "grad_reverse",
    "graph_diffusion_attention",
    "induced_batch_graph",
    "last_diffusion_stats",
]
