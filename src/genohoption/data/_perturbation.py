"""Perturbation conditions (GEARS format) and control-cell pairing for training.

GEARS (Roohani et al., 2023) writes a cell's condition as ``"ctrl"`` (control), ``"A+ctrl"`` or
``"ctrl+A"`` (one gene perturbed) and ``"A+B"`` (two genes perturbed), gene symbols joined by ``+``.

Training pairs a perturbed (target) cell with a random control (input) cell, as GEARS and scGPT do.
The pairing is drawn per minibatch inside a scvi-tools data loader (:class:`PairedControlDataLoader`,
used through :class:`PerturbationDataSplitter`): scvi-tools keeps the train / validation split, the
batching and the Lightning plumbing; the loader adds two tensors to every minibatch, the expression of
randomly drawn control cells (``"ctrl_x"``) and the perturbed genes' indices (``"pert_genes"``).
Draws come from a seeded generator: a new pairing every training epoch, the same pairing at every
validation pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS, settings
from scvi.data.fields import CategoricalObsField
from scvi.dataloaders import AnnDataLoader, DataSplitter

PERT_KEY = "perturbation"
"""Registry key of the perturbation condition field."""

CTRL_X_KEY = "ctrl_x"
"""Minibatch key of the paired control cells' expression ``(B, n_vars)``."""

PERT_GENES_KEY = "pert_genes"
"""Minibatch key of the perturbed genes' indices ``(B, max_genes)``, ``-1`` = none."""


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


class PerturbationField(CategoricalObsField):
    """Categorical ``obs`` field of perturbation conditions that also records the genes' symbols.

    The state registry gains ``gene_symbols`` (symbols of ``var_names``, used to place perturbation
    flags) and ``control_value``, so that a saved model can map condition strings to genes without
    the training data.

    Parameters
    ----------
    registry_key
        Key in the registry (:data:`PERT_KEY`).
    obs_key
        Column of ``adata.obs`` with the conditions.
    gene_symbols
        Column of ``adata.var`` with the symbols the conditions use; ``None``: ``var_names``.
    control_value
        The control condition.
    """

    def __init__(self, registry_key: str, obs_key: str, gene_symbols: str | None, control_value: str):
        super().__init__(registry_key, obs_key)
        self.gene_symbols = gene_symbols
        self.control_value = control_value

    def _symbols(self, adata) -> np.ndarray:
        if self.gene_symbols is None:
            return np.asarray(adata.var_names, dtype=str)
        return np.asarray(adata.var[self.gene_symbols].astype(str), dtype=str)

    def register_field(self, adata) -> dict:
        """Register the categories and record the gene symbols and control value."""
        state = super().register_field(adata)
        return {**state, "gene_symbols": self._symbols(adata), "control_value": self.control_value}

    def transfer_field(self, state_registry: dict, adata_target, **kwargs) -> dict:
        """Transfer the categories; symbols are taken from the target."""
        state = super().transfer_field(state_registry, adata_target, **kwargs)
        return {**state, "gene_symbols": self._symbols(adata_target), "control_value": self.control_value}


def control_mask(conditions: pd.Series | np.ndarray, control_value: str) -> np.ndarray:
    """Boolean mask of the control cells."""
    return np.asarray(pd.Series(conditions).astype(str) == control_value)


class PairedControlDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` whose minibatches carry paired control cells.

    Every minibatch gets ``"ctrl_x"`` ``(B, n_vars)`` float32, the expression of ``B`` control cells drawn
    uniformly with replacement, and ``"pert_genes"`` ``(B, max_genes)`` int64, the perturbed genes of
    each target cell (``-1`` = none).

    Parameters
    ----------
    adata_manager
        The registered data.
    control_x
        ``(n_control, n_vars)`` expression of the control cells (dense or sparse).
    condition_genes
        ``(n_conditions, max_genes)`` perturbed gene indices per condition code.
    seed
        Seed of the pairing. A shuffling (training) loader draws a new pairing on every pass; a
        non-shuffling (validation / test) loader the same pairing on every pass.
    **kwargs
        Passed to :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(self, adata_manager, *, control_x, condition_genes: np.ndarray, seed: int = 0, **kwargs):
        super().__init__(adata_manager, **kwargs)
        self._control_x = sp.csr_matrix(control_x) if sp.issparse(control_x) else np.asarray(control_x)
        self._condition_genes = torch.as_tensor(condition_genes, dtype=torch.int64)
        self._fixed = not kwargs.get("shuffle", False)
        self._seed = int(seed)
        self._passes = 0

    def __iter__(self):
        seed = self._seed if self._fixed else self._seed + 1 + self._passes
        self._passes += 1
        generator = torch.Generator().manual_seed(seed)
        n_control = self._control_x.shape[0]
        for batch in super().__iter__():
            codes = batch[PERT_KEY].view(-1).long()
            pick = torch.randint(n_control, (codes.shape[0],), generator=generator).numpy()
            rows = self._control_x[pick]
            rows = rows.toarray() if sp.issparse(rows) else rows
            batch[CTRL_X_KEY] = torch.as_tensor(np.asarray(rows, dtype=np.float32))
            batch[PERT_GENES_KEY] = self._condition_genes[codes]
            yield batch


class PerturbationDataSplitter(DataSplitter):
    """scvi-tools :class:`~scvi.dataloaders.DataSplitter` that pairs cells with random control cells.

    The split of cells into training and validation is scvi-tools' (random, seeded by
    ``scvi.settings.seed``); every loader is a :class:`PairedControlDataLoader`. The control cells and
    the condition → genes table are read from the registry (see
    :meth:`genohoption.GenoHoptionModel.setup_anndata` with ``perturbation_key``). All control cells
    serve as inputs, whichever split they fall in.

    Parameters
    ----------
    adata_manager
        Registered data of a perturbation model.
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`.
    """

    data_loader_cls = PairedControlDataLoader

    def __init__(self, adata_manager, **kwargs):
        super().__init__(adata_manager, **kwargs)
        state = adata_manager.get_state_registry(PERT_KEY)
        codes = np.asarray(adata_manager.get_from_registry(PERT_KEY)).reshape(-1)
        mapping = np.asarray(state["categorical_mapping"]).astype(str)
        control = state["control_value"]
        is_control = mapping[codes] == control
        X = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        self.data_loader_kwargs.update(
            control_x=X[np.flatnonzero(is_control)],
            condition_genes=condition_gene_indices(list(mapping), state["gene_symbols"], control),
            seed=settings.seed or 0,
        )
