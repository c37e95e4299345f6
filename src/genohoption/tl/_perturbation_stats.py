"""Statistics of perturbation benchmarks (plain numpy / pandas; no torch).

Disjoint folds over targets, bootstrap intervals, paired differences, a shuffle null and a split-half noise
ceiling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._conditions import control_mask, parse_conditions
from .._validate import check_obs_key
from ._perturbation import (
    ERROR_METRICS,
    METRICS,
    _as_frame,
    _observed,
    _score,
    perturbation_metrics,
    target_positions,
    top_de_genes,
)

if TYPE_CHECKING:
    from anndata import AnnData

SKILL_METRICS = {"l2_skill": "l2_top_expressed", "mse_de_skill": "mse_de"}
"""Skill scores of :func:`summarize_perturbation_scores`: ``1 - mean(error) / mean(error of the reference
method)`` over the conditions, for the errors named here."""

DEGENERATE_VALUE = 0.0
"""A baseline whose score is exactly this on every condition scores it by construction (a correlation with a
constant side, no direction, no recall, the skill of the reference itself): it is never the comparison."""


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def target_kinds(conditions: Sequence[str], symbols: Sequence[str], control_value: str = "ctrl") -> dict[str, str]:
    """``"measured"`` when every perturbed gene of a condition is among ``symbols``, else ``"unmeasured"``.

    Matching is exact, then case-insensitive (as :func:`target_positions`).
    """
    parsed = parse_conditions(conditions, control_value)
    found = target_positions(list(conditions), symbols, control_value)
    return {c: "measured" if pos.size == len(parsed[c]) else "unmeasured"
            for c, pos in zip(conditions, found, strict=True)}


def perturbation_folds(
    adata: AnnData,
    n_folds: int = 5,
    *,
    seed: int = 0,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    gene_symbols: str | None = None,
) -> list[list[str]]:
    """Disjoint folds over the perturbed conditions: every condition is held out exactly once.

    The conditions are stratified by whether their perturbed genes are measured (:func:`target_kinds`):
    each stratum (measured first) is shuffled with :func:`numpy.random.default_rng` seeded with ``seed``
    and dealt round-robin into the folds, the deal continuing from one stratum to the next, so that fold
    sizes differ by at most one and each fold gets its share of measured and unmeasured targets. Fold
    ``k`` is held out (tested) while the model and the baselines train on the others
    (:func:`screen_split` with ``split="kfold"``).

    Parameters
    ----------
    adata
        The screen, ``(n_obs, n_vars)``, with GEARS conditions in ``adata.obs[perturbation_key]``.
    n_folds
        Number of folds, at least 2 and at most the number of perturbed conditions (default 5).
    seed
        Seed of the shuffles (default 0).
    perturbation_key, control_value
        Condition column and control condition.
    gene_symbols
        Column of ``adata.var`` with the symbols the conditions use; ``None``: ``var_names``.

    Returns
    -------
    ``n_folds`` lists of conditions, each sorted. Nothing is written to ``adata``.

    Raises
    ------
    KeyError
        If ``perturbation_key`` or ``gene_symbols`` is missing.
    ValueError
        For malformed conditions, ``n_folds`` below 2 or above the number of perturbed conditions.
    """
    values = check_obs_key(adata, perturbation_key, "perturbation_key").astype(str)
    n_folds = _check_positive_int(n_folds, "n_folds")
    if gene_symbols is not None and gene_symbols not in adata.var:
        raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of adata.var; available: "
                       f"{list(adata.var.columns)}.")
    parsed = parse_conditions(values, control_value)
    conds = sorted(c for c, genes in parsed.items() if genes)
    if not 2 <= n_folds <= len(conds):
        raise ValueError(f"n_folds must be between 2 and the number of perturbed conditions ({len(conds)}), got "
                         f"{n_folds}.")
    symbols = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
    kind = target_kinds(conds, np.asarray(symbols, dtype=str), control_value)
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    turn = 0
    for stratum in ("measured", "unmeasured"):
        members = np.asarray([c for c in conds if kind[c] == stratum], dtype=object)
        for c in rng.permutation(members):
            folds[turn % n_folds].append(str(c))
            turn += 1
    return [sorted(f) for f in folds]


def bootstrap_interval(
    values: np.ndarray | Sequence[float],
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap interval of a statistic over rows (conditions), resampled with replacement.

    Parameters
    ----------
    values
        ``(n,)`` values or ``(n, m)`` rows (e.g. paired columns); rows holding a NaN are dropped first.
    statistic
        Function of a ``(n_boot, n[, m])`` stack of resamples returning ``(n_boot,)`` values; ``None``:
        the mean over rows (of a 1-D input).
    n_boot
        Number of resamples (default 2000).
    level
        Coverage of the interval (default 0.95: the 2.5 % and 97.5 % quantiles of the resampled statistic).
    seed
        Seed of :func:`numpy.random.default_rng` (default 0): the same seed draws the same resamples for any
        input of the same length, so intervals of paired inputs use the same resamples.

    Returns
    -------
    ``(estimate, low, high)``: the statistic on ``values`` and the interval; ``(nan, nan, nan)`` without
    any row.

    Raises
    ------
    ValueError
        For ``n_boot`` below 1 or ``level`` outside ``(0, 1)``.
    """
    n_boot = _check_positive_int(n_boot, "n_boot")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    x = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(x).any(axis=tuple(range(1, x.ndim))) if x.ndim > 1 else ~np.isnan(x)
    x = x[keep]
    if x.shape[0] == 0:
        return float("nan"), float("nan"), float("nan")
    if statistic is None:
        if x.ndim != 1:
            raise ValueError("statistic=None (the mean) takes a 1-D array; pass statistic= for rows.")

        def statistic(z):
            return z.mean(axis=-1)

    estimate = float(np.asarray(statistic(x[None]))[0])
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    stats = np.asarray(statistic(x[idx]), dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return estimate, float(low), float(high)


def _mean_difference(z: np.ndarray) -> np.ndarray:
    return (z[..., 0] - z[..., 1]).mean(axis=-1)


def paired_difference(
    a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of the per-condition differences ``a - b`` with its percentile bootstrap interval.

    Conditions are resampled together for both sides (paired); a condition with a NaN on either side
    is dropped. "``a`` beats ``b``" means the interval lies above 0 (below 0 for errors).

    Parameters
    ----------
    a, b
        ``(n,)`` scores of the same conditions, in the same order.
    n_boot, level, seed
        As in :func:`bootstrap_interval`.

    Returns
    -------
    ``(difference, low, high)``.

    Raises
    ------
    ValueError
        If ``a`` and ``b`` differ in length, and as :func:`bootstrap_interval`.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of the same length, got shapes {a.shape} and {b.shape}.")
    return bootstrap_interval(np.stack([a, b], axis=1), _mean_difference, n_boot=n_boot, level=level, seed=seed)


def _skill(z: np.ndarray) -> np.ndarray:
    """``1 - mean(error) / mean(reference error)`` over rows of ``(…, n, 2)``."""
    return 1.0 - z[..., 0].mean(axis=-1) / z[..., 1].mean(axis=-1)


def _skill_difference(z: np.ndarray) -> np.ndarray:
    """Skill of column 0 minus skill of column 1, both against column 2, over rows of ``(…, n, 3)``."""
    return (z[..., 1].mean(axis=-1) - z[..., 0].mean(axis=-1)) / z[..., 2].mean(axis=-1)


def _per_condition(scores: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean over seeds (or any repeated rows) of each method's score per condition: method × condition rows."""
    return scores.groupby(["method", "condition"], sort=False)[list(metrics)].mean()


def summarize_perturbation_scores(
    scores: pd.DataFrame,
    *,
    baselines: Sequence[str],
    metrics: Sequence[str] | None = None,
    skill_reference: str = "mean",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Every method's score with a bootstrap interval, and its paired difference from the best baseline.

    Each method's score of a condition is first averaged over the rows it has for that condition (model
    seeds); the condition is the unit of resampling. For each metric:

    - ``estimate``, ``low``, ``high``: the mean over conditions and its percentile bootstrap interval
      (:func:`bootstrap_interval`); for the skill scores of :data:`SKILL_METRICS` (``l2_skill``,
      ``mse_de_skill``), ``1 - mean(error) / mean(error of skill_reference)`` over the same conditions;
    - ``degenerate``: the score is :data:`DEGENERATE_VALUE` on every condition (0 by construction: a
      correlation with a constant side, the skill of ``skill_reference`` itself, ...);
    - ``best_baseline``: the baseline with the best estimate among those that are not degenerate
      (highest; lowest for :data:`~genohoption.tl._perturbation.ERROR_METRICS`);
    - ``difference``, ``difference_low``, ``difference_high``: for a method that is not a baseline, its
      paired difference from ``best_baseline`` over the conditions both scored (:func:`paired_difference`;
      for skills, the difference of the skills), with the interval. Positive means better, for errors
      too (baseline minus method).

    Parameters
    ----------
    scores
        Per-condition scores: columns ``method``, ``condition`` and the metrics (e.g. the ``scores`` of
        :func:`evaluate_perturbation`, several folds and seeds concatenated).
    baselines
        The methods that are baselines.
    metrics
        Metrics to summarise; default the columns of :data:`METRICS` present, plus the skills when their
        errors and ``skill_reference`` are present.
    skill_reference
        Method whose errors the skills divide by (default ``"mean"``, the mean baseline).
    n_boot, level, seed
        As in :func:`bootstrap_interval`; every interval uses the same resamples of the conditions.

    Returns
    -------
    DataFrame with one row per (``method``, ``metric``) and the columns ``estimate``, ``low``, ``high``,
    ``n_conditions``, ``degenerate``, ``best_baseline``, ``difference``, ``difference_low``,
    ``difference_high``.

    Raises
    ------
    KeyError
        If ``scores`` lacks ``method``, ``condition`` or a metric asked for.
    """
    for col in ("method", "condition"):
        if col not in scores:
            raise KeyError(f"scores has no {col!r} column; columns: {list(scores.columns)}.")
    present = [m for m in METRICS if m in scores]
    plain = list(present if metrics is None else [m for m in metrics if m not in SKILL_METRICS])
    missing = [m for m in plain if m not in scores]
    if missing:
        raise KeyError(f"scores has no column for {missing!r}.")
    methods = list(dict.fromkeys(scores["method"]))
    skills = [s for s, err in SKILL_METRICS.items() if err in scores and skill_reference in methods
              and (metrics is None or s in metrics)]
    errors = sorted({SKILL_METRICS[s] for s in skills})
    table = _per_condition(scores, list(dict.fromkeys([*plain, *errors])))
    lower_better = set(ERROR_METRICS)
    rows = []
    per_method: dict[tuple[str, str], pd.Series] = {}
    for metric in [*plain, *skills]:
        error = SKILL_METRICS.get(metric)
        ref = table.loc[skill_reference, error] if error is not None else None
        for method in methods:
            col = table.loc[method, error if error is not None else metric]
            if error is not None:
                pair = pd.concat([col, ref], axis=1, join="inner").to_numpy()
                est, low, high = bootstrap_interval(pair, _skill, n_boot=n_boot, level=level, seed=seed)
                values = _skill(pair[None])[0] if pair.size else np.nan
                degenerate = method == skill_reference or bool(np.isclose(values, DEGENERATE_VALUE, atol=0))
                n = int((~np.isnan(pair).any(1)).sum())
            else:
                est, low, high = bootstrap_interval(col.to_numpy(), n_boot=n_boot, level=level, seed=seed)
                finite = col.dropna().to_numpy()
                degenerate = bool(finite.size) and bool((finite == DEGENERATE_VALUE).all())
                n = int(finite.size)
            per_method[(method, metric)] = col
            rows.append({"method": method, "metric": metric, "estimate": est, "low": low, "high": high,
                         "n_conditions": n, "degenerate": degenerate})
    out = pd.DataFrame(rows)
    out["best_baseline"] = None
    for key in ("difference", "difference_low", "difference_high"):
        out[key] = np.nan
    for metric in [*plain, *skills]:
        here = out[(out["metric"] == metric)]
        eligible = here[here["method"].isin(baselines) & ~here["degenerate"] & here["estimate"].notna()]
        if eligible.empty:
            continue
        pick = eligible["estimate"].idxmin() if metric in lower_better else eligible["estimate"].idxmax()
        best = str(out.loc[pick, "method"])
        out.loc[here.index, "best_baseline"] = best
        error = SKILL_METRICS.get(metric)
        for i in here.index:
            method = out.loc[i, "method"]
            if method in baselines:
                continue
            if error is not None:
                z = pd.concat([table.loc[method, error], table.loc[best, error], table.loc[skill_reference, error]],
                              axis=1, join="inner").to_numpy()
                diff = bootstrap_interval(z, _skill_difference, n_boot=n_boot, level=level, seed=seed)
            else:
                pair = pd.concat([per_method[(method, metric)], per_method[(best, metric)]], axis=1, join="inner")
                a, b = pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy()
                diff = (paired_difference(b, a, n_boot=n_boot, level=level, seed=seed) if metric in lower_better
                        else paired_difference(a, b, n_boot=n_boot, level=level, seed=seed))
            out.loc[i, ["difference", "difference_low", "difference_high"]] = diff
    return out


def _split_halves(values: pd.Series, conditions: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of two disjoint random halves (``floor(n / 2)`` cells each) of each condition's cells."""
    rng = np.random.default_rng(seed)
    first = np.zeros(values.size, dtype=bool)
    second = np.zeros(values.size, dtype=bool)
    for c in conditions:
        rows = rng.permutation(np.flatnonzero((values == c).to_numpy()))
        h = rows.size // 2
        first[rows[:h]] = True
        second[rows[h : 2 * h]] = True
    return first, second


def perturbation_noise_ceiling(
    adata: AnnData,
    conditions: Sequence[str],
    *,
    seed: int = 0,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    layer: str | None = None,
    **metric_kwargs,
) -> pd.DataFrame:
    """Split-half noise ceiling: how well one half of a condition's cells predicts the other half.

    Each condition's cells are split into two disjoint random halves of ``floor(n / 2)`` cells (seeded);
    the centroid of the first half is the "prediction", scored by :func:`perturbation_metrics` against
    the second half (its centroid, and the second halves of the other conditions as centroid-accuracy
    candidates), with the top DE genes of the whole data and the same control cells and perturbed
    reference. A model cannot be expected to beat what a second sample of the same cells scores; the
    scores are at half depth (two halves of ``n`` cells agree less than two samples of ``n``).

    Parameters
    ----------
    adata
        The screen, ``(n_obs, n_vars)``, as for :func:`perturbation_metrics`.
    conditions
        The scored conditions (each needs 4 cells or more).
    seed
        Seed of the halves (default 0).
    perturbation_key, control_value, layer
        As for :func:`perturbation_metrics`.
    **metric_kwargs
        Passed to :func:`perturbation_metrics` (``perturbed_reference``, ``gene_symbols``, ``n_de``,
        ``de_filter``, ``de_genes``, ...).

    Returns
    -------
    Per-condition DataFrame of :data:`METRICS` and ``n_cells`` (cells of the second half), as
    :func:`perturbation_metrics`. Nothing is written to ``adata``.

    Raises
    ------
    ValueError
        If a condition has fewer than 4 cells, and as :func:`perturbation_metrics`.
    """
    values = check_obs_key(adata, perturbation_key, "perturbation_key").astype(str)
    conds = list(conditions)
    counts = values.value_counts()
    small = [c for c in conds if counts.get(c, 0) < 4]
    if small:
        raise ValueError(f"Conditions {small[:5]!r} have fewer than 4 cells: two halves of 2 cells are needed.")
    kwargs = dict(metric_kwargs)
    if kwargs.get("de_genes") is None:
        kwargs["de_genes"] = top_de_genes(adata, perturbation_key, control_value, conditions=conds,
                                          n_genes=kwargs.pop("n_de", 20), layer=layer,
                                          gene_filter=kwargs.pop("de_filter", "all"))
    if kwargs.get("perturbed_reference") is None:
        from .._constants import SPLIT_KEY
        from ._perturbation import _reference_conditions

        kwargs["perturbed_reference"] = _reference_conditions(
            adata, values, control_mask(values, control_value), conds, kwargs.pop("split_key", SPLIT_KEY),
            perturbation_key)
    first, second = _split_halves(values, conds, seed)
    scored = values.isin(conds).to_numpy()
    X = adata.X if layer is None else adata.layers[layer]
    pred = pd.DataFrame(np.stack([np.asarray(X[first & (values == c).to_numpy()].astype(np.float64).mean(0)).ravel()
                                  for c in conds]), index=conds, columns=adata.var_names)
    half = adata[~scored | second]
    return perturbation_metrics(half, pred, perturbation_key=perturbation_key, control_value=control_value,
                                layer=layer, **kwargs)


def perturbation_shuffle_null(
    adata: AnnData,
    predicted: AnnData | pd.DataFrame,
    *,
    n_permutations: int = 200,
    seed: int = 0,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    **metric_kwargs,
) -> pd.DataFrame:
    """Shuffle null: the metrics of predictions permuted at random across the scored conditions.

    Each permutation gives condition ``p`` the prediction of condition ``π(p)`` (a uniformly random
    permutation, seeded; fixed points allowed) and scores it with :func:`perturbation_metrics` against
    the same observations. A method whose score does not exceed most permutations' predicts nothing
    specific to each condition. With ``k`` scored conditions there are ``k!`` permutations: a few
    conditions give a coarse null.

    Parameters
    ----------
    adata
        Observed cells, as for :func:`perturbation_metrics`.
    predicted
        Mean predicted profiles of the scored conditions (as for :func:`perturbation_metrics`).
    n_permutations
        Number of permutations (default 200).
    seed
        Seed of :func:`numpy.random.default_rng` (default 0).
    perturbation_key, control_value
        As for :func:`perturbation_metrics`.
    **metric_kwargs
        Passed to :func:`perturbation_metrics`.

    Returns
    -------
    Long DataFrame: ``permutation``, ``condition`` and the columns of :data:`METRICS` (one row per
    permutation and condition; average over ``condition`` for the null of a mean). Nothing is written
    to ``adata``.

    Raises
    ------
    ValueError
        For ``n_permutations`` below 1, and as :func:`perturbation_metrics`.
    """
    n_permutations = _check_positive_int(n_permutations, "n_permutations")
    pred = _as_frame(predicted)
    conds = [c for c in pred.index if c != control_value]
    n_inputs = None if isinstance(predicted, pd.DataFrame) or "n_cells" not in predicted.obs \
        else predicted.obs["n_cells"].to_numpy()
    kwargs = {"n_de": 20, "n_expressed": 1000, "layer": None, "de_genes": None, "de_filter": "all",
              "gene_symbols": None, "perturbed_reference": None, "split_key": "split", "control_cells": None,
              "centroid_candidates": None}
    unknown = set(metric_kwargs) - set(kwargs)
    if unknown:
        raise TypeError(f"Unknown arguments {sorted(unknown)!r} of perturbation_shuffle_null.")
    kwargs.update(metric_kwargs)
    check_obs_key(adata, perturbation_key, "perturbation_key")
    obs = _observed(adata, pred.columns, conds, perturbation_key=perturbation_key, control_value=control_value,
                    n_inputs=n_inputs, **kwargs)
    P = pred.loc[conds].to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    tables = []
    for k in range(n_permutations):
        table = _score(obs, P[rng.permutation(len(conds))]).drop(columns="n_cells").reset_index()
        table.insert(0, "permutation", k)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def shuffle_null_summary(null: pd.DataFrame, observed: Mapping[str, float], *, level: float = 0.95) -> pd.DataFrame:
    """Mean of each metric over the conditions of every permutation, summarised against an observed mean.

    Parameters
    ----------
    null
        Output of :func:`perturbation_shuffle_null` (several of them concatenated, e.g. one per fold with
        the same permutation numbers, pools the folds: permutation ``k`` of every fold forms one draw).
    observed
        ``{metric: observed mean over the same conditions}``.
    level
        Coverage of the null interval (default 0.95).

    Returns
    -------
    DataFrame indexed by metric: ``null_mean``, ``null_low``, ``null_high`` (quantiles of the permutation
    means), ``observed`` and ``p_value`` = ``(1 + #{null ≥ observed}) / (1 + n_permutations)`` (``≤`` for
    errors); NaN where the metric is undefined (no finite draw).
    """
    means = null.drop(columns="condition").groupby("permutation").mean()
    alpha = (1.0 - level) / 2.0
    rows = {}
    for metric, value in observed.items():
        draws = means[metric].dropna().to_numpy()
        if draws.size == 0 or not np.isfinite(value):  # e.g. centroid accuracy of a single condition
            rows[metric] = dict.fromkeys(("null_mean", "null_low", "null_high", "p_value"), float("nan"))
            rows[metric]["observed"] = float(value)
            continue
        worse = draws <= value if metric in ERROR_METRICS else draws >= value
        rows[metric] = {"null_mean": float(draws.mean()), "null_low": float(np.quantile(draws, alpha)),
                        "null_high": float(np.quantile(draws, 1 - alpha)), "observed": float(value),
                        "p_value": float((1 + worse.sum()) / (1 + draws.size))}
    return pd.DataFrame.from_dict(rows, orient="index")
