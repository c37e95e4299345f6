"""scvi-tools modules (loss per task)."""

from ._annotation import AnnotationModule

__all__ = ["AnnotationModule"]
