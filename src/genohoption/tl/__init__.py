"""Tools: metrics, splits and baselines."""

from .._conditions import parse_condition
from ._annotation import annotation_metrics, stratified_split
from ._baselines import logistic_regression_baseline
from ._calibration import expected_calibration_error, fit_temperature, unknown_threshold
from ._in_silico import InSilicoResult, in_silico_perturbation, shift_alignment
from ._perturbation import perturbation_metrics, perturbation_split, top_de_genes
from ._perturbation_baselines import (
    AdditiveBaseline,
    LinearBaseline,
    MeanBaseline,
    NoChangeBaseline,
    PerturbationBaseline,
    fit_perturbation_baselines,
)
from ._reverse import perturbation_hit_rates, rank_perturbations
from ._screen import screen_split, subsample_conditions

__all__ = [
    "AdditiveBaseline",
    "InSilicoResult",
    "LinearBaseline",
    "MeanBaseline",
    "NoChangeBaseline",
    "PerturbationBaseline",
    "annotation_metrics",
    "expected_calibration_error",
    "fit_perturbation_baselines",
    "fit_temperature",
    "in_silico_perturbation",
    "logistic_regression_baseline",
    "parse_condition",
    "perturbation_hit_rates",
    "perturbation_metrics",
    "perturbation_split",
    "rank_perturbations",
    "screen_split",
    "shift_alignment",
    "stratified_split",
    "subsample_conditions",
    "top_de_genes",
    "unknown_threshold",
]
