"""Neural-network building blocks: batched induced gene graphs and sparse graph-diffusion attention."""

from __future__ import annotations

# _backbones / _heads exports are maintained by the model layer; _diffusion / _graph by the engine
from ._backbones import (
    CategoryValueEncoder,
    ContinuousValueEncoder,
    ExprDecoder,
    GeneEncoder,
    GenoHoptionLayer,
    ScGPTBackbone,
)
from ._diffusion import (
    DiffusionStats,
    GraphDiffusionAttention,
    dense_diffusion_reference,
    graph_diffusion_attention,
    last_diffusion_stats,
)
from ._geneformer import GeneformerBackbone, GeneformerLayer
from ._graph import BatchGraph, induced_batch_graph
from ._heads import ClsDecoder
from ._perturbation import PerturbationEncoder

__all__ = [
    "BatchGraph",
    "CategoryValueEncoder",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "DiffusionStats",
    "ExprDecoder",
    "GeneEncoder",
    "GeneformerBackbone",
    "GeneformerLayer",
    "GenoHoptionLayer",
    "GraphDiffusionAttention",
    "PerturbationEncoder",
    "ScGPTBackbone",
    "dense_diffusion_reference",
    "graph_diffusion_attention",
    "induced_batch_graph",
    "last_diffusion_stats",
]
