"""Perturbation splits and metrics (GEARS, Roohani et al. 2023)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._conditions import control_mask, parse_condition, parse_conditions
from .._constants import SPLIT_KEY

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
"""Test subgroups of GEARS' simulation split."""

COMBO_SEEN2_TRAIN_FRACTION = 0.75
"""GEARS' ``combo_seen2_train_frac``: fraction of the doubles with both genes seen that are kept for training."""

VAL_FRACTION = 0.9
"""GEARS' gene and combination fractions of the second (train / validation) simulation split."""


def _simulation_split(
    conditions: Sequence[str], genes_of: Mapping[str, tuple[str, ...]], gene_fraction: float,
    combo_fraction: float, rng: np.random.Generator,
) -> tuple[list[str], dict[str, list[str]]]:
    """One GEARS simulation split of ``conditions`` into train and test subgroups."""
    all_genes = sorted({g for c in conditions for g in genes_of[c]})
    n_train_genes = int(len(all_genes) * gene_fraction)
    train_genes = set(rng.choice(np.asarray(all_genes, dtype=object), n_train_genes, replace=False).tolist())
    singles = [c for c in conditions if len(genes_of[c]) == 1]
    combos = [c for c in conditions if len(genes_of[c]) > 1]
    groups: dict[str, list[str]] = {g: [] for g in SUBGROUPS}
    train = [c for c in singles if genes_of[c][0] in train_genes]
    groups["unseen_single"] = [c for c in singles if genes_of[c][0] not in train_genes]
    seen2 = []
    for c in combos:
        n_seen = sum(g in train_genes for g in genes_of[c])
        if n_seen == len(genes_of[c]):
            seen2.append(c)
        else:
            groups["combo_seen0" if n_seen == 0 else "combo_seen1"].append(c)
    seen2 = sorted(seen2)
    n_train_combos = int(len(seen2) * combo_fraction)
    picked = set(rng.choice(np.asarray(seen2, dtype=object), n_train_combos, replace=False).tolist()) if seen2 else set()
    train += [c for c in seen2 if c in picked]
    groups["combo_seen2"] = [c for c in seen2 if c not in picked]
    return train, groups


def perturbation_split(
    adata: AnnData,
    seed: int = 1,
    train_gene_fraction: float = 0.75,
    *,
    combo_seen2_train_fraction: float = COMBO_SEEN2_TRAIN_FRACTION,
    val_gene_fraction: float = VAL_FRACTION,
    val_combo_fraction: float = VAL_FRACTION,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    key_added: str = "split",
) -> dict[str, list[str]]:
    """GEARS' simulation split of perturbation conditions into train / val / test.

    Following GEARS' ``prepare_split(split="simulation")`` (Roohani et al. 2023): a random
    ``train_gene_fraction`` of the perturbed genes are *seen*. Training conditions are the single
    perturbations of seen genes and a random ``combo_seen2_train_fraction`` of the doubles whose genes
    are all seen. Test subgroups:

    - ``unseen_single``: single perturbations of unseen genes;
    - ``combo_seen0`` / ``combo_seen1``: doubles with 0 / 1 seen gene;
    - ``combo_seen2``: held-out doubles with both genes seen.

    The training conditions are split once more the same way (``val_gene_fraction``,
    ``val_combo_fraction``) into train and validation. Control cells go to train. No gene of a test
    (or validation) ``unseen_single`` / ``combo_seen0`` / ``combo_seen1`` condition's unseen genes is
    perturbed in any training condition.

    Parameters
    ----------
    adata
        Cells with GEARS conditions in ``adata.obs[perturbation_key]``.
    seed
        Seed of the random choices.
    train_gene_fraction
        Fraction of perturbed genes seen in training (GEARS ``train_gene_set_size``, default 0.75).
    combo_seen2_train_fraction
        Fraction of the all-seen doubles kept for training (GEARS ``combo_seen2_train_frac``).
    val_gene_fraction, val_combo_fraction
        The same fractions for the second, train / validation split (GEARS uses 0.9 and 0.9).
    perturbation_key
        Column of ``adata.obs`` with the conditions.
    control_value
        The control condition.
    key_added
        Column of ``adata.obs`` written.

    Returns
    -------
    The test subgroups: a dict mapping ``"unseen_single"``, ``"combo_seen0"``, ``"combo_seen1"`` and
    ``"combo_seen2"`` to lists of conditions. Also writes

    - ``adata.obs[key_added]``: ``"train"``, ``"val"`` or ``"test"`` (categorical);
    - ``adata.uns[key_added]``: ``{"params": ..., "test_subgroup": ..., "val_subgroup": ...}``.

    Raises
    ------
    KeyError
        If ``perturbation_key`` is missing.
    ValueError
        For malformed conditions, fractions outside ``(0, 1]``, or no perturbed condition.
    """
    labels, record, test_groups = _simulation_labels(
        adata, seed, train_gene_fraction, combo_seen2_train_fraction, val_gene_fraction, val_combo_fraction,
        perturbation_key, control_value,
    )
    _write_split(adata, labels, record, key_added)
    return test_groups


