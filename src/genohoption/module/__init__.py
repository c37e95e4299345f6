"""scvi-tools modules (loss per task)."""

from ._annotation import AnnotationModule
from ._perturbation import PerturbationModule

__all__ = ["AnnotationModule", "PerturbationModule"]
