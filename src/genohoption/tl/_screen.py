"""A perturbation screen's training cells and scored test conditions; a per-condition subsample of cells."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._conditions import control_mask, parse_conditions
from .._constants import SPLIT_KEY
from .._validate import check_key, check_obs_key
from ._perturbation import COMBO_SEEN2_TRAIN_FRACTION, VAL_FRACTION, _simulation_labels, _write_split
from ._perturbation_stats import perturbation_folds

if TYPE_CHECKING:
    from anndata import AnnData

SIMULATION = "simulation"
"""The ``split`` of :func:`screen_split` that draws GEARS' simulation split."""

KFOLD = "kfold"
"""The ``split`` of :func:`screen_split` that holds out one of the disjoint folds of :func:`perturbation_folds`."""

SPLIT_VALUES = ("train", "val", "test")
"""Values of a split column, one per cell."""


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def screen_split(
    adata: AnnData,
    split: str = SIMULATION,
    *,
    seed: int = 1,
    train_gene_fraction: float = 0.75,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    min_cells: int = 2,
    n_folds: int = 5,
    fold: int = 0,
    gene_symbols: str | None = None,
    key_added: str = SPLIT_KEY,
) -> tuple[np.ndarray, list[str], dict[str, list[str]] | None]:
    """Training cells and scored test conditions of a perturbation screen.

    ``split="simulation"`` draws GEARS' simulation split of the perturbed genes (:func:`perturbation_split`
    with ``seed`` and ``train_gene_fraction``, its other fractions at GEARS' values); ``split="kfold"``
    holds out fold ``fold`` of the ``n_folds`` disjoint folds of :func:`perturbation_folds` (stratified
    by measured / unmeasured target, seeded with ``seed``): every condition is held out by exactly one
    ``fold``; any other ``split`` names a column of ``adata.obs`` holding ``"train"``, ``"val"`` or
    ``"test"`` per cell.

    The training cells are the cells not marked ``"test"`` (``"val"`` cells included: the model holds out
    its own validation cells) and every control cell. The test conditions are the perturbed conditions of
    the cells marked ``"test"``; a test condition with fewer than ``min_cells`` cells in ``adata`` is
    dropped with a warning (:func:`perturbation_metrics` needs two cells per condition).

    Parameters
    ----------
    adata
        The screen, ``(n_obs, n_vars)``, with GEARS conditions in ``adata.obs[perturbation_key]``.
    split
        ``"simulation"`` (default), ``"kfold"`` or the name of an ``adata.obs`` column of ``"train"`` /
        ``"val"`` / ``"test"``.
    seed
        Seed of the simulation split or of the folds (default 1); unused for a column.
    train_gene_fraction
        Fraction of the perturbed genes seen in training by the simulation split, in ``(0, 1]``
        (default 0.75); unused for a column.
    perturbation_key
        Column of ``adata.obs`` with the conditions (default ``"condition"``).
    control_value
        The control condition (default ``"ctrl"``).
    min_cells
        Fewest cells a test condition needs to be scored (default 2).
    n_folds, fold
        ``split="kfold"``: the number of folds (default 5) and the one held out, ``0 … n_folds - 1``
        (default 0).
    gene_symbols
        ``split="kfold"``: column of ``adata.var`` with the symbols the conditions use (measured targets
        stratify the folds); ``None``: ``var_names``.
    key_added
        ``adata.obs`` column and ``adata.uns`` key written by the simulation and k-fold splits (default
        ``"split"``).

    Returns
    -------
    ``(train_mask, test_conditions, subgroups)``:

    - ``train_mask``: ``(n_obs,)`` boolean array, the training cells;
    - ``test_conditions``: the scored test conditions, sorted;
    - ``subgroups``: the simulation split's test subgroups (see :func:`perturbation_split`, before the
      conditions with too few cells are dropped); ``None`` for a column or k-fold split.

    The simulation split also writes ``adata.obs[key_added]`` and ``adata.uns[key_added]`` as
    :func:`perturbation_split` does; the k-fold split writes ``adata.obs[key_added]`` (``"train"`` /
    ``"test"``) and ``adata.uns[key_added]`` (``{"params": ..., "folds": ...}``); a column split writes
    nothing.

    Raises
    ------
    KeyError
        If ``perturbation_key`` or ``gene_symbols`` is missing, or ``split`` is neither ``"simulation"``,
        ``"kfold"`` nor a column of ``adata.obs``.
    ValueError
        For malformed conditions, ``train_gene_fraction`` outside ``(0, 1]``, ``n_folds`` / ``fold`` out of
        range, a split column holding
        other values than ``"train"``, ``"val"``, ``"test"``, a split leaving no perturbed condition to
        test or to train on, no test condition with ``min_cells`` cells, ``min_cells`` below 1 or an
        invalid ``key_added``. Nothing is written then.

    Warns
    -----
    UserWarning
        When some test conditions have fewer than ``min_cells`` cells (they are not returned).
    """
    values = check_obs_key(adata, perturbation_key, "perturbation_key").astype(str)
    min_cells = _check_count(min_cells, "min_cells")
    record = None
    if split == SIMULATION:
        check_key(key_added)
        labels, record, subgroups = _simulation_labels(
            adata, seed, train_gene_fraction, COMBO_SEEN2_TRAIN_FRACTION, VAL_FRACTION, VAL_FRACTION,
            perturbation_key, control_value,
        )
        where = np.asarray(labels).astype(str)
    elif split == KFOLD:
        check_key(key_added)
        folds = perturbation_folds(adata, n_folds, seed=seed, perturbation_key=perturbation_key,
                                   control_value=control_value, gene_symbols=gene_symbols)
        if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < n_folds:
            raise ValueError(f"fold must be an integer in [0, {n_folds}), got {fold!r}.")
        where = np.where(values.isin(folds[fold]).to_numpy(), "test", "train")
        labels = pd.Categorical(where, categories=["train", "test"])
        record = {"params": {"split": KFOLD, "n_folds": int(n_folds), "fold": int(fold), "seed": seed,
                             "perturbation_key": perturbation_key, "control_value": control_value,
                             "gene_symbols": gene_symbols},
                  "folds": folds}
        subgroups = None
    else:
        if split not in adata.obs:
            raise KeyError(
                f"split={split!r} is neither {SIMULATION!r}, {KFOLD!r} nor an obs column of adata (columns: "
                f"{list(adata.obs.columns)}); pass {SIMULATION!r}, {KFOLD!r} or the column holding 'train', 'val' or "
                "'test' per cell."
            )
        parse_conditions(values, control_value)
        where = adata.obs[split].astype(str).to_numpy()
        unknown = sorted(set(where) - set(SPLIT_VALUES))
        if unknown:
            raise ValueError(f"adata.obs[{split!r}] holds {unknown[:5]!r}; it must hold 'train', 'val' or 'test' "
                             "per cell.")
        subgroups = None
    is_ctrl = control_mask(values, control_value)
    is_test = where == "test"
    test = sorted(set(values[is_test & ~is_ctrl]))
    train_mask = ~is_test | is_ctrl
    if not test:
        raise ValueError("the split leaves no perturbed condition to test; pass another seed= or split=.")
    if not (train_mask & ~is_ctrl).any():
        raise ValueError("the split leaves no perturbed condition to train on; pass another seed= or split=.")
    counts = values.value_counts()
    small = [c for c in test if counts[c] < min_cells]
    if len(small) == len(test):
        raise ValueError(f"no test condition has {min_cells} cells or more ({len(test)} with fewer); the metrics "
                         f"need {min_cells} per condition: pass another seed= or split=.")
    if small:
        warnings.warn(
            f"{len(small)} test conditions have fewer than {min_cells} cells and are not scored (the metrics need "
            f"{min_cells} per condition): {small[:5]!r}{' …' if len(small) > 5 else ''}",
            UserWarning,
            stacklevel=2,
        )
        test = [c for c in test if c not in small]
    if record is not None:
        _write_split(adata, labels, record, key_added)
    return train_mask, test, subgroups


