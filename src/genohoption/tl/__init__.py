"""Tools: metrics, splits and baselines."""

from .._conditions import parse_condition
from ._annotation import annotation_metrics, stratified_split
from ._baselines import logistic_regression_baseline
from ._perturbation import perturbation_metrics, perturbation_split, top_de_genes

__all__ = [
    "annotation_metrics",
    "logistic_regression_baseline",
    "parse_condition",
    "perturbation_metrics",
    "perturbation_split",
    "stratified_split",
    "top_de_genes",
]
