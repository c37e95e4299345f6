"""Plots of a trained model: training history and confusion matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix as _confusion

from .._constants import PREDICTION_KEY
from ._utils import _finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

    from ..model import GenoHoptionModel


def training_history(
    model: GenoHoptionModel,
    keys: tuple[str, ...] = ("train_loss", "validation_loss"),
    *,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Plot per-epoch curves from ``model.history_``.

    Parameters
    ----------
    model
        A trained :class:`~genohoption.GenoHoptionModel`.
    keys
        Entries of ``model.history_`` to draw (e.g. ``"validation_accuracy"``); missing ones are skipped.
    ax
        Axes to draw into; a new figure if ``None``.
    show
        Show the figure and return ``None``.

    Returns
    -------
    The Axes, unless ``show=True``.

    Raises
    ------
    ValueError
        If the model has no history (not trained) or none of ``keys`` is in it.
    """
    history = getattr(model, "history_", None) or {}
    present = [k for k in keys if k in history]
    if not present:
        raise ValueError(f"None of {keys} is in model.history_ (has: {list(history)}); train the model first.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    for key in present:
        series = history[key].iloc[:, 0].astype(float)
        ax.plot(np.arange(1, len(series) + 1), series.to_numpy(), marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.legend(frameon=False)
    return _finish(ax, show)


def confusion_matrix(
    adata: AnnData,
    labels_key: str,
    *,
    prediction_key: str = PREDICTION_KEY,
    normalize: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Heatmap of true (rows) against predicted (columns) cell types.

    Parameters
    ----------
    adata
        Annotated data with ``adata.obs[labels_key]`` and ``adata.obs[prediction_key]``.
    labels_key
        Column with true cell types.
    prediction_key
        Column with predictions (written by :meth:`~genohoption.GenoHoptionModel.predict`).
    normalize
        Show each row as fractions of the true type (rows sum to 1) rather than counts.
    ax
        Axes to draw into; a new figure if ``None``.
    show
        Show the figure and return ``None``.

    Returns
    -------
    The Axes, unless ``show=True``.

    Raises
    ------
    KeyError
        If either column is missing.
    """
    for key in (labels_key, prediction_key):
        if key not in adata.obs:
            raise KeyError(f"{key!r} is not a column of adata.obs.")
    truth = adata.obs[labels_key].astype(str)
    pred = adata.obs[prediction_key].astype(str)
    classes = sorted(set(truth) | set(pred))
    cm = _confusion(truth, pred, labels=classes).astype(float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * len(classes) + 2, 0.45 * len(classes) + 1.5))
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _finish(ax, show)
