"""Perturbation conditions in GEARS format (plain Python: no torch, no scvi).

GEARS (Roohani et al., 2023) writes a cell's condition as ``"ctrl"`` (control), ``"A+ctrl"`` or
``"ctrl+A"`` (one gene perturbed) and ``"A+B"`` (two genes perturbed), gene symbols joined by ``+``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from ._symbols import approved_symbol, symbol_keys, symbol_kind

logger = logging.getLogger(__name__)


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

    Finding a symbol (:meth:`lookup`): the exact symbol (measured genes first), else another HGNC symbol
    of the same gene — a previous or alias symbol (``MARCH8`` finds ``MARCHF8``, ``p53`` finds ``TP53``,
    and ``MARCHF8`` finds a gene measured as ``MARCH8``). A symbol that matches a gene only when letter
    case is ignored (``ctcf`` for ``CTCF``) is not found: :func:`condition_gene_indices` and
    :func:`gene_universe` raise an error naming the right symbol.

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
        self._by_gene: dict[str, int] | None = None
        self._by_key: dict[str, int] | None = None

    @property
    def n_measured(self) -> int:
        """Number of measured genes."""
        return int(self.measured.size)

    @property
    def n_extra(self) -> int:
        """Number of extra (unmeasured) genes."""
        return int(self.extra.size)

    @property
    def symbols(self) -> np.ndarray:
        """``(n_measured + n_extra,)`` symbols of the universe, measured genes first."""
        return np.concatenate([self.measured, self.extra])

    def __len__(self) -> int:
        return self.n_measured + self.n_extra

    def __repr__(self) -> str:
        return (f"GeneUniverse({self.n_measured} measured + {self.n_extra} extra genes, "
                f"{self.indices.size} edges from extra to measured genes)")

    def index(self) -> dict[str, int]:
        """Symbol → universe position, exact spelling (a symbol of several measured genes: the first)."""
        if self._index is None:
            self._index = gene_index(self.symbols)
        return self._index

    def _indexes(self) -> tuple[dict[str, int], dict[str, int]]:
        """Approved HGNC symbol (exact spelling) → position, and matching key (case ignored) → position."""
        if self._by_gene is None:
            symbols = self.symbols
            self._by_gene = gene_index([approved_symbol(s) or s for s in symbols])
            self._by_key = gene_index(symbol_keys(symbols))
        return self._by_gene, self._by_key

    def lookup(self, symbol: str) -> tuple[int | None, str]:
        """Find ``symbol`` in the universe, and say how.

        Returns
        -------
        ``(position, how)``: ``how`` is ``"exact"``; ``"alias"`` when ``symbol`` and the universe's symbol
        are two HGNC symbols of one gene (previous or alias symbol, exact spelling); ``"case"`` when they
        match only with letter case ignored (the position is then that of the gene meant, for an error
        message: callers must not use it silently); ``"missing"`` with position ``None``.
        """
        pos = self.index().get(symbol)
        if pos is not None:
            return pos, "exact"
        by_gene, by_key = self._indexes()
        pos = by_gene.get(approved_symbol(symbol) or symbol)
        if pos is not None:
            return pos, "alias"
        pos = by_key.get(symbol_keys([symbol])[0])
        return (pos, "case") if pos is not None else (None, "missing")

    def find(self, symbol: str) -> int | None:
        """Universe position of ``symbol`` (exact, or another HGNC symbol of the same gene) or ``None``."""
        pos, how = self.lookup(symbol)
        return pos if how in ("exact", "alias") else None

    def symbol(self, position: int) -> str:
        """Symbol of universe gene ``position``."""
        return str(self.measured[position] if position < self.n_measured else self.extra[position - self.n_measured])

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


def case_message(pairs: list[tuple[str, str]], what: str) -> str:
    """Error text for symbols that match a universe gene only with letter case ignored."""
    listed = ", ".join(f"{given!r} → write {meant!r}" for given, meant in pairs[:10])
    more = f" (and {len(pairs) - 10} more)" if len(pairs) > 10 else ""
    return (
        f"Gene symbols of {what} match genes of the model only when letter case is ignored: {listed}{more}. "
        "Symbols are matched exactly (and through HGNC previous and alias symbols): write them as the "
        "gene universe does."
    )


def _log_aliases(pairs: dict[str, str], what: str) -> None:
    for given, found in pairs.items():
        kind = symbol_kind(given)
        how = f"HGNC {kind} symbol of {approved_symbol(given)}" if kind else f"approved symbol of {found}"
        logger.info("%s: gene %r is %r in the gene universe (%s).", what, given, found, how)


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
        Network genes are matched to measured genes as :func:`genohoption.pp.build_gene_graph` matches
        them: on the approved HGNC symbol, letter case ignored (a network's ``MARCHF8`` is a measured
        ``MARCH8``; for a network gene named twice, ``TF1`` and ``tf1``, the first spelling is kept).
        Self-edges are ignored.
    extra_genes
        More symbols to accept as perturbed genes although they are neither measured nor in the network
        (they get no edges). A previous or alias symbol of a gene already in the universe is that gene
        (logged at INFO: ``MARCH8`` is the network's ``MARCHF8``); one of a new gene adds the gene under
        its approved symbol.

    Returns
    -------
    :class:`GeneUniverse`, extra genes sorted by their matching key (upper-case approved symbol).

    Raises
    ------
    KeyError
        If an extra gene matches a gene of the universe only when letter case is ignored (``"ctcf"`` for
        ``"CTCF"``); the message names the symbol to write.
    """
    measured = np.asarray(symbols, dtype=str)
    measured_keys = pd.Index(symbol_keys(measured))
    spelled: dict[str, str] = {}
    rows = pd.DataFrame({"a": [], "b": []}, dtype=str)
    if network is not None and len(network):
        src = network["source"].astype(str).to_numpy()
        tgt = network["target"].astype(str).to_numpy()
        src_keys, tgt_keys = symbol_keys(src), symbol_keys(tgt)
        for k, s in zip(np.concatenate([src_keys, tgt_keys]), np.concatenate([src, tgt]), strict=True):
            spelled.setdefault(k, s)
        e = pd.DataFrame({"a": src_keys, "b": tgt_keys})
        e = e[e["a"] != e["b"]]
        # unordered pairs: (extra gene, measured gene) in either direction
        rows = pd.concat([e, e.rename(columns={"a": "b", "b": "a"})], ignore_index=True)
    measured_set = set(measured_keys)
    network_extra = {k: s for k, s in spelled.items() if k not in measured_set}
    if extra_genes:
        base = GeneUniverse(measured, sorted(network_extra.values()))
        aliases, wrong_case = {}, []
        for g in (str(g) for g in extra_genes):
            pos, how = base.lookup(g)
            if how == "alias":
                aliases[g] = base.symbol(pos)
            elif how == "case":
                wrong_case.append((g, base.symbol(pos)))
            elif how == "missing":
                key = symbol_keys([g])[0]
                if key not in network_extra:
                    network_extra[key] = approved_symbol(g) or g
                    if network_extra[key] != g:
                        aliases[g] = network_extra[key]
        if wrong_case:
            raise KeyError(case_message(wrong_case, "extra_genes"))
        _log_aliases(aliases, "extra_genes")
    extra_keys = sorted(network_extra)
    extra = np.asarray([network_extra[k] for k in extra_keys], dtype=str)
    slot = pd.Series(np.arange(len(extra_keys), dtype=np.int64), index=pd.Index(extra_keys, dtype=object))
    positions = pd.DataFrame({"b": measured_keys, "col": np.arange(measured.size, dtype=np.int64)})
    rows = rows[rows["a"].isin(slot.index) & rows["b"].isin(measured_set)]
    pairs = rows.merge(positions, on="b")
    pairs["row"] = slot.reindex(pairs["a"]).to_numpy()
    pairs = pairs[["row", "col"]].drop_duplicates().sort_values(["row", "col"])
    indptr = np.zeros(len(extra_keys) + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs["row"].to_numpy(np.int64), minlength=len(extra_keys)), out=indptr[1:])
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
        Gene symbols of the model's genes, in model order, or a :class:`GeneUniverse`: indices are then
        universe positions (measured genes first, then the extra genes). A gene is found by its exact
        symbol or by another HGNC symbol of the same gene (``"MARCH8+ctrl"`` perturbs ``MARCHF8``; logged
        at INFO), see :meth:`GeneUniverse.lookup`.
    control_value
        The control condition.
    what
        Name of the conditions' source, for error messages.

    Raises
    ------
    ValueError
        For malformed conditions.
    KeyError
        If a perturbed gene is not among ``symbols`` (not in the universe), or matches one only when
        letter case is ignored (``"ctcf+ctrl"`` for ``CTCF``); the message names the genes, and the
        symbol to write.
    """
    parsed = parse_conditions(conditions, control_value)
    universe = symbols if isinstance(symbols, GeneUniverse) else None
    found = universe if universe is not None else GeneUniverse(symbols)
    genes = sorted({g for gs in parsed.values() for g in gs})
    looked = {g: found.lookup(g) for g in genes}
    wrong_case = [(g, found.symbol(pos)) for g, (pos, how) in looked.items() if how == "case"]
    if wrong_case:
        raise KeyError(case_message(wrong_case, what))
    missing = [g for g, (_, how) in looked.items() if how == "missing"]
    if missing:
        bad = [c for c, gs in parsed.items() if any(g in missing for g in gs)]
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
    _log_aliases({g: found.symbol(pos) for g, (pos, how) in looked.items() if how == "alias"}, what)
    width = max([len(g) for g in parsed.values()] + [1])
    table = np.full((len(conditions), width), -1, dtype=np.int64)
    for row, c in enumerate(conditions):
        gs = parsed[c]
        table[row, : len(gs)] = [looked[g][0] for g in gs]
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