def _simulation_labels(
    adata: AnnData, seed: int, train_gene_fraction: float, combo_seen2_train_fraction: float,
    val_gene_fraction: float, val_combo_fraction: float, perturbation_key: str, control_value: str,
) -> tuple[pd.Categorical, dict, dict[str, list[str]]]:
    """Compute what :func:`perturbation_split` writes, without writing it.

    Returns ``(labels, record, test_subgroups)``: the ``(n_obs,)`` categorical of ``"train"`` / ``"val"`` /
    ``"test"``, the ``adata.uns`` record and the test subgroups. Raises the errors documented by
    :func:`perturbation_split`.
    """
    if perturbation_key not in adata.obs:
        raise KeyError(f"perturbation_key={perturbation_key!r} is not a column of adata.obs; available: "
                       f"{list(adata.obs.columns)}.")
    for name, v in [("train_gene_fraction", train_gene_fraction), ("val_gene_fraction", val_gene_fraction),
                    ("combo_seen2_train_fraction", combo_seen2_train_fraction),
                    ("val_combo_fraction", val_combo_fraction)]:
        if not 0 < v <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {v}.")
    values = adata.obs[perturbation_key].astype(str)
    genes_of = parse_conditions(values, control_value)
    conditions = sorted(c for c, g in genes_of.items() if g)
    if not conditions:
        raise ValueError(f"adata.obs[{perturbation_key!r}] holds no perturbed condition to split.")
    rng = np.random.default_rng(seed)
    train, test_groups = _simulation_split(conditions, genes_of, train_gene_fraction,
                                           combo_seen2_train_fraction, rng)
    train, val_groups = _simulation_split(sorted(train), genes_of, val_gene_fraction, val_combo_fraction, rng)
    where = {c: "train" for c in train}
    where.update({c: "val" for group in val_groups.values() for c in group})
    where.update({c: "test" for group in test_groups.values() for c in group})
    where[control_value] = "train"
    labels = pd.Categorical(values.map(where).to_numpy(), categories=["train", "val", "test"])
    record = {
        "params": {"seed": seed, "train_gene_fraction": train_gene_fraction,
                   "combo_seen2_train_fraction": combo_seen2_train_fraction,
                   "val_gene_fraction": val_gene_fraction, "val_combo_fraction": val_combo_fraction,
                   "perturbation_key": perturbation_key, "control_value": control_value},
        "test_subgroup": {k: list(v) for k, v in test_groups.items()},
        "val_subgroup": {k: list(v) for k, v in val_groups.items()},
    }
    return labels, record, test_groups


def _write_split(adata: AnnData, labels: pd.Categorical, record: dict, key_added: str) -> None:
    """Write a split's per-cell labels to ``adata.obs[key_added]`` and its record to ``adata.uns[key_added]``."""
    adata.obs[key_added] = labels
    adata.uns[key_added] = record
    logger.info("wrote adata.obs[%r] and adata.uns[%r]", key_added, key_added)


CONSTANT_TOL = 1e-6
"""Changes smaller than this count as none: a correlation with a side whose standard deviation is below it is
0, and a predicted change below it has no direction (float32 round-off of a no-change prediction is ~1e-8)."""


