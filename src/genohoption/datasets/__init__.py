"""Datasets: the packaged default prior network and small real single-cell data."""

from ._gears import read_gears
from ._pbmc import pbmc68k_reduced
from ._prior import prior_network
from ._simulate import simulate_perturbation

__all__ = ["pbmc68k_reduced", "prior_network", "read_gears", "simulate_perturbation"]
