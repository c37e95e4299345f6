"""What the last call of :func:`~genohoption.nn.graph_diffusion_attention` did: hops run, convergence."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DiffusionStats", "last_diffusion_stats", "record_stats"]


@dataclass(frozen=True)
class DiffusionStats:
    """What the last call of :func:`~genohoption.nn.graph_diffusion_attention` did.

    Attributes
    ----------
    method
        ``"ppr"``, ``"heat"`` or ``"mask"``.
    n_hops
        Hops actually run (``< n_hops`` requested when ``tol`` stopped early).
    residual
        Last relative change ``||V_k - V_{k-1}|| / ||V_k||`` (PPR) or ``||V_k|| / ||sum_{i<=k} V_i||``
        (heat); ``None`` when ``tol`` was not given.
    converged
        Whether ``residual < tol``; ``None`` when ``tol`` was not given.
    """

    method: str
    n_hops: int
    residual: float | None = None
    converged: bool | None = None


_LAST_STATS: DiffusionStats | None = None


def last_diffusion_stats() -> DiffusionStats | None:
    """Return the :class:`DiffusionStats` of the most recent :func:`~genohoption.nn.graph_diffusion_attention` call.

    One value per process (the last forward pass of any layer); ``None`` before the first call.
    """
    return _LAST_STATS


def record_stats(stats: DiffusionStats) -> None:
    """Make ``stats`` what :func:`last_diffusion_stats` returns (called by the engine's forward pass)."""
    global _LAST_STATS
    _LAST_STATS = stats
