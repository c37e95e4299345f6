"""Reverse perturbation: which perturbation would produce an observed state (scGPT's reverse perturbation).

No torch here: the predictions come from any object with ``predict_perturbation(ctrl, conditions)`` (a
perturbation :class:`~genohoption.GenoHoptionModel` or a baseline of :mod:`genohoption.tl`), or are given
as an AnnData of predicted profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._validate import (
    as_anndata,
    check_obs_key,
    check_unique_var_names,
    check_values,
    get_matrix,
    matrix_name,
)

if TYPE_CHECKING:
    from anndata import AnnData

RANKING_METRICS = ("pearson_delta", "cosine_delta", "mse")
"""Scores of :func:`rank_perturbations` (higher = better match; ``"mse"`` is negated)."""

OBSERVED = "observed"
"""Name of the one observed profile when ``groupby`` is ``None``."""


def _mean(X) -> np.ndarray:
    return np.asarray(X.mean(0), dtype=np.float64).ravel()


def _profiles(adata: AnnData, layer: str | None, groupby: str | None) -> pd.DataFrame:
    """Mean expression per group of ``adata`` (groups × genes)."""
    X = get_matrix(adata, layer)
    check_values(X, matrix_name(layer))
    if groupby is None:
        return pd.DataFrame(_mean(X)[None, :], index=[OBSERVED], columns=adata.var_names.astype(str))
    labels = check_obs_key(adata, groupby, "groupby").astype(str).to_numpy()
    names = list(dict.fromkeys(labels))
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    rows = [_mean(X[np.flatnonzero(labels == g)]) for g in names]
    return pd.DataFrame(np.vstack(rows), index=names, columns=adata.var_names.astype(str))


def _score(pred: np.ndarray, obs: np.ndarray, metric: str) -> np.ndarray:
    """``(n_candidates,)`` scores of predicted changes ``pred`` ``(n_candidates, n)`` against ``obs`` ``(n,)``."""
    if metric == "mse":
        return -((pred - obs) ** 2).mean(1)
    if metric == "pearson_delta":
        pred = pred - pred.mean(1, keepdims=True)
        obs = obs - obs.mean()
    num = pred @ obs
    den = np.linalg.norm(pred, axis=1) * np.linalg.norm(obs)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = num / den
    return np.where(den > 1e-12, score, np.nan)  # an unchanged profile has no direction: no score


def rank_perturbations(
    predictor: Any,
    ctrl: AnnData,
    observed: AnnData,
    candidates: Sequence[str] | None = None,
    *,
    groupby: str | None = None,
    metric: str = "pearson_delta",
    genes: Sequence[str] | None = None,
    layer: str | None = None,
) -> pd.DataFrame:
    """Rank candidate perturbations by how well their predicted profiles match an observed state.

    Reverse perturbation (scGPT, Cui et al. 2024): every candidate condition is predicted from the same
    control cells; each observed profile (the mean of its cells) is compared with every candidate's
    predicted mean profile, as changes from the control mean, and the candidates are ranked by the score.

    Parameters
    ----------
    predictor
        A perturbation model or baseline: any object with ``predict_perturbation(ctrl, conditions)``
        returning an AnnData of mean predicted profiles for a list of conditions
        (:meth:`~genohoption.GenoHoptionModel.predict_perturbation`,
        :meth:`~genohoption.tl.PerturbationBaseline.predict_perturbation`); or that AnnData itself
        ``(n_candidates, n_vars)`` (``obs_names`` = conditions), to rank against predictions made once.
    ctrl
        Control cells ``(n_ctrl, n_vars)``: the input of the predictions and the reference of the changes.
    observed
        Perturbed cells ``(n_obs, n_vars)`` whose perturbation is sought, same kind of values as ``ctrl``.
    candidates
        GEARS conditions to rank (``"A+ctrl"``, ``"A+B"``). Default (``None``): the conditions of
        ``predictor`` when it is an AnnData of predictions; required otherwise.
    groupby
        Column of ``observed.obs``: one observed profile per group (e.g. the true condition, to measure
        hit rates with :func:`perturbation_hit_rates`). ``None``: one profile of all cells, named
        ``"observed"``.
    metric
        ``"pearson_delta"`` (default; Pearson correlation of the predicted and the observed change from the
        control mean), ``"cosine_delta"`` (cosine of the two changes) or ``"mse"`` (negative mean squared
        error of the profiles). A prediction that does not change the control profile scores NaN (last,
        tied with the other NaN candidates).
    genes
        Genes compared (``var_names``); default every gene shared by ``ctrl``, ``observed`` and the
        predictions.
    layer
        Layer of ``ctrl`` and ``observed`` with the expression (``None``: ``X``).

    Returns
    -------
    :class:`~pandas.DataFrame`, one row per (observed profile, candidate), sorted by observed profile and
    rank, with columns ``observed``, ``candidate``, ``score``, ``rank`` (1 + number of candidates scoring
    strictly better; tied candidates share it) and ``n_tied`` (candidates with that same score, itself
    included). Nothing is written to the AnnData objects except the predictor's own record of its call.

    Raises
    ------
    ValueError
        Unknown ``metric``, no candidate, no shared gene, a gene of ``genes`` missing, or a candidate not in
        the given predictions.
    KeyError
        If ``groupby`` or ``layer`` is missing.
    TypeError
        If ``predictor`` has no ``predict_perturbation`` and is not an AnnData.

    Examples
    --------
    >>> ranking = gh.tl.rank_perturbations(model, ctrl, perturbed, conditions, groupby="condition")
    >>> gh.tl.perturbation_hit_rates(ranking, k=(1, 3))
    """
    from anndata import AnnData

    if metric not in RANKING_METRICS:
        raise ValueError(f"metric={metric!r} is unknown; choose one of {RANKING_METRICS}.")
    ctrl, observed = as_anndata(ctrl, name="ctrl"), as_anndata(observed, name="observed")
    check_unique_var_names(ctrl)
    check_unique_var_names(observed)
    if isinstance(predictor, AnnData):
        predicted = predictor
        names = predicted.obs_names.astype(str)
        candidates = list(names) if candidates is None else list(candidates)
        missing = [c for c in candidates if c not in names]
        if missing:
            raise ValueError(f"candidates {missing[:5]} are not among the given predictions (obs_names); predict "
                             "them first.")
        predicted = predicted[candidates]
    else:
        if not callable(getattr(predictor, "predict_perturbation", None)):
            raise TypeError(f"predictor must have predict_perturbation(ctrl, conditions) or be an AnnData of "
                            f"predicted profiles, got {type(predictor).__name__}.")
        if candidates is None or isinstance(candidates, str) or not len(candidates):
            raise ValueError("Pass candidates: a list of the conditions to rank (e.g. ['STAT1+ctrl', ...]).")
        candidates = list(candidates)
        predicted = predictor.predict_perturbation(ctrl.copy(), candidates)
    if not candidates:
        raise ValueError("No candidate to rank.")
    ctrl_mean = pd.Series(_mean(get_matrix(ctrl, layer)), index=ctrl.var_names.astype(str))
    obs = _profiles(observed, layer, groupby)
    pred = pd.DataFrame(np.asarray(predicted.X.toarray() if sp.issparse(predicted.X) else predicted.X,
                                   dtype=np.float64),
                        index=candidates, columns=predicted.var_names.astype(str))
    shared = ctrl_mean.index.intersection(obs.columns).intersection(pred.columns)
    if genes is not None:
        genes = pd.Index([str(g) for g in genes])
        absent = genes.difference(shared)
        if len(absent):
            raise ValueError(f"genes {absent[:5].tolist()} are not in ctrl, observed and the predictions.")
        shared = genes
    if not len(shared):
        raise ValueError("ctrl, observed and the predictions share no gene (var_names).")
    base = ctrl_mean[shared].to_numpy()
    d_pred = pred[shared].to_numpy() - base
    # a prediction equal to the control mean up to float32 round-off (profiles are stored in float32) is no change
    d_pred[np.abs(d_pred).max(1) <= 1e-6 * max(float(np.abs(base).max()), 1e-30)] = 0.0
    rows = []
    for name, profile in obs[shared].iterrows():
        score = _score(d_pred, profile.to_numpy() - base, metric)
        # ties up to rounding (identical predictions can differ in the last bits of a matrix product)
        key = np.where(np.isnan(score), -np.inf, np.round(score, 10))
        better = (key[None, :] > key[:, None]).sum(1)
        tied = (key[None, :] == key[:, None]).sum(1)
        order = np.lexsort((np.arange(key.size), -key))
        for i in order:
            rows.append((name, candidates[i], float(score[i]), int(better[i]) + 1, int(tied[i])))
    return pd.DataFrame(rows, columns=["observed", "candidate", "score", "rank", "n_tied"])


def perturbation_hit_rates(ranking: pd.DataFrame, k: Sequence[int] = (1, 3, 5), *,
                           truth: dict[str, str] | None = None) -> pd.DataFrame:
    """Top-k hit rates of a :func:`rank_perturbations` ranking, ties broken at random (in expectation).

    An observed profile is a hit at ``k`` when its true condition is among the ``k`` best-ranked
    candidates. Tied candidates are ordered at random: a true condition tied with ``m`` candidates from rank
    ``r`` counts ``clip((k - r + 1) / m, 0, 1)``, so a ranking that cannot tell the candidates apart scores
    the random ranking's ``k / n_candidates``.

    Parameters
    ----------
    ranking
        Output of :func:`rank_perturbations`.
    k
        Cut-offs.
    truth
        Observed profile → its true condition; default: each observed profile's name is its condition
        (``groupby`` = the condition column).

    Returns
    -------
    :class:`~pandas.DataFrame` indexed by observed profile, one column ``top{k}`` per cut-off (expected
    hit, in ``[0, 1]``) and ``rank`` (the true condition's rank); the mean over rows is the hit rate.

    Raises
    ------
    ValueError
        If an observed profile's true condition is not among its candidates, or a ``k`` is not a positive
        integer.
    """
    if not len(k) or any(isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 1 for x in k):
        raise ValueError(f"k must be positive integers, got {k!r}.")
    out = {}
    for name, part in ranking.groupby("observed", sort=False):
        true = (truth or {}).get(name, name)
        row = part[part["candidate"] == true]
        if row.empty:
            raise ValueError(f"The true condition {true!r} of observed profile {name!r} is not among its "
                             "candidates; add it to candidates or pass truth=.")
        r, m = int(row["rank"].iloc[0]), int(row["n_tied"].iloc[0])
        out[name] = {f"top{x}": float(np.clip((x - r + 1) / m, 0.0, 1.0)) for x in k} | {"rank": r}
    return pd.DataFrame.from_dict(out, orient="index")


__all__ = ["RANKING_METRICS", "perturbation_hit_rates", "rank_perturbations"]
