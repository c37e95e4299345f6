"""Calibration of class probabilities and the threshold that labels cells of unseen types (NumPy / SciPy only)."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Range searched by :func:`fit_temperature`."""


def _check_scores(scores, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-d array (n_obs, n_classes) with at least 2 classes, got shape "
                         f"{scores.shape}.")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be a 1-d array of {scores.shape[0]} class indices, got shape {labels.shape}.")
    if scores.shape[0] == 0:
        raise ValueError(f"{name} holds no cell; give at least one labelled cell.")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be integer class indices in [0, {scores.shape[1]}) (the columns of {name}).")
    return scores, labels.astype(np.int64)


def expected_calibration_error(probabilities, labels, *, n_bins: int = 15) -> float:
    """Compute the expected calibration error of the predicted class (top-label ECE).

    Cells are grouped by the probability of their predicted class into ``n_bins`` equal-width bins of
    ``[0, 1]``; the ECE is the cell-weighted mean, over the bins, of ``|accuracy - mean probability|``
    (Naeini et al. 2015; Guo et al. 2017, eq. 3). 0 is perfectly calibrated.

    Parameters
    ----------
    probabilities
        Class probabilities, ``(n_obs, n_classes)``, rows summing to 1.
    labels
        True classes, ``(n_obs,)`` integer column indices of ``probabilities``.
    n_bins
        Number of equal-width confidence bins (default 15, as Guo et al.).

    Returns
    -------
    The ECE, in ``[0, 1]``.

    Raises
    ------
    ValueError
        For shapes that do not match, no cell, values outside ``[0, 1]``, labels that are not column
        indices, or ``n_bins < 1``.
    """
    probabilities, labels = _check_scores(probabilities, labels, "probabilities")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    if probabilities.min() < 0 or probabilities.max() > 1 + 1e-6:
        raise ValueError("probabilities must lie in [0, 1] (pass softmax outputs, not logits).")
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == labels).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)  # bin k holds (k/n, (k+1)/n]; 1.0 in the last
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / len(labels))


def fit_temperature(logits, labels) -> float:
    """Temperature that minimises the negative log-likelihood of ``softmax(logits / T)`` (temperature scaling).

    One parameter fitted on held-out labelled cells (Guo et al. 2017, sec. 4.2): dividing the logits by
    ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens them; the predicted class never
    changes. The NLL is minimised over ``log T`` in :data:`TEMPERATURE_BOUNDS` with SciPy's bounded
    scalar search.

    Parameters
    ----------
    logits
        Unnormalised class scores, ``(n_obs, n_classes)``.
    labels
        True classes, ``(n_obs,)`` integer column indices of ``logits``.

    Returns
    -------
    The temperature ``T`` (``> 0``).

    Raises
    ------
    ValueError
        For shapes that do not match, no cell, non-finite logits or labels that are not column indices.
    """
    logits, labels = _check_scores(logits, labels, "logits")
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[rows, labels].mean())

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))


def scaled_probabilities(logits, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the classes, ``(n_obs, n_classes)`` float64.

    Raises
    ------
    ValueError
        If ``temperature`` is not a positive finite number.
    """
    if not (isinstance(temperature, int | float | np.floating) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def uncertainty_from_probabilities(probabilities) -> np.ndarray:
    """Per-cell uncertainty ``1 - max_k p_k``, ``(n_obs,)`` in ``[0, 1 - 1/n_classes]``.

    With calibrated probabilities it estimates the chance that the predicted class is wrong.
    """
    return 1.0 - np.asarray(probabilities, dtype=np.float64).max(1)


def unknown_threshold(uncertainty, *, false_unknown_rate: float = 0.05) -> float:
    """Uncertainty above which a cell is called "Unknown", chosen on held-out cells of known types.

    The threshold is the ``ceil((n + 1)(1 - rate)) / n`` empirical quantile of the uncertainties of ``n``
    held-out reference cells (conformal, split-quantile rule; Vovk et al. 2005, Angelopoulos & Bates
    2021): a new cell of a known type, exchangeable with them, is called "Unknown" with probability at
    most ``false_unknown_rate``. Cells of types absent from the reference are caught as far as they are
    more uncertain than that.

    Parameters
    ----------
    uncertainty
        Uncertainties of held-out cells of reference types, ``(n_obs,)`` (e.g. from
        :func:`uncertainty_from_probabilities`).
    false_unknown_rate
        Largest fraction of known-type cells that may be called "Unknown", in ``(0, 1)``.

    Returns
    -------
    The threshold: cells with ``uncertainty > threshold`` are "Unknown". With too few cells for the
    requested rate (``(n + 1)(1 - rate) > n``), the largest value observed.

    Raises
    ------
    ValueError
        For an empty or non-finite ``uncertainty`` or a rate outside ``(0, 1)``.
    """
    u = np.sort(np.asarray(uncertainty, dtype=np.float64).ravel())
    if u.size == 0 or not np.isfinite(u).all():
        raise ValueError("uncertainty must hold at least one finite value (held-out cells of known types).")
    if not 0.0 < false_unknown_rate < 1.0:
        raise ValueError(f"false_unknown_rate must be in (0, 1), got {false_unknown_rate!r}.")
    n = u.size
    rank = min(math.ceil((n + 1) * (1.0 - false_unknown_rate)), n)  # 1-based rank of the quantile
    return float(u[rank - 1])
