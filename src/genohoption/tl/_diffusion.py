"""Graph diffusion of a gene × gene weight matrix: the receptive field of K hops (scipy only, no torch).

The operator is the one the attention layers apply to the values (Cheng et al., eqs. 6-8, 10), written for a
fixed matrix ``P``: PPR ``alpha sum_{k<K} ((1 - alpha) P)^k + ((1 - alpha) P)^K``; heat
``e^{-t} sum_{k<=K} t^k / k! P^k`` (renormalised to weights summing to 1 with ``normalize``); mask ``P``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

DIFFUSIONS = ("ppr", "heat", "mask")
"""Diffusion kinds of :func:`diffusion_operator` (the sparse attention kinds)."""


def row_normalize(P: sp.spmatrix) -> sp.csr_matrix:
    """``P`` with every non-empty row divided by its sum (rows become probability distributions)."""
    P = sp.csr_matrix(P, dtype=np.float64)
    sums = np.asarray(P.sum(1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(scale) @ P)


def _prune(M: sp.csr_matrix, min_weight: float) -> sp.csr_matrix:
    if min_weight > 0:
        M.data[np.abs(M.data) < min_weight] = 0.0
        M.eliminate_zeros()
    return M


def diffusion_operator(P: sp.spmatrix, method: str = "ppr", *, n_hops: int = 6, alpha: float = 0.25,
                       t: float = 5.0, normalize: bool = False, min_weight: float = 1e-4) -> sp.csr_matrix:
    """Return the K-hop diffusion operator ``M = poly(P)`` of a row-stochastic gene × gene matrix ``P``.

    ``M[i, j]`` is the weight with which gene ``j``'s value reaches gene ``i`` after the diffusion
    (``i`` attends to ``j`` through paths of at most ``n_hops`` edges), computed by the same recurrence as
    the attention layers: ``X_0 = c0 I``; ``X_k = a_k P X_{k-1} + b_k I``; ``M = scale * sum_k w_k X_k``.

    Parameters
    ----------
    P
        ``(n, n)`` sparse, rows summing to 1 (or 0 for a gene without edges).
    method
        ``"ppr"``, ``"heat"`` or ``"mask"`` (one hop: ``M = P``).
    n_hops, alpha, t, normalize
        As for the attention layers (:class:`~genohoption.GenoHoptionModel`).
    min_weight
        Entries below this value are dropped after every hop, so that memory stays bounded (0 keeps all).

    Returns
    -------
    ``(n, n)`` CSR float64.

    Raises
    ------
    ValueError
        Unknown ``method``, non-square ``P``, ``n_hops < 1``, ``alpha`` outside ``(0, 1]``, ``t <= 0`` or
        ``min_weight < 0``.
    """
    if method not in DIFFUSIONS:
        raise ValueError(f"method={method!r} is unknown; choose one of {DIFFUSIONS}.")
    if P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be square, got shape {P.shape}.")
    if isinstance(n_hops, bool) or not isinstance(n_hops, int | np.integer) or n_hops < 1:
        raise ValueError(f"n_hops must be an integer >= 1, got {n_hops!r}.")
    if not 0.0 < alpha <= 1.0 or not t > 0 or not min_weight >= 0:
        raise ValueError(f"Need 0 < alpha <= 1, t > 0 and min_weight >= 0; got {alpha!r}, {t!r}, {min_weight!r}.")
    P = sp.csr_matrix(P, dtype=np.float64)
    if method == "mask":
        return _prune(P.copy(), min_weight)
    eye = sp.identity(P.shape[0], dtype=np.float64, format="csr")
    if method == "ppr":
        X = eye.copy()
        for _ in range(n_hops):
            X = _prune(sp.csr_matrix((1.0 - alpha) * (P @ X) + alpha * eye), min_weight)
        return X
    X = math.exp(-t) * eye
    total = X.copy()
    for k in range(1, n_hops + 1):
        X = _prune(sp.csr_matrix((t / k) * (P @ X)), min_weight * math.exp(-t))
        total = total + X
    if normalize:
        total = total / (math.exp(-t) * sum(t**k / math.factorial(k) for k in range(n_hops + 1)))
    return _prune(sp.csr_matrix(total), min_weight)


__all__ = ["DIFFUSIONS", "diffusion_operator", "row_normalize"]
