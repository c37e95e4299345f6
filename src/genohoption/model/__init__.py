"""User-facing models."""

from ._model import GenoHoptionModel

__all__ = ["GenoHoptionModel"]
