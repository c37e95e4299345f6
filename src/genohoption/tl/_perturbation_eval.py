"""One evaluation of perturbation predictors, correct by construction (used by the command line and the benchmark)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._conditions import control_mask, parse_conditions
from .._constants import SPLIT_KEY
from .._validate import check_obs_key
from ._perturbation import _reference_conditions, perturbation_metrics, top_de_genes
from ._perturbation_stats import perturbation_noise_ceiling, perturbation_shuffle_null, target_kinds

if TYPE_CHECKING:
    from anndata import AnnData


@dataclass
class PerturbationEvaluation:
    """What :func:`evaluate_perturbation` computed.

    Attributes
    ----------
    scores
        Long DataFrame, one row per (method, condition): ``method``, ``condition``, ``target``
        (``"measured"`` / ``"unmeasured"``), the metrics of :func:`perturbation_metrics` and ``n_cells``.
    profiles
        ``{method: AnnData (n_conditions, n_vars)}`` of mean predicted profiles.
    train_conditions
        The training perturbations whose centroids make Systema's reference.
    de_genes
        ``{condition: var positions of its top DE genes}``.
    n_control
        Number of control cells: the inputs of every prediction and the control reference.
    null
        Shuffle null per method (:func:`perturbation_shuffle_null` with a ``method`` column), or ``None``.
    ceiling
        Split-half noise ceiling per condition (:func:`perturbation_noise_ceiling`), or ``None``.
    """

    scores: pd.DataFrame
    profiles: dict[str, Any]
    train_conditions: list[str]
    de_genes: dict[str, np.ndarray]
    n_control: int
    null: pd.DataFrame | None = None
    ceiling: pd.DataFrame | None = field(default=None)


def evaluate_perturbation(
    adata: AnnData,
    predictors: Mapping[str, Any],
    conditions: Sequence[str],
    *,
    train_conditions: Sequence[str] | None = None,
    split_key: str = SPLIT_KEY,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    gene_symbols: str | None = None,
    layer: str | None = None,
    n_de: int = 20,
    n_expressed: int = 1000,
    de_filter: Literal["all", "non_zero", "non_dropout"] = "all",
    batch_size: int = 128,
    shuffle_null: Sequence[str] = (),
    n_permutations: int = 200,
    noise_ceiling: bool = False,
    seed: int = 0,
) -> PerturbationEvaluation:
    """Predict held-out conditions with every predictor from the same control cells and score them alike.

    The evaluation is correct by construction:

    - every predictor predicts from **all control cells of** ``adata``, and the metrics' control mean is
      the mean of exactly those cells;
    - Systema's perturbed reference is the mean centroid of the **training** conditions only
      (``train_conditions``, or the perturbed conditions not marked ``"test"`` in ``adata.obs[split_key]``);
      a scored condition among them is an error;
    - the top DE genes are computed once (on all cells of ``adata``) and shared by every predictor; a DE
      gene missing from a prediction is an error;
    - centroid-accuracy candidates are the scored conditions (Systema's held-out perturbations).

    Parameters
    ----------
    adata
        The screen, ``(n_obs, n_vars)``: control cells, the scored conditions' cells and the training
        conditions' cells, GEARS conditions in ``adata.obs[perturbation_key]``.
    predictors
        ``{method: predictor}``: anything with ``predict_perturbation(ctrl_adata, conditions)`` returning
        mean profiles (a :class:`~genohoption.GenoHoptionModel`, the baselines of
        :func:`fit_perturbation_baselines`), or precomputed profiles (AnnData with ``obs["n_cells"]`` equal
        to the number of control cells).
    conditions
        The held-out conditions to score (each with 2 cells or more).
    train_conditions
        The training perturbations; ``None``: derived from ``adata.obs[split_key]``.
    split_key
        Split column read when ``train_conditions`` is ``None``.
    perturbation_key, control_value
        Condition column and control condition.
    gene_symbols
        Column of ``adata.var`` with the symbols the conditions use (measured targets; the
        ``*_excl_target`` metrics); ``None``: ``var_names``.
    layer
        Layer with the expression the predictors predict; ``None``: ``adata.X``.
    n_de, n_expressed, de_filter
        As for :func:`perturbation_metrics`.
    batch_size
        Passed to the predictors that take it (the model).
    shuffle_null
        Methods whose shuffle null (:func:`perturbation_shuffle_null`) is computed.
    n_permutations
        Permutations of the shuffle null.
    noise_ceiling
        Also compute the split-half noise ceiling (:func:`perturbation_noise_ceiling`).
    seed
        Seed of the shuffle null and the noise ceiling's halves.

    Returns
    -------
    :class:`PerturbationEvaluation`. Nothing is written to ``adata`` (predictors record their call in
    the control cells' copy).

    Raises
    ------
    KeyError
        If ``perturbation_key`` is missing, or a condition is not observed.
    ValueError
        If ``conditions`` is empty or overlaps ``train_conditions``, a condition has fewer than 2 cells, no
        training condition is found, or a precomputed profile starts from other cells.
    """
    values = check_obs_key(adata, perturbation_key, "perturbation_key").astype(str)
    conds = list(dict.fromkeys(str(c) for c in conditions))
    if not conds:
        raise ValueError("conditions is empty: name the held-out conditions to score.")
    parse_conditions(conds, control_value)
    is_ctrl = control_mask(values, control_value)
    if train_conditions is None:
        train = _reference_conditions(adata, values, is_ctrl, conds, split_key, perturbation_key)
    else:
        train = sorted({str(c) for c in train_conditions} - {control_value})
    both = sorted(set(train) & set(conds))
    if both:
        raise ValueError(f"Conditions {both[:5]!r} are both scored and training conditions: hold them out of "
                         "train_conditions (and of the training data).")
    if not train:
        raise ValueError("No training condition: Systema's reference is the mean of the training perturbations.")
    ctrl = adata[is_ctrl].copy()
    de = top_de_genes(adata, perturbation_key, control_value, conditions=conds, n_genes=n_de, layer=layer,
                      gene_filter=de_filter)
    symbols = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
    kind = target_kinds(conds, np.asarray(symbols, dtype=str), control_value)
    common = {"perturbation_key": perturbation_key, "control_value": control_value, "layer": layer,
              "n_expressed": n_expressed, "de_genes": de, "gene_symbols": gene_symbols,
              "perturbed_reference": train, "centroid_candidates": conds}
    profiles, tables, nulls = {}, [], []
    for name, predictor in predictors.items():
        if hasattr(predictor, "predict_perturbation"):
            takes = inspect.signature(predictor.predict_perturbation).parameters
            extra = {"batch_size": batch_size} if "batch_size" in takes else {}
            prof = predictor.predict_perturbation(ctrl, conds, **extra)
        else:
            prof = predictor[conds] if hasattr(predictor, "obs_names") else predictor.loc[conds]
        profiles[name] = prof
        table = perturbation_metrics(adata, prof, **common).reset_index()
        table.insert(0, "method", name)
        table.insert(2, "target", [kind[c] for c in table["condition"]])
        tables.append(table)
        if name in shuffle_null:
            null = perturbation_shuffle_null(adata, prof, n_permutations=n_permutations, seed=seed, **common)
            null.insert(0, "method", name)
            nulls.append(null)
    ceiling = None
    if noise_ceiling:
        ceiling = perturbation_noise_ceiling(adata, conds, seed=seed, **common).reset_index()
        ceiling.insert(1, "target", [kind[c] for c in ceiling["condition"]])
    return PerturbationEvaluation(
        scores=pd.concat(tables, ignore_index=True), profiles=profiles, train_conditions=train, de_genes=de,
        n_control=int(is_ctrl.sum()), null=pd.concat(nulls, ignore_index=True) if nulls else None, ceiling=ceiling,
    )
