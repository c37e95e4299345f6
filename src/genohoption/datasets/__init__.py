"""Datasets: small real single-cell data and readers of published formats (no torch here)."""

from ._gears import read_gears
from ._pbmc import pbmc68k_reduced
from ._simulate import simulate_perturbation

__all__ = ["pbmc68k_reduced", "read_gears", "simulate_perturbation"]
