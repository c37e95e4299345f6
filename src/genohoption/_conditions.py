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


def condition_gene_indices(
    conditions: Sequence[str], symbols: Sequence[str], control_value: str = "ctrl", *, what: str = "condition"
) -> np.ndarray:
    """Return the perturbed genes of each condition as indices, ``(n_conditions, max_genes)``, ``-1`` padded.

    Parameters
    ----------
    conditions
        GEARS condition strings.
    symbols
        Gene symbols of the model's genes, in model order.
    control_value
        The control condition.
    what
        Name of the conditions' source, for error messages.

    Raises
    ------
    ValueError
        For malformed conditions.
    KeyError
        If a perturbed gene is not among ``symbols``. A perturbation is a flag on the perturbed gene's
        own token, which then reaches other genes through the graph; a gene that is not measured has
        no token to carry it.
    """
    parsed = parse_conditions(conditions, control_value)
    index = gene_index(symbols)
    missing = sorted({g for genes in parsed.values() for g in genes if g not in index})
    if missing:
        bad = [c for c, genes in parsed.items() if any(g in missing for g in genes)]
        raise KeyError(
            f"Perturbed genes {missing[:10]!r}{' …' if len(missing) > 10 else ''} ({len(missing)} in all) of "
            f"{what} are not among the model's genes: a perturbation is flagged on the perturbed gene's "
            "token, so the gene must be measured. Drop those conditions, e.g. "
            f"adata = adata[~adata.obs[key].isin({bad[:3]!r}{'+…' if len(bad) > 3 else ''})].copy() "
            "(gh.datasets.read_gears(path, drop_unmeasured=True) does this on loading), or check that "
            "gene_symbols= names the var column with the symbols used in the conditions."
        )
    width = max([len(g) for g in parsed.values()] + [1])
    table = np.full((len(conditions), width), -1, dtype=np.int64)
    for row, c in enumerate(conditions):
        genes = parsed[c]
        table[row, : len(genes)] = [index[g] for g in genes]
    return table


def control_mask(conditions: pd.Series | np.ndarray, control_value: str) -> np.ndarray:
    """Boolean mask of the control cells."""
    return np.asarray(pd.Series(conditions).astype(str) == control_value)
