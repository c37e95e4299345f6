"""Datasets: small real single-cell data and readers of published formats (no torch here)."""

from ._download import adamson2016, fetch_gears, norman2019, replogle2022_k562_essential
from ._gears import read_gears
from ._papalexi import papalexi2021
from ._pbmc import pbmc68k_reduced
from ._simulate import simulate_perturbation

__all__ = [
    "adamson2016",
    "fetch_gears",
    "norman2019",
    "papalexi2021",
    "pbmc68k_reduced",
    "read_gears",
    "replogle2022_k562_essential",
    "simulate_perturbation",
]
