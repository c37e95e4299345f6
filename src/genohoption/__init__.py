"""genohoption: gene-network graph diffusion attention for single-cell foundation models."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, pl, pp, tl
from .model import GenoHoptionModel

try:
    __version__ = version("genohoption")
except PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "0.0.0"

__all__ = ["GenoHoptionModel", "datasets", "pl", "pp", "tl"]
