"""Shared plotting helpers."""

from __future__ import annotations

import matplotlib.pyplot as plt


def _finish(axes, show: bool | None):
    """Show the figure and return ``None`` if ``show``, else return ``axes`` (scanpy's convention)."""
    if show:
        plt.show()
        return None
    return axes