def _pearson(a: np.ndarray, b: np.ndarray, tol: float = CONSTANT_TOL) -> float:
    """Pearson correlation; 0 when either side is constant (GEARS' convention for NaN).

    "Constant" means a standard deviation below ``tol``, so that float32 round-off of a no-change
    prediction (``ŷ - c`` of order 1e-8) does not produce a spurious correlation.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.std() < tol or b.std() < tol:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _sign(x: np.ndarray, tol: float = CONSTANT_TOL) -> np.ndarray:
    """Sign of each value, 0 for ``|x| < tol``."""
    return np.where(np.abs(x) < tol, 0.0, np.sign(x))


DE_FILTERS = ("all", "non_zero", "non_dropout")
"""Gene filters of :func:`top_de_genes` (GEARS' ``rank_genes_groups_cov_all``, ``top_non_zero_de_20``,
``top_non_dropout_de_20``)."""


def top_de_genes(
    adata: AnnData, perturbation_key: str = "condition", control_value: str = "ctrl", *,
    conditions: Sequence[str] | None = None, n_genes: int = 20, layer: str | None = None,
    gene_filter: Literal["all", "non_zero", "non_dropout"] = "all",
) -> dict[str, np.ndarray]:
    """Top differentially expressed genes of each condition against control (as GEARS).

    ``sc.tl.rank_genes_groups`` (t-test, ``rankby_abs=True``, reference = control) on a copy, as GEARS'
    ``rank_genes_groups_by_cov`` (``gears/data_utils.py``); the caller's data is not changed. GEARS'
    filters of that ranking (``get_dropout_non_zero_genes``):

    - ``"non_zero"``: genes whose mean in the condition is not 0 (``top_non_zero_de_20``);
    - ``"non_dropout"``: genes whose mean in the condition is not 0, or is 0 in both the condition and
      the control (``top_non_dropout_de_20``: a gene silenced by the perturbation is kept only when it
      is silent in control cells too).

    Parameters
    ----------
    adata
        Cells, ``(n_obs, n_vars)``, with the conditions in ``adata.obs[perturbation_key]``.
    perturbation_key, control_value
        Condition column and control condition.
    conditions
        Conditions to rank; default every non-control condition.
    n_genes
        Genes returned per condition (fewer when fewer pass the filter).
    layer
        Layer with the expression; ``None``: ``adata.X``.
    gene_filter
        ``"all"`` (default), ``"non_zero"`` or ``"non_dropout"``.

    Returns
    -------
    ``{condition: (n_genes,) int array of var positions}``, most significant first.

    Raises
    ------
    ValueError
        If a condition or the control has fewer than 2 cells (a t-test needs 2), or for an unknown
        ``gene_filter``.
    """
    import anndata as ad
    import scanpy as sc

    if gene_filter not in DE_FILTERS:
        raise ValueError(f"gene_filter={gene_filter!r} is unknown; choose one of {DE_FILTERS}.")
    values = adata.obs[perturbation_key].astype(str)
    conds = list(conditions) if conditions is not None else sorted(set(values) - {control_value})
    counts = values.value_counts()
    small = [c for c in [*conds, control_value] if counts.get(c, 0) < 2]
    if small:
        raise ValueError(
            f"Conditions {small[:10]!r} have fewer than 2 cells; DE genes against control need at least 2 "
            f"per group. Drop them (adata = adata[~adata.obs[{perturbation_key!r}].isin({small[:3]!r})].copy()) "
            "or pass conditions= without them."
        )
    keep = values.isin([*conds, control_value]).to_numpy()
    X = adata.X if layer is None else adata.layers[layer]
    sub = ad.AnnData(X=X[keep], obs=pd.DataFrame({"g": pd.Categorical(values[keep].to_numpy())},
                                                  index=adata.obs_names[keep]))
    sub.var_names = adata.var_names
    sc.tl.rank_genes_groups(sub, "g", groups=conds, reference=control_value, rankby_abs=True,
                            n_genes=adata.n_vars, method="t-test", use_raw=False)
    names = sub.uns["rank_genes_groups"]["names"]
    out = {}
    ctrl_mean = None
    for c in conds:
        ranked = adata.var_names.get_indexer(np.asarray(names[c]))
        if gene_filter != "all":
            mean = np.asarray(X[(values == c).to_numpy()].mean(0)).ravel()
            passes = mean != 0
            if gene_filter == "non_dropout":
                if ctrl_mean is None:
                    ctrl_mean = np.asarray(X[(values == control_value).to_numpy()].mean(0)).ravel()
                passes |= ctrl_mean == 0
            ranked = ranked[passes[ranked]]
        out[c] = ranked[:n_genes]
    return out


METRICS = ("pearson", "pearson_delta", "mse", "pearson_de", "pearson_delta_de", "mse_de", "pearson_delta_pert",
           "pearson_delta_pert_de", "pearson_delta_pert_excl_target", "pearson_delta_pert_de_excl_target",
           "centroid_accuracy", "l2_top_expressed", "direction_accuracy_de", "de_recall")
"""Columns of :func:`perturbation_metrics` (one value per condition)."""

ERROR_METRICS = ("mse", "mse_de", "l2_top_expressed")
"""Metrics of :data:`METRICS` where lower is better."""


def _centroid_accuracy(yhat: np.ndarray, centroids: np.ndarray, own: int) -> float:
    """Fraction of the other centroids farther (Euclidean) from ``yhat`` than centroid ``own`` (Systema)."""
    if centroids.shape[0] < 2:
        return float("nan")
    d = np.sqrt(((centroids - yhat) ** 2).sum(1))
    return float((np.delete(d, own) > d[own]).sum() / (centroids.shape[0] - 1))


def _de_recall(pred_change: np.ndarray, de: np.ndarray, tol: float = CONSTANT_TOL) -> float:
    """Fraction of the observed top-k DE genes ``de`` among the k genes of largest predicted |change|.

    Genes whose predicted change is below ``tol`` are never among the predicted top k (a prediction
    without change recalls nothing).
    """
    k = de.size
    if k == 0:
        return float("nan")
    size = np.abs(pred_change)
    order = np.argsort(-size, kind="stable")[:k]
    order = order[size[order] >= tol]
    return float(np.isin(de, order).sum() / k)


@dataclass
class _Observed:
    """What the metrics compare predictions with, over the predicted genes (in the prediction's column order).

    ``conditions`` are scored; ``centroids`` ``(n_conditions, n_genes)`` their observed means; ``control``
    and ``reference`` ``(n_genes,)`` the control mean and Systema's perturbed reference; ``candidates``
    ``(n_candidates, n_genes)`` the centroids competing in centroid accuracy, ``own[i]`` the row of
    condition ``i`` there; ``de[i]`` / ``targets[i]`` the positions of condition ``i``'s top DE genes and of
    its measured perturbed genes; ``top`` the most expressed genes (control mean).
    """

    conditions: list[str]
    centroids: np.ndarray
    control: np.ndarray
    reference: np.ndarray
    candidates: np.ndarray
    own: list[int]
    de: list[np.ndarray]
    targets: list[np.ndarray]
    top: np.ndarray
    n_cells: list[int]


def _score(obs: _Observed, predicted: np.ndarray) -> pd.DataFrame:
    """Per-condition metrics (:data:`METRICS`, ``n_cells``) of ``predicted`` ``(n_conditions, n_genes)``."""
    ctrl, ref = obs.control, obs.reference
    rows = []
    for i, _ in enumerate(obs.conditions):
        yhat, y = predicted[i], obs.centroids[i]
        d, t = obs.de[i], obs.targets[i]
        d_ex = d[~np.isin(d, t)]
        rest = np.ones(y.size, dtype=bool)
        rest[t] = False
        change, true_change = yhat - ctrl, y - ctrl
        rows.append({
            "pearson": _pearson(yhat, y),
            "pearson_delta": _pearson(change, true_change),
            "mse": float(np.mean((yhat - y) ** 2)),
            "pearson_de": _pearson(yhat[d], y[d]),
            "pearson_delta_de": _pearson(change[d], true_change[d]),
            "mse_de": float(np.mean((yhat[d] - y[d]) ** 2)) if d.size else float("nan"),
            "pearson_delta_pert": _pearson(yhat - ref, y - ref),
            "pearson_delta_pert_de": _pearson(yhat[d] - ref[d], y[d] - ref[d]),
            "pearson_delta_pert_excl_target": _pearson(yhat[rest] - ref[rest], y[rest] - ref[rest]),
            "pearson_delta_pert_de_excl_target": _pearson(yhat[d_ex] - ref[d_ex], y[d_ex] - ref[d_ex]),
            "centroid_accuracy": _centroid_accuracy(yhat, obs.candidates, obs.own[i]),
            "l2_top_expressed": float(np.sqrt(((yhat[obs.top] - y[obs.top]) ** 2).sum())),
            "direction_accuracy_de": (float(np.mean(_sign(change[d]) == _sign(true_change[d]))) if d.size
                                      else float("nan")),
            "de_recall": _de_recall(change, d),
            "n_cells": obs.n_cells[i],
        })
    return pd.DataFrame(rows, index=pd.Index(obs.conditions, name="condition"), columns=[*METRICS, "n_cells"])


def _as_frame(predicted: AnnData | pd.DataFrame) -> pd.DataFrame:
    if isinstance(predicted, pd.DataFrame):
        return predicted
    X = predicted.X.toarray() if sp.issparse(predicted.X) else np.asarray(predicted.X)
    return pd.DataFrame(X, index=predicted.obs_names, columns=predicted.var_names)


def _symbol_positions(symbols: np.ndarray) -> dict[str, int]:
    """Symbol → position: exact symbols first, then their upper-case spellings."""
    index: dict[str, int] = {}
    for i, s in enumerate(symbols):
        index.setdefault(s, i)
    for i, s in enumerate(symbols):
        index.setdefault(s.upper(), i)
    return index


def target_positions(conditions: Sequence[str], symbols: Sequence[str], control_value: str = "ctrl"
                     ) -> list[np.ndarray]:
    """Positions among ``symbols`` of each condition's perturbed genes that are measured.

    Matching is exact, then case-insensitive; genes that are not among ``symbols`` are left out.

    Returns
    -------
    One int array per condition (empty when no perturbed gene is measured).
    """
    index = _symbol_positions(np.asarray(symbols, dtype=str))
    out = []
    for c in conditions:
        found = [index.get(g, index.get(g.upper())) for g in parse_condition(c, control_value)]
        out.append(np.asarray(sorted({p for p in found if p is not None}), dtype=np.int64))
    return out


def _reference_conditions(adata: AnnData, values: pd.Series, is_ctrl: np.ndarray, scored: Sequence[str],
                          split_key: str, perturbation_key: str) -> list[str]:
    """Training perturbations of ``adata`` (cells not marked ``"test"`` in ``adata.obs[split_key]``)."""
    if split_key not in adata.obs:
        raise ValueError(
            "perturbed_reference=None takes Systema's reference from the training perturbations, marked in "
            f"adata.obs[{split_key!r}] (written by gh.tl.perturbation_split / gh.tl.screen_split), but adata has no "
            f"such column: pass perturbed_reference= (the training conditions, or their centroid) or split_key=."
        )
    where = adata.obs[split_key].astype(str).to_numpy()
    conds = sorted(set(values[(where != "test") & ~is_ctrl]))
    if not conds:
        raise ValueError(f"adata.obs[{split_key!r}] marks no perturbed cell as training ('train' / 'val'): pass "
                         "perturbed_reference= naming the training conditions.")
    return conds


def _observed(
    adata: AnnData, pred_columns: pd.Index, conds: list[str], *, perturbation_key: str, control_value: str,
    n_de: int, n_expressed: int, layer: str | None, de_genes: Mapping[str, np.ndarray] | None, de_filter: str,
    gene_symbols: str | None, perturbed_reference, split_key: str, control_cells, centroid_candidates,
    n_inputs: Sequence[int] | None = None,
) -> _Observed:
    """Check the inputs of :func:`perturbation_metrics` and gather what the predictions are compared with."""
    values = adata.obs[perturbation_key].astype(str)
    is_ctrl = control_mask(values, control_value)
    if not is_ctrl.any():
        raise ValueError(f"No control cells (adata.obs[{perturbation_key!r}] == {control_value!r}); the metrics "
                         "compare against the control mean: pass control_value= or include control cells.")
    missing = [c for c in conds if c not in set(values)]
    if missing:
        raise KeyError(f"Predicted conditions {missing[:10]!r} have no observed cells in adata.obs[{perturbation_key!r}].")
    cols = adata.var_names.get_indexer(pred_columns)
    if (cols < 0).any():
        raise KeyError(f"Predicted genes {list(pred_columns[cols < 0][:5])!r} are not in adata.var_names.")
    if gene_symbols is not None and gene_symbols not in adata.var:
        raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of adata.var; available: "
                       f"{list(adata.var.columns)}.")
    if control_cells is None:
        ctrl_rows = np.flatnonzero(is_ctrl)
    else:
        sel = np.asarray(control_cells)
        ctrl_rows = np.flatnonzero(sel) if sel.dtype == bool else adata.obs_names.get_indexer(sel.astype(str))
        if sel.dtype == bool and sel.shape != (adata.n_obs,):
            raise ValueError(f"control_cells must be a boolean array of n_obs={adata.n_obs} values or obs names.")
        if (ctrl_rows < 0).any() or not ctrl_rows.size or not is_ctrl[ctrl_rows].all():
            raise ValueError(f"control_cells must name control cells of adata (adata.obs[{perturbation_key!r}] == "
                             f"{control_value!r}), at least one.")
    if n_inputs is not None and any(int(n) != ctrl_rows.size for n in n_inputs):
        raise ValueError(
            f"The predictions start from {sorted({int(n) for n in n_inputs})} cells but the control reference has "
            f"{ctrl_rows.size}: the metrics measure changes from the cells the predictions start from. Predict "
            f"from adata[adata.obs[{perturbation_key!r}] == {control_value!r}] or pass control_cells= naming the "
            "input cells."
        )
    de = dict(de_genes) if de_genes is not None else {}
    todo = [c for c in conds if c not in de]
    if todo:
        de.update(top_de_genes(adata, perturbation_key, control_value, conditions=todo, n_genes=n_de, layer=layer,
                               gene_filter=de_filter))
    X = adata.X if layer is None else adata.layers[layer]

    def mean_of(rows: np.ndarray) -> np.ndarray:
        return np.asarray(X[rows].astype(np.float64).mean(0)).ravel()[cols]

    ctrl = mean_of(ctrl_rows)
    observed = set(values[~is_ctrl])
    centroid_of: dict[str, np.ndarray] = {}

    def centroid(c: str) -> np.ndarray:
        if c not in centroid_of:
            if c not in observed:
                raise ValueError(f"Condition {c!r} has no perturbed cell in adata.obs[{perturbation_key!r}].")
            centroid_of[c] = mean_of(np.flatnonzero((values == c).to_numpy()))
        return centroid_of[c]

    if perturbed_reference is None:
        perturbed_reference = _reference_conditions(adata, values, is_ctrl, conds, split_key, perturbation_key)
    if isinstance(perturbed_reference, np.ndarray) and perturbed_reference.dtype.kind in "fiu":
        ref = np.asarray(perturbed_reference, dtype=np.float64).ravel()
        if ref.size != adata.n_vars:
            raise ValueError(f"perturbed_reference must have n_vars={adata.n_vars} values, got {ref.size}.")
        ref = ref[cols]
    else:
        names = [str(c) for c in perturbed_reference]
        scored = sorted(set(names) & set(conds))
        if scored:
            raise ValueError(
                f"perturbed_reference includes scored conditions {scored[:5]!r}: Systema's reference is the centroid of "
                "the training perturbations; pass the training conditions only."
            )
        ref = np.mean([centroid(c) for c in names], axis=0)
    candidates = list(conds if centroid_candidates is None else centroid_candidates)
    for c in conds:
        if c not in candidates:
            candidates.append(c)
    back = pd.Index(cols).get_indexer  # var positions -> positions among the predicted genes
    de_pos = []
    for c in conds:
        d = back(np.asarray(de[c]))
        if (d < 0).any():
            lost = list(adata.var_names[np.asarray(de[c])[d < 0]][:5])
            raise KeyError(f"Top DE genes {lost!r} of {c!r} are not among the predicted genes: predict every gene, or "
                           "pass de_genes= restricted to the predicted genes.")
        de_pos.append(d)
    symbols = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
    targets = target_positions(conds, np.asarray(symbols, dtype=str)[cols], control_value)
    return _Observed(
        conditions=list(conds),
        centroids=np.stack([centroid(c) for c in conds]) if conds else np.zeros((0, cols.size)),
        control=ctrl, reference=ref,
        candidates=np.stack([centroid(c) for c in candidates]), own=[candidates.index(c) for c in conds],
        de=de_pos, targets=targets,
        top=np.argsort(-ctrl, kind="stable")[: min(n_expressed, ctrl.size)],
        n_cells=[int((values == c).sum()) for c in conds],
    )


def perturbation_metrics(
    adata: AnnData,
    predicted: AnnData | pd.DataFrame,
    *,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    subgroups: Mapping[str, Sequence[str]] | None = None,
    n_de: int = 20,
    n_expressed: int = 1000,
    layer: str | None = None,
    de_genes: Mapping[str, np.ndarray] | None = None,
    de_filter: Literal["all", "non_zero", "non_dropout"] = "all",
    gene_symbols: str | None = None,
    perturbed_reference: np.ndarray | Sequence[str] | None = None,
    split_key: str = SPLIT_KEY,
    control_cells: np.ndarray | Sequence[str] | None = None,
    centroid_candidates: Sequence[str] | None = None,
    by: Literal["condition", "subgroup"] = "condition",
) -> pd.DataFrame:
    """GEARS, Systema and Ahlmann-Eltze metrics of predicted mean expression profiles against observed cells.

    For each predicted condition ``p`` with observed mean ``y_p`` (over its cells in ``adata``), predicted
    mean ``ŷ_p`` and control mean ``c`` (all ``(n_vars,)``, over the predicted genes; ``c`` is the mean of
    the control cells the predictions start from, ``control_cells``):

    GEARS (Roohani et al., Nat Biotechnol 2023; ``gears/inference.py``):

    - ``pearson`` = Pearson(ŷ_p, y_p); ``pearson_delta`` = Pearson(ŷ_p - c, y_p - c);
    - ``mse`` = mean((ŷ_p - y_p)²);
    - ``pearson_de``, ``pearson_delta_de``, ``mse_de``: the same on the condition's top ``n_de``
      differentially expressed genes against control (:func:`top_de_genes`: ``sc.tl.rank_genes_groups``,
      t-test, ranked by absolute score; ``de_filter="non_dropout"`` for GEARS' non-dropout DE genes);
    - ``direction_accuracy_de``: the fraction of those DE genes whose predicted change ``ŷ_p - c`` has the
      sign of the observed one (``deeper_analysis``' ``frac_correct_direction_20``; a change below
      :data:`CONSTANT_TOL` has sign 0, so a prediction of no change scores 0).

    Systema (Viñas Torné et al., Nat Biotechnol 2025; ``evaluation/pearson_delta_reference_metrics.py``,
    ``centroid_accuracy.py``, README): control-referenced Pearson delta rewards predicting the average
    effect of all perturbations (systematic variation), so the reference is the *perturbed centroid*
    ``μ = mean_q y_q``, the mean of the training perturbations' centroids (each condition once, see
    ``perturbed_reference``):

    - ``pearson_delta_pert`` = Pearson(ŷ_p - μ, y_p - μ), all genes; ``pearson_delta_pert_de`` the same
      on the top ``n_de`` DE genes. The mean baseline (``ŷ_p = μ``) scores 0 by construction;
    - ``pearson_delta_pert_excl_target``, ``pearson_delta_pert_de_excl_target``: the same without the
      condition's own measured perturbed genes (which a knock-down moves most), so that they score the
      effect on the other genes;
    - ``centroid_accuracy``: the fraction of the other candidate centroids ``y_q`` (``q ≠ p``; by default
      the scored conditions, Systema's held-out perturbations) that are farther from ``ŷ_p`` than ``y_p``
      is (Euclidean distance over the predicted genes); 1 means the true centroid is the closest, about
      0.5 is chance; NaN with a single candidate.

    Ahlmann-Eltze, Huber & Anders (Nat Methods 2025; ``notebooks/single_perturbation_analysis.Rmd``):

    - ``l2_top_expressed`` = ‖ŷ_p - y_p‖₂ over the ``n_expressed`` genes of highest control mean.

    And ``de_recall``: the fraction of the observed top ``n_de`` DE genes that are among the ``n_de``
    genes of largest predicted ``|ŷ_p - c|`` (a prediction without change recalls none).

    A correlation with a constant side is 0 (GEARS' convention): the no-change baseline (``ŷ_p = c``)
    has ``pearson_delta = 0``.

    Parameters
    ----------
    adata
        Observed cells: control cells and cells of the evaluated conditions (and of other perturbations,
        which may serve as centroid-accuracy candidates and the perturbed reference), ``(n_obs, n_vars)``.
    predicted
        Mean predicted profiles, one row per condition: the AnnData returned by
        :meth:`~genohoption.GenoHoptionModel.predict_perturbation` (or a baseline's) with a list, or a
        DataFrame (conditions × genes). Columns are matched to ``adata.var_names`` by name. An AnnData's
        ``obs["n_cells"]`` (the number of input cells) must equal the number of ``control_cells``.
    perturbation_key, control_value
        Condition column and control condition.
    subgroups
        Optional ``{subgroup: [conditions]}`` (e.g. the output of :func:`perturbation_split`); adds a
        ``subgroup`` column.
    n_de
        Number of top DE genes.
    n_expressed
        Number of most expressed genes (control mean) of ``l2_top_expressed`` (all genes if fewer).
    layer
        Layer of ``adata`` with the expression; ``None``: ``adata.X``. Use the kind of values the model
        predicts.
    de_genes
        Precomputed ``{condition: var positions of its top DE genes}`` (from :func:`top_de_genes`), to
        score several predictions without recomputing them; used as given (``n_de`` and ``de_filter``
        apply only to the conditions it lacks).
    de_filter
        Gene filter of the DE ranking (:func:`top_de_genes`): ``"all"`` (default), ``"non_zero"`` or
        ``"non_dropout"`` (GEARS' ``top_non_dropout_de_20``).
    gene_symbols
        Column of ``adata.var`` with the symbols the conditions use (to find the perturbed genes of the
        ``*_excl_target`` metrics); ``None``: ``var_names``.
    perturbed_reference
        Systema's reference ``μ``: a ``(n_vars,)`` profile, or the training conditions whose centroids it
        averages (none of them scored). ``None``: the perturbed conditions whose cells are not marked
        ``"test"`` in ``adata.obs[split_key]``.
    split_key
        ``adata.obs`` column of the split (:func:`perturbation_split`, :func:`screen_split`), read when
        ``perturbed_reference`` is ``None``.
    control_cells
        The control cells the predictions start from (boolean mask of ``n_obs`` values or obs names); their
        mean is ``c``. ``None``: every control cell of ``adata``.
    centroid_candidates
        Perturbed conditions whose centroids compete in ``centroid_accuracy`` (each needs cells in
        ``adata``); ``None``: the scored conditions.
    by
        ``"condition"``: one row per condition; ``"subgroup"``: the mean over each subgroup's conditions
        plus an ``"all"`` row, with ``n_conditions``.

    Returns
    -------
    DataFrame indexed by condition (or subgroup) with the columns of :data:`METRICS`, ``n_cells`` (and
    ``subgroup``). Nothing is written to ``adata``.

    Raises
    ------
    KeyError
        If ``perturbation_key`` or ``gene_symbols`` is missing, a predicted condition has no observed cell,
        a predicted gene is not in ``adata``, or a top DE gene is not predicted.
    ValueError
        If there are no control cells, a condition has fewer than 2 cells (DE needs 2; the message names
        them), the predictions start from another number of cells than ``control_cells``, the reference
        cannot be derived (no ``split_key`` column) or includes a scored condition, ``perturbed_reference``
        has the wrong length, or a reference / candidate condition has no cell.
    """
    if perturbation_key not in adata.obs:
        raise KeyError(f"perturbation_key={perturbation_key!r} is not a column of adata.obs.")
    if by not in ("condition", "subgroup"):
        raise ValueError(f"by must be 'condition' or 'subgroup', got {by!r}.")
    pred = _as_frame(predicted)
    n_inputs = None
    if not isinstance(predicted, pd.DataFrame) and "n_cells" in predicted.obs:
        n_inputs = predicted.obs["n_cells"].to_numpy()
    conds = [c for c in pred.index if c != control_value]
    obs = _observed(adata, pred.columns, conds, perturbation_key=perturbation_key, control_value=control_value,
                    n_de=n_de, n_expressed=n_expressed, layer=layer, de_genes=de_genes, de_filter=de_filter,
                    gene_symbols=gene_symbols, perturbed_reference=perturbed_reference, split_key=split_key,
                    control_cells=control_cells, centroid_candidates=centroid_candidates, n_inputs=n_inputs)
    out = _score(obs, pred.loc[conds].to_numpy(dtype=np.float64))
    if subgroups is not None:
        where = {c: g for g, cs in subgroups.items() for c in cs}
        out["subgroup"] = [where.get(c, "other") for c in conds]
    if by == "subgroup":
        metrics = list(METRICS)
        key = out["subgroup"] if "subgroup" in out else pd.Series("all", index=out.index)
        agg = out[metrics].groupby(key.to_numpy()).mean()
        agg["n_conditions"] = key.value_counts().reindex(agg.index).to_numpy()
        allrow = out[metrics].mean().to_frame("all").T
        allrow["n_conditions"] = len(out)
        out = pd.concat([agg, allrow]) if "subgroup" in out else allrow
        out.index.name = "subgroup"
    return out
