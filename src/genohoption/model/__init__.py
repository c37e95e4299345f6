"""User-facing models."""

from . import _quiet  # noqa: F401  (first: filters warnings of the imports below)
from ._callbacks import PreciseBatchNorm
from ._ensemble import GenoHoptionEnsemble
from ._export import export_pretrained
from ._fit import quiet_training
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
from ._resume import EpochSeed, TrainingCheckpoint
from ._training import (
    ClassificationTrainingPlan,
    MaskedExpressionTrainingPlan,
    RegressionTrainingPlan,
    RestoreBestWeights,
)

__all__ = [
    "CheckpointError",
    "ClassificationTrainingPlan",
    "EpochSeed",
    "GeneMapping",
    "GenoHoptionEnsemble",
    "GenoHoptionModel",
    "MaskedExpressionTrainingPlan",
    "PreciseBatchNorm",
    "PretrainedCheckpoint",
    "PretrainedReport",
    "RegressionTrainingPlan",
    "RestoreBestWeights",
    "TrainingCheckpoint",
    "export_pretrained",
    "load_pretrained_weights",
    "map_genes",
    "quiet_training",
    "read_pretrained",
]
