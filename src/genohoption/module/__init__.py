"""scvi-tools modules (loss per task)."""

from ._annotation import AnnotationModule
from ._inputs import Conventions, resolve_conventions
from ._perturbation import PerturbationModule
from ._pretraining import MVCDecoder, PretrainingModule

__all__ = ["AnnotationModule", "Conventions", "MVCDecoder", "PerturbationModule", "PretrainingModule",
           "resolve_conventions"]
