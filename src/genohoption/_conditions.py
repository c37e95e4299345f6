"""Perturbation conditions in GEARS format (plain Python: no torch, no scvi).

GEARS (Roohani et al., 2023) writes a cell's condition as ``"ctrl"`` (control), ``"A+ctrl"`` or
``"ctrl+A"`` (one gene perturbed) and ``"A+B"`` (two genes perturbed), gene symbols joined by ``+``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd


def parse_condition(condition: str, control_value: str = "ctrl") -> tuple[str, ...]:
    """Perturbed genes of a GEARS condition string.

    Parameters
    ----------
    condition
        ``"ctrl"``, ``"A+ctrl"``, ``"ctrl+A"``, ``"A+B"`` (genes joined by ``+``; more than two genes
        are accepted too).
    control_value
        The control condition (and the filler of single perturbations), default ``"ctrl"``.

    Returns
    -------
    The perturbed genes in the order written; ``()`` for the control.

    Raises
    ------
    TypeError
        If ``condition`` is not a string.
    ValueError
        For an empty part (``"A+"``, ``"+"``), surrounding white space, a gene given twice, or only
        control parts other than ``control_value`` itself (``"ctrl+ctrl"``).

    Examples
    --------
    >>> parse_condition("ctrl+KLF1")
    ('KLF1',)
    >>> parse_condition("CEBPE+RUNX1T1")
    ('CEBPE', 'RUNX1T1')
    """
    if not isinstance(condition, str):
        raise TypeError(f"A perturbation condition must be a string like 'A+B', got {condition!r}.")
    if condition == control_value:
        return ()
    parts = condition.split("+")
    fix = f"write conditions as {control_value!r}, 'A+{control_value}', '{control_value}+A' or 'A+B'"
    if any(p == "" or p != p.strip() for p in parts):
        raise ValueError(f"Malformed perturbation condition {condition!r}: empty or padded gene name; {fix}.")
    genes = tuple(p for p in parts if p != control_value)
    if not genes:
        raise ValueError(f"Malformed perturbation condition {condition!r}: no perturbed gene; {fix}.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"Malformed perturbation condition {condition!r}: a gene is listed twice; {fix}.")
    return genes


def parse_conditions(conditions: Iterable[str], control_value: str = "ctrl") -> dict[str, tuple[str, ...]]:
    """Parse many conditions at once (see :func:`parse_condition`); errors name every bad one."""
    parsed, bad = {}, []
    for c in pd.unique(np.asarray(list(conditions), dtype=object)):
        try:
            parsed[c] = parse_condition(c, control_value)
        except (TypeError, ValueError):
            bad.append(c)
    if bad:
        raise ValueError(
            f"Malformed perturbation conditions {bad[:10]!r}{' …' if len(bad) > 10 else ''}: write them as "
            f"{control_value!r}, 'A+{control_value}', '{control_value}+A' or 'A+B' (gene symbols joined by '+')."
        )
    return parsed


def gene_index(symbols: Sequence[str]) -> dict[str, int]:
    """Map gene symbols to their first position (symbols of duplicated genes resolve to the first)."""
    out: dict[str, int] = {}
    for i, s in enumerate(np.asarray(symbols, dtype=str)):
        out.setdefault(s, i)
    return out


class GeneUniverse:
    """The genes a perturbation model can perturb, and how the unmeasured ones reach the measured genes.

    The universe is the measured genes (in model order, positions ``0 … n_measured - 1``) followed by
    *extra* genes (positions ``n_measured …``): the genes of a prior regulatory network that are not
    measured, plus genes named explicitly (``extra_genes``). Each extra gene keeps its regulatory edges
    to measured genes (either direction: the measured genes it regulates and those regulating it), in
    CSR form over measured positions. Plain data (numpy arrays), saved with a model.

    Matching a symbol: exact among the measured genes, then case-insensitively among the measured
    genes, then case-insensitively among the extra genes (as :func:`genohoption.pp.build_gene_graph`
    matches prior networks).

    Parameters
    ----------
    measured
        ``(n_measured,)`` symbols of the measured genes, in model order.
    extra
        ``(n_extra,)`` symbols of the extra genes.
    indptr, indices
        CSR rows of the extra genes: ``indices[indptr[k]:indptr[k + 1]]`` are the measured positions
        joined to extra gene ``k``.
    """

    def __init__(self, measured, extra=(), indptr=None, indices=None):
        self.measured = np.asarray(measured, dtype=str)
        self.extra = np.asarray(extra, dtype=str).reshape(-1)
        self.indptr = (np.zeros(self.extra.size + 1, np.int64) if indptr is None
                       else np.asarray(indptr, dtype=np.int64).reshape(-1))
        self.indices = np.zeros(0, np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.indptr.size != self.extra.size + 1 or self.indptr[-1] != self.indices.size:
            raise ValueError("GeneUniverse: indptr must have n_extra + 1 entries ending at len(indices).")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.measured.size):
            raise ValueError("GeneUniverse: indices must be positions of measured genes.")
        self._index: dict[str, int] | None = None

    @property
    def n_measured(self) -> int:
        """Number of measured genes."""
        return int(self.measured.size)

    @property
    def n_extra(self) -> int:
        """Number of extra (unmeasured) genes."""
        return int(self.extra.size)

    def __len__(self) -> int:
        return self.n_measured + self.n_extra

    def __repr__(self) -> str:
        return (f"GeneUniverse({self.n_measured} measured + {self.n_extra} extra genes, "
                f"{self.indices.size} edges from extra to measured genes)")

    def index(self) -> dict[str, int]:
        """Symbol → universe position (exact measured symbols, then upper-case measured, then upper-case extra)."""
        if self._index is None:
            out = gene_index(self.measured)
            for i, s in enumerate(self.measured):
                out.setdefault(s.upper(), i)
            for k, s in enumerate(self.extra):
                out.setdefault(s.upper(), self.n_measured + k)
            self._index = out
        return self._index

    def find(self, symbol: str) -> int | None:
        """Universe position of ``symbol`` or ``None``."""
        index = self.index()
        pos = index.get(symbol)
        return pos if pos is not None else index.get(symbol.upper())

    def neighbors(self, position: int) -> np.ndarray:
        """Measured positions joined to universe gene ``position`` (empty for a measured gene)."""
        k = position - self.n_measured
        if k < 0:
            return np.zeros(0, np.int64)
        return self.indices[self.indptr[k] : self.indptr[k + 1]]

    def to_state(self) -> dict:
        """Plain arrays (``universe_genes``, ``universe_indptr``, ``universe_indices``) for a registry."""
        return {"universe_genes": self.extra.copy(), "universe_indptr": self.indptr.copy(),
                "universe_indices": self.indices.copy()}

    @classmethod
    def from_state(cls, measured, state: dict) -> GeneUniverse:
        """Rebuild from :meth:`to_state` (registries without these keys: measured genes only)."""
        if "universe_genes" not in state:
            return cls(measured)
        return cls(measured, state["universe_genes"], state["universe_indptr"], state["universe_indices"])


def gene_universe(
    symbols: Sequence[str], network: pd.DataFrame | None = None, extra_genes: Iterable[str] = ()
) -> GeneUniverse:
    """Build the :class:`GeneUniverse` of measured ``symbols``, a prior ``network`` and ``extra_genes``.

    Parameters
    ----------
    symbols
        Symbols of the measured genes, in model order.
    network
        Prior regulatory network with ``source`` and ``target`` symbol columns (e.g.
        :func:`genohoption.pp.read_prior`), or ``None``. Its genes that are not measured become extra
        genes; an edge between an extra gene and a measured gene (either direction) joins them.
        Matching is case-insensitive; self-edges are ignored.
    extra_genes
        More symbols to accept as perturbed genes although they are neither measured nor in the network
        (they get no edges).

    Returns
    -------
    :class:`GeneUniverse`, extra genes sorted by symbol.
    """
    measured = np.asarray(symbols, dtype=str)
    upper_measured = pd.Index(np.char.upper(measured))
    spelled: dict[str, str] = {}
    rows = pd.DataFrame({"a": [], "b": []}, dtype=str)
    if network is not None and len(network):
        src = network["source"].astype(str).to_numpy()
        tgt = network["target"].astype(str).to_numpy()
        for s in np.concatenate([src, tgt]):
            spelled.setdefault(s.upper(), s)
        e = pd.DataFrame({"a": np.char.upper(src.astype(str)), "b": np.char.upper(tgt.astype(str))})
        e = e[e["a"] != e["b"]]
        # unordered pairs: (extra gene, measured gene) in either direction
        rows = pd.concat([e, e.rename(columns={"a": "b", "b": "a"})], ignore_index=True)
    for g in extra_genes:
        spelled.setdefault(str(g).upper(), str(g))
    measured_set = set(upper_measured)
    extra_upper = sorted(u for u in spelled if u not in measured_set)
    extra = np.asarray([spelled[u] for u in extra_upper], dtype=str)
    slot = pd.Series(np.arange(len(extra_upper), dtype=np.int64), index=pd.Index(extra_upper))
    positions = pd.DataFrame({"b": upper_measured, "col": np.arange(measured.size, dtype=np.int64)})
    rows = rows[rows["a"].isin(slot.index) & rows["b"].isin(measured_set)]
    pairs = rows.merge(positions, on="b")
    pairs["row"] = slot.reindex(pairs["a"]).to_numpy()
    pairs = pairs[["row", "col"]].drop_duplicates().sort_values(["row", "col"])
    indptr = np.zeros(len(extra_upper) + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs["row"].to_numpy(np.int64), minlength=len(extra_upper)), out=indptr[1:])
    return GeneUniverse(measured, extra, indptr, pairs["col"].to_numpy(np.int64))


def condition_gene_indices(
    conditions: Sequence[str], symbols: Sequence[str] | GeneUniverse, control_value: str = "ctrl", *,
    what: str = "condition",
) -> np.ndarray:
    """Return the perturbed genes of each condition as indices, ``(n_conditions, max_genes)``, ``-1`` padded.

    Parameters
    ----------
    conditions
        GEARS condition strings.
    symbols
        Gene symbols of the model's genes, in model order (exact matches only), or a
        :class:`GeneUniverse`: indices are then universe positions (measured genes first, then the
        extra genes).
    control_value
        The control condition.
    what
        Name of the conditions' source, for error messages.

    Raises
    ------
    ValueError
        For malformed conditions.
    KeyError
        If a perturbed gene is not among ``symbols`` (not in the universe); the message names the genes.
    """
    parsed = parse_conditions(conditions, control_value)
    universe = symbols if isinstance(symbols, GeneUniverse) else None
    if universe is not None:
        find = universe.find
    else:
        index = gene_index(symbols)
        find = index.get
    missing = sorted({g for genes in parsed.values() for g in genes if find(g) is None})
    if missing:
        bad = [c for c, genes in parsed.items() if any(g in missing for g in genes)]
        head = (f"Perturbed genes {missing[:10]!r}{' …' if len(missing) > 10 else ''} ({len(missing)} in all) of "
                f"{what}")
        if universe is not None:
            raise KeyError(
                f"{head} are not in the model's gene universe: neither measured (check that gene_symbols= names "
                f"the var column with the symbols the conditions use) nor genes of the prior network "
                f"({universe.n_extra} unmeasured genes) nor extra_genes. To perturb them, set up the "
                "training data with setup_anndata(..., extra_genes=[...]) (having no regulatory edge, they are "
                "joined to every measured gene), or drop those conditions, e.g. "
                f"adata = adata[~adata.obs[key].isin({bad[:3]!r}{'+…' if len(bad) > 3 else ''})].copy()."
            )
        raise KeyError(
            f"{head} are not among the measured genes. Drop those conditions, e.g. "
            f"adata = adata[~adata.obs[key].isin({bad[:3]!r}{'+…' if len(bad) > 3 else ''})].copy() "
            "(gh.datasets.read_gears(path, drop_unmeasured=True) does this on loading), or check that "
            "gene_symbols= names the var column with the symbols used in the conditions."
        )
    width = max([len(g) for g in parsed.values()] + [1])
    table = np.full((len(conditions), width), -1, dtype=np.int64)
    for row, c in enumerate(conditions):
        genes = parsed[c]
        table[row, : len(genes)] = [find(g) for g in genes]
    return table


def control_mask(conditions: pd.Series | np.ndarray, control_value: str) -> np.ndarray:
    """Boolean mask of the control cells."""
    return np.asarray(pd.Series(conditions).astype(str) == control_value)


def condition_list(conditions: str | Sequence[str]) -> tuple[list[str], bool]:
    """Read the ``conditions`` argument of a ``predict_perturbation``: one condition or a list of them.

    Returns
    -------
    The conditions as a list, and whether one condition (a string) was given.

    Raises
    ------
    TypeError
        If ``conditions`` is neither a string nor a non-empty list of strings.
    """
    single = isinstance(conditions, str)
    conds = [conditions] if single else (list(conditions) if isinstance(conditions, Sequence) else None)
    if not conds or not all(isinstance(c, str) for c in conds):
        raise TypeError(f"conditions must be a condition string or a list of them, got {conditions!r}.")
    return conds, single


def perturbation_result(adata, conditions: list[str], single: bool, predictions: list[np.ndarray], *,
                        key_prefix: str, record: dict, record_path: tuple[str, ...]):
    """Write and return the predictions of a ``predict_perturbation`` call (the model's and the baselines').

    Parameters
    ----------
    adata
        The control cells predicted from, ``(n_obs, n_vars)``.
    conditions, single
        As returned by :func:`condition_list`.
    predictions
        One condition: ``[(n_obs, n_vars)]`` per-cell predictions. Several: one ``(n_vars,)`` mean profile
        per condition.
    key_prefix
        Prefix of the layer of a single condition's predictions.
    record
        Parameters of the call, recorded in ``adata.uns["genohoption"]`` at ``record_path`` with the layer
        written (``None`` for several conditions).
    record_path
        Keys of the record under ``adata.uns["genohoption"]``.

    Returns
    -------
    One condition: the ``(n_obs, n_vars)`` float32 array, also written to
    ``adata.layers[f"{key_prefix}{condition}"]``. Several: an AnnData ``(n_conditions, n_vars)`` of mean
    profiles, ``obs_names`` = conditions, ``obs["n_cells"]``, ``var`` = ``adata.var``.

    Raises
    ------
    TypeError
        If ``adata.uns["genohoption"]`` is not a dict.
    """
    from anndata import AnnData

    from ._validate import uns_entry

    entry = uns_entry(adata, create=True)
    for key in record_path[:-1]:
        entry = entry.setdefault(key, {})
    if single:
        layer = f"{key_prefix}{conditions[0]}"
        adata.layers[layer] = predictions[0]
        entry[record_path[-1]] = {**record, "layer": layer}
        return predictions[0]
    entry[record_path[-1]] = {**record, "layer": None}
    obs = pd.DataFrame({"n_cells": np.full(len(conditions), adata.n_obs)},
                       index=pd.Index(conditions, name="condition"))
    return AnnData(X=np.vstack(predictions).astype(np.float32), obs=obs, var=adata.var.copy())
