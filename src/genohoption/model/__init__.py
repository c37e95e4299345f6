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
from ._training import (
    ClassificationTrainingPlan,
    MaskedExpressionTrainingPlan,
    RegressionTrainingPlan,
    RestoreBestWeights,
)

__all__ = [
    "CheckpointError",
    "ClassificationTrainingPlan",
    "GeneMapping",
    "GenoHoptionModel",
    "MaskedExpressionTrainingPlan",
    "PreciseBatchNorm",
    "PretrainedCheckpoint",
    "PretrainedReport",
    "RegressionTrainingPlan",
    "RestoreBestWeights",
    "load_pretrained_weights",
    "map_genes",
    "read_pretrained",
]
