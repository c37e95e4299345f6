"""Datasets: the packaged default prior network and small real single-cell data."""

from ._pbmc import pbmc68k_reduced
from ._prior import prior_network

__all__ = ["pbmc68k_reduced", "prior_network"]
