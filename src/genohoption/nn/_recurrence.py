"""The diffusion recurrences (PPR, heat kernel, mask), their parameters and their checks.

Source: Cheng et al., "Bridging Gene Network Graphs and Single-Cell Foundation Models", eqs. 6-8, 10.
Every method is one linear recurrence over the attention matrix ``A``:
``X_0 = c0 V``; ``X_k = a_k A X_{k-1} + b_k V`` for ``k = 1..K``; output ``scale * sum_k w_k X_k``.

============  ======  ==================  ==========  ====================  ===================================
method        ``c0``  ``a_k``             ``b_k``     ``w_k``               ``scale``
============  ======  ==================  ==========  ====================  ===================================
``"ppr"``     1       ``1 - alpha``       ``alpha``   1 at ``k = K``        1
``"heat"``    e^-t    ``t / k``           0           1                     1, or ``1 / (e^-t sum t^k / k!)``
``"mask"``    1       1                   0           1 at ``k = K = 1``    1
============  ======  ==================  ==========  ====================  ===================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["METHODS", "Recurrence", "check_params", "recurrence"]

METHODS = ("ppr", "heat", "mask")
"""Sparse attention kinds of :func:`~genohoption.nn.graph_diffusion_attention`."""


def check_params(
    method: str, n_hops: int, alpha: float, t: float, methods: tuple[str, ...] = METHODS
) -> None:
    """Raise :class:`ValueError` unless ``method`` is in ``methods``, ``n_hops >= 1``, ``0 < alpha <= 1``, ``t > 0``."""
    if method not in methods:
        raise ValueError(
            f"Unknown attention method {method!r}; choose one of {', '.join(map(repr, methods))}."
        )
    if isinstance(n_hops, bool) or not isinstance(n_hops, int) or n_hops < 1:
        raise ValueError(f"n_hops must be an integer >= 1, got {n_hops!r}.")
    if not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha (PPR teleport probability) must be in (0, 1], got {alpha!r}.")
    if not float(t) > 0.0:
        raise ValueError(f"t (heat-kernel diffusion time) must be > 0, got {t!r}.")


@dataclass(frozen=True)
class Recurrence:
    """``X_0 = c0 V``; ``X_k = a_k A X_{k-1} + b_k V``; output ``scale * sum_k w_k X_k`` (``w`` is 0/1)."""

    method: str
    c0: float
    alpha: float
    t: float
    normalize: bool

    def a(self, k: int) -> float:
        """Coefficient of ``A X_{k-1}`` in hop ``k`` (``k >= 1``)."""
        if self.method == "ppr":
            return 1.0 - self.alpha
        if self.method == "heat":
            return self.t / k
        return 1.0

    def b(self, k: int) -> float:
        """Coefficient of ``V`` in hop ``k`` (the PPR teleport term)."""
        return self.alpha if self.method == "ppr" else 0.0

    def w(self, k: int, n_hops: int) -> float:
        """Weight (0 or 1) of ``X_k`` in the output of ``n_hops`` hops."""
        if self.method == "heat":
            return 1.0
        return 1.0 if k == n_hops else 0.0

    def scale(self, n_hops: int) -> float:
        """Factor on the output of ``n_hops`` hops (heat with ``normalize``: truncated weights sum to 1)."""
        if self.method == "heat" and self.normalize:
            return 1.0 / (math.exp(-self.t) * sum(self.t**k / math.factorial(k) for k in range(n_hops + 1)))
        return 1.0


def recurrence(method: str, alpha: float, t: float, normalize: bool) -> Recurrence:
    """Return the :class:`Recurrence` of ``method`` (parameters of :func:`~genohoption.nn.graph_diffusion_attention`)."""
    c0 = math.exp(-t) if method == "heat" else 1.0
    return Recurrence(method, c0, float(alpha), float(t), bool(normalize))
