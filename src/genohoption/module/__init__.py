"""scvi-tools modules (loss per task)."""

from ._annotation import AnnotationModule
from ._perturbation import PerturbationModule
from ._pretraining import MVCDecoder, PretrainingModule

__all__ = ["AnnotationModule", "MVCDecoder", "PerturbationModule", "PretrainingModule"]
