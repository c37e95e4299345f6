"""Read GEARS-format Perturb-seq files (``perturb_processed.h5ad``: Adamson, Norman, Replogle)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._conditions import gene_index, parse_conditions
from .._constants import GENE_NAME_KEY, UNS_READ_GEARS
from .._validate import check_obs_key, check_values

logger = logging.getLogger(__name__)

SYMBOL_COLUMNS = ("gene_name", "feature_name", "gene_symbols", "gene_symbol", "symbol")
"""``var`` columns searched, in order, for gene symbols."""


def read_gears(
    path: str | os.PathLike,
    *,
    perturbation_key: str = "condition",
    control_value: str = "ctrl",
    drop_unmeasured: bool = False,
):
    """Read a GEARS ``perturb_processed.h5ad`` file and check its format.

    GEARS (Roohani et al. 2023) distributes Adamson, Norman and Replogle Perturb-seq data as AnnData with
    ``obs["condition"]`` in ``{"ctrl", "A+ctrl", "A+B"}`` (also ``"ctrl+A"``), ``obs["cell_type"]``,
    ``var["gene_name"]`` symbols (``var_names`` Ensembl ids) and log-normalised ``X``. Files cut by other
    tools sometimes name the symbol column ``feature_name``: the first of :data:`SYMBOL_COLUMNS` found is
    copied to ``var["gene_name"]`` when that column is absent.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    perturbation_key
        Column of ``obs`` with the conditions.
    control_value
        The control condition.
    drop_unmeasured
        Drop cells whose perturbed genes are not among the measured genes (``var["gene_name"]``): a
        :class:`~genohoption.GenoHoptionModel` flags perturbations on gene tokens and cannot model them.
        The number dropped is logged and recorded in ``uns["read_gears"]``.

    Returns
    -------
    AnnData with ``X`` as float32 CSR, ``var["gene_name"]`` and ``uns["read_gears"]`` (path, symbol
    column used, conditions, cells dropped, perturbed genes not measured). Use it with
    ``GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="gene_name")``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    KeyError
        If ``perturbation_key`` or a symbol column is missing.
    ValueError
        For malformed conditions, no control cells, or NaN / negative values in ``X``.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the path of a GEARS perturb_processed.h5ad file.")
    adata = ad.read_h5ad(path)
    check_obs_key(adata, perturbation_key, f"perturbation_key (in {path.name})")
    symbol_col = next((c for c in SYMBOL_COLUMNS if c in adata.var), None)
    if symbol_col is None:
        raise KeyError(
            f"{path.name} has no gene symbol column in var (looked for {SYMBOL_COLUMNS}); GEARS "
            "conditions are written with symbols."
        )
    if GENE_NAME_KEY not in adata.var:
        adata.var[GENE_NAME_KEY] = adata.var[symbol_col].astype(str).to_numpy()
    conditions = adata.obs[perturbation_key].astype(str)
    parsed = parse_conditions(conditions, control_value)
    if not (conditions == control_value).any():
        raise ValueError(
            f"{path.name} has no control cells (obs[{perturbation_key!r}] == {control_value!r}); pass "
            "control_value=."
        )
    check_values(adata.X, f"X of {path.name} (GEARS files hold log-normalised counts)")
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    index = gene_index(adata.var[GENE_NAME_KEY].astype(str))
    unmeasured = sorted({g for genes in parsed.values() for g in genes if g not in index})
    n_dropped = 0
    if drop_unmeasured and unmeasured:
        bad = {c for c, genes in parsed.items() if any(g not in index for g in genes)}
        keep = ~conditions.isin(bad).to_numpy()
        n_dropped = int((~keep).sum())
        adata = adata[keep].copy()
        if adata.obs[perturbation_key].dtype.name == "category":
            adata.obs[perturbation_key] = adata.obs[perturbation_key].cat.remove_unused_categories()
        logger.info("dropped %d cells perturbing %d unmeasured genes", n_dropped, len(unmeasured))
    adata.uns[UNS_READ_GEARS] = {
        "path": str(path),
        "symbol_column": symbol_col,
        "n_conditions": int(adata.obs[perturbation_key].nunique()),
        "n_cells_dropped": n_dropped,
        "unmeasured_perturbed_genes": unmeasured,
    }
    return adata
