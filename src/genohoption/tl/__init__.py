"""Tools: metrics, splits, baselines and statistics."""

from .._conditions import parse_condition
from ._annotation import annotation_metrics, stratified_split
from ._baselines import logistic_regression_baseline
from ._calibration import expected_calibration_error, fit_temperature, unknown_threshold
from ._in_silico import InSilicoResult, in_silico_perturbation, shift_alignment
from ._perturbation import perturbation_metrics, perturbation_split, top_de_genes
from ._perturbation_baselines import (
    AdditiveBaseline,
    LinearBaseline,
    MatchingMeanBaseline,
    MeanBaseline,
    NoChangeBaseline,
    PerturbationBaseline,
    PriorNetworkBaseline,
    TargetGeneBaseline,
    fit_perturbation_baselines,
)
from ._perturbation_eval import PerturbationEvaluation, evaluate_perturbation
from ._perturbation_stats import (
    bootstrap_interval,
    paired_difference,
    perturbation_folds,
    perturbation_noise_ceiling,
    perturbation_shuffle_null,
    shuffle_null_summary,
    summarize_perturbation_scores,
)
from ._reverse import perturbation_hit_rates, rank_perturbations
from ._screen import screen_split, subsample_conditions

__all__ = [
    "AdditiveBaseline",
    "InSilicoResult",
    "LinearBaseline",
    "MatchingMeanBaseline",
    "MeanBaseline",
    "NoChangeBaseline",
    "PerturbationBaseline",
    "PerturbationEvaluation",
    "PriorNetworkBaseline",
    "TargetGeneBaseline",
    "annotation_metrics",
    "bootstrap_interval",
    "evaluate_perturbation",
    "expected_calibration_error",
    "fit_perturbation_baselines",
    "fit_temperature",
    "in_silico_perturbation",
    "logistic_regression_baseline",
    "paired_difference",
    "parse_condition",
    "perturbation_folds",
    "perturbation_hit_rates",
    "perturbation_metrics",
    "perturbation_noise_ceiling",
    "perturbation_shuffle_null",
    "perturbation_split",
    "rank_perturbations",
    "screen_split",
    "shift_alignment",
    "shuffle_null_summary",
    "stratified_split",
    "subsample_conditions",
    "summarize_perturbation_scores",
    "top_de_genes",
    "unknown_threshold",
]
