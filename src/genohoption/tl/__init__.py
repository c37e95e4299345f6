"""Tools: metrics, splits and baselines."""

from ._annotation import annotation_metrics, stratified_split
from ._baselines import logistic_regression_baseline
from ._perturbation import perturbation_metrics, perturbation_split, top_de_genes

__all__ = [
    "annotation_metrics",
    "logistic_regression_baseline",
    "perturbation_metrics",
    "perturbation_split",
    "stratified_split",
    "top_de_genes",
]
