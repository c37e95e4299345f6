"""User-facing models."""

from ._callbacks import PreciseBatchNorm
from ._model import GenoHoptionModel
from ._pretrained import (
    CheckpointError,
    GeneMapping,
    PretrainedCheckpoint,
    PretrainedReport,
    load_pretrained_weights,
    map_genes,
    read_pretrained,
)

__all__ = [
    "CheckpointError",
    "GeneMapping",
    "GenoHoptionModel",
    "PreciseBatchNorm",
    "PretrainedCheckpoint",
    "PretrainedReport",
    "load_pretrained_weights",
    "map_genes",
    "read_pretrained",
]