def subsample_conditions(
    adata: AnnData,
    max_cells: int,
    *,
    mask: np.ndarray | None = None,
    perturbation_key: str = "condition",
    seed: int = 0,
) -> np.ndarray:
    """Keep at most ``max_cells`` cells of each condition, drawn at random without replacement.

    The conditions present among the ``mask`` cells are visited in sorted order (the control condition is
    one of them), each drawing ``min(n_cells, max_cells)`` of its cells with one
    :func:`numpy.random.default_rng` generator seeded with ``seed``: the same seed keeps the same cells.

    Parameters
    ----------
    adata
        Cells, ``(n_obs, n_vars)``, with their conditions in ``adata.obs[perturbation_key]``.
    max_cells
        Most cells kept per condition, an integer >= 1.
    mask
        ``(n_obs,)`` boolean array of the cells to draw from (e.g. the training cells of
        :func:`screen_split`); ``None`` (default): every cell.
    perturbation_key
        Column of ``adata.obs`` with the conditions (default ``"condition"``).
    seed
        Seed of the draws (default 0).

    Returns
    -------
    ``(n_obs,)`` boolean array of the cells kept, a subset of ``mask``. Nothing is written to ``adata``.

    Raises
    ------
    KeyError
        If ``perturbation_key`` is missing.
    ValueError
        If ``max_cells`` is not an integer >= 1, or ``mask`` is not a boolean array of ``n_obs`` values.
    """
    values = check_obs_key(adata, perturbation_key, "perturbation_key").astype(str)
    max_cells = _check_count(max_cells, "max_cells")
    if mask is None:
        mask = np.ones(adata.n_obs, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        raise ValueError(f"mask must be a boolean array of n_obs={adata.n_obs} values, got dtype {mask.dtype} and "
                         f"shape {mask.shape}.")
    rng = np.random.default_rng(seed)
    keep = np.zeros(adata.n_obs, dtype=bool)
    for condition in sorted(set(values[mask])):
        rows = np.flatnonzero(mask & (values == condition).to_numpy())
        keep[rng.choice(rows, min(rows.size, max_cells), replace=False)] = True
    return keep
