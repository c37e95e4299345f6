"""Tools: metrics and splits."""

from ._annotation import annotation_metrics, stratified_split
from ._perturbation import perturbation_metrics, perturbation_split, top_de_genes

__all__ = [
    "annotation_metrics",
    "perturbation_metrics",
    "perturbation_split",
    "stratified_split",
    "top_de_genes",
]
