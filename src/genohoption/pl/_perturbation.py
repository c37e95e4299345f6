"""Plot of predicted against observed perturbation effects, the baselines beside the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._conditions import control_mask
from ._utils import _finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes


def _profiles(pred) -> pd.DataFrame:
    if isinstance(pred, pd.DataFrame):
        return pred
    X = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    return pd.DataFrame(X, index=pred.obs_names, columns=pred.var_names)


def perturbation_response(
    adata: AnnData,
    predictions: Mapping[str, AnnData | pd.DataFrame],
    conditions: str | Sequence[str],
    *,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    n_genes: int = 10,
    layer: str | None = None,
    gene_symbols: str | None = None,
    de_genes: Mapping[str, np.ndarray] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Observed and predicted change from control of each condition's top DE genes, one marker per method.

    For each condition, its ``n_genes`` top differentially expressed genes against control
    (:func:`genohoption.tl.top_de_genes`) are laid out along the x axis; a grey bar is the observed
    change ``y_p - c`` (mean of the condition's cells minus the control mean), a marker per method its
    predicted change ``ŷ_p - c``. Pass the model and its baselines together, so that every effect is
    read against them.

    Parameters
    ----------
    adata
        Observed cells: control cells and the conditions' cells, ``(n_obs, n_vars)``.
    predictions
        ``{method: mean predicted profiles}`` (the AnnData returned by ``predict_perturbation`` with a
        list, or a conditions × genes DataFrame), in legend order; each must hold ``conditions``.
    conditions
        One condition or a few.
    perturbation_key, control_value
        Condition column and control condition.
    n_genes
        Top DE genes shown per condition.
    layer
        Layer of ``adata`` with the expression (``None``: ``X``).
    gene_symbols
        Column of ``adata.var`` with the gene labels (``None``: ``var_names``).
    de_genes
        Precomputed ``{condition: var positions of its top DE genes}``.
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
        If ``perturbation_key`` / ``gene_symbols`` is missing, a method lacks a condition, or a
        condition has no cell.
    ValueError
        If ``predictions`` is empty, there are no control cells, or a condition has fewer than 2 cells.
    """
    from ..tl import top_de_genes

    if perturbation_key not in adata.obs:
        raise KeyError(f"perturbation_key={perturbation_key!r} is not a column of adata.obs.")
    if gene_symbols is not None and gene_symbols not in adata.var:
        raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of adata.var.")
    if not predictions:
        raise ValueError("predictions is empty: pass {method: profiles}, e.g. the model and its baselines.")
    conds = [conditions] if isinstance(conditions, str) else list(conditions)
    values = adata.obs[perturbation_key].astype(str)
    is_ctrl = control_mask(values, control_value)
    if not is_ctrl.any():
        raise ValueError(f"No control cells (adata.obs[{perturbation_key!r}] == {control_value!r}).")
    missing = [c for c in conds if not (values == c).any()]
    if missing:
        raise KeyError(f"Conditions {missing!r} have no cells in adata.obs[{perturbation_key!r}].")
    profiles = {m: _profiles(p) for m, p in predictions.items()}
    for m, p in profiles.items():
        lacking = [c for c in conds if c not in p.index]
        if lacking:
            raise KeyError(f"The predictions of {m!r} lack conditions {lacking!r}.")
    de = dict(de_genes or {})
    todo = [c for c in conds if c not in de]
    if todo:
        de.update(top_de_genes(adata, perturbation_key, control_value, conditions=todo, n_genes=n_genes, layer=layer))
    X = adata.X if layer is None else adata.layers[layer]

    def mean_of(mask) -> np.ndarray:
        return np.asarray(X[np.flatnonzero(mask)].astype(np.float64).mean(0)).ravel()

    ctrl = mean_of(is_ctrl)
    labels = np.asarray(adata.var[gene_symbols] if gene_symbols is not None else adata.var_names, dtype=str)
    n_methods = len(profiles)
    width = 0.8 / max(n_methods, 1)
    if ax is None:
        total = sum(min(n_genes, len(de[c])) for c in conds)
        _, ax = plt.subplots(figsize=(max(4.0, 0.45 * total + 1.5), 3.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x0, ticks, names, edges = 0, [], [], []
    for ci, c in enumerate(conds):
        genes = np.asarray(de[c])[:n_genes]
        xs = x0 + np.arange(genes.size)
        observed = mean_of((values == c).to_numpy())[genes] - ctrl[genes]
        ax.bar(xs, observed, width=0.85, color="0.82", label="observed" if ci == 0 else None, zorder=1)
        for k, (m, p) in enumerate(profiles.items()):
            cols = p.columns.get_indexer(adata.var_names[genes])
            pred = np.where(cols >= 0, p.loc[c].to_numpy(dtype=float)[cols.clip(0)], np.nan) - ctrl[genes]
            ax.scatter(xs - 0.4 + width * (k + 0.5), pred, s=16, color=colors[k % len(colors)], zorder=3,
                       label=m if ci == 0 else None, marker="o" if k == 0 else "D")
        ticks += xs.tolist()
        names += labels[genes].tolist()
        edges.append((x0 - 0.5, x0 + genes.size - 0.5, c))
        x0 += genes.size + 1
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_xlim(-1, x0 - 1)
    for lo, hi, c in edges:
        ax.text((lo + hi) / 2, 1.0, c, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        if lo > 0:
            ax.axvline(lo - 0.5, color="0.6", linewidth=0.6, linestyle=":")
    ax.set_ylabel("change from control")
    ax.legend(frameon=False, fontsize=7, loc="best")
    return _finish(ax, show)
