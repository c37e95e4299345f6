"""Seq2Graph: the gene graph (co-expression ∪ prior regulation) over ``adata.var_names``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import GRAPH_KEY, GRAPH_SOURCE_SUFFIX
from .._symbols import symbol_keys
from .._utils import _save_data
from .._validate import as_anndata, check_key, check_unique_var_names, check_values, get_matrix, matrix_name
from ._coexpression import (
    coexpression_topk_approx,
    coexpression_topk_exact,
    coexpression_topk_streamed,
    is_dask_array,
)
from ._priors import read_prior

logger = logging.getLogger(__name__)

EDGE_COEXPRESSION = 1
"""Code in ``varp[f"{key}_source"]`` of an edge found by co-expression only."""
EDGE_PRIOR = 2
"""Code of an edge from the prior network only."""
EDGE_BOTH = 3
"""Code of an edge found by both (``EDGE_COEXPRESSION | EDGE_PRIOR``)."""

ENGINE_IN_MEMORY = "in_memory"
"""``uns[key]["engine"]``: the matrix was in memory (blockwise exact or approx kernel)."""
ENGINE_STREAMED = "streamed"
"""The matrix was backed (on disk) and read in chunks of cells."""
ENGINE_DASK = "dask"
"""The matrix was a dask array, reduced block by block on dask's scheduler."""
ENGINE_NONE = "none"
"""No co-expression was computed (``edges="prior"``)."""

_MIN_PRIOR_COVERAGE = 0.05
_EDGES = ("both", "coexpression", "prior")
_METHODS = ("exact", "approx")


def build_gene_graph(
    adata: AnnData,
    *,
    layer: str | None = None,
    prior: pd.DataFrame | str | os.PathLike | Sequence[pd.DataFrame | str | os.PathLike] | None = "default",
    n_neighbors: int = 20,
    min_corr: float = 0.4,
    method: Literal["exact", "approx"] = "exact",
    cells: np.ndarray | Sequence[bool] | tuple[str, Any] | None = None,
    gene_symbols: str | None = None,
    edges: Literal["both", "coexpression", "prior"] = "both",
    allow_empty_prior: bool = False,
    block_size: int | None = None,
    random_state: int | None = 0,
    key_added: str = GRAPH_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Build the GenoHoption gene graph: co-expression neighbours ∪ prior regulatory edges.

    The graph restricts attention between gene tokens (Seq2Graph, Cheng et al., eq. 4): entry
    ``[i, j]`` means gene ``i`` attends to gene ``j``. Two edge sets are joined:

    * **co-expression** — Pearson correlation between genes across the selected cells; gene ``i``
      gets edges ``[i, j]`` to its ``n_neighbors`` genes ``j != i`` of largest ``|r|`` among those
      with ``|r| > min_corr`` (paper Table IV: 20 and 0.4). Computed blockwise from the sparse or
      dense matrix in float32 (every pair once; memory: one CSC copy plus two dense gene blocks).
      Constant genes (including all-zero ones) get no co-expression edges;
    * **prior** — TF → target edges of a regulatory network, matched on gene symbols: a TF ``j``
      regulating target ``i`` gives ``[i, j]`` (the target attends to its regulator).

    Parameters
    ----------
    adata
        Annotated data matrix, ``(n_obs, n_vars)``, with unique ``var_names``. Expression should be
        log-normalised (e.g. :func:`scanpy.pp.normalize_total` + :func:`scanpy.pp.log1p`). The matrix may
        be in memory, on disk (``anndata.read_h5ad(path, backed="r")``, dense or CSR) or a dask array
        (e.g. from :func:`anndata.experimental.read_elem_lazy`): these two are read once in chunks of
        cells (dask: one task per block of rows, on dask's current scheduler, so a ``distributed``
        cluster spreads it over many workers), never whole; only ``method="exact"`` applies to them.
        Memory then does not grow with the number of cells: the float64 gene-gene sums are held in bands
        of at most 512 MiB, one pass over the data per band (one band up to about 8,000 genes). Same edges
        as in memory.
    layer
        Layer to use instead of ``adata.X``. Values must be finite and non-negative. Integer (and
        boolean) data are upcast to float32; float64 is computed in float32; float16 is refused.
    prior
        Prior network: ``"default"`` (the packaged OmniPath transcriptional network, see
        :func:`genohoption.pp.read_prior`), a :class:`~pandas.DataFrame` with ``source``
        (TF), ``target`` (optional ``weight``, unused), a path to a CSV / TSV / parquet file of the
        same, a list of these (merged), or ``None`` for no prior.
    n_neighbors
        Co-expression neighbours per gene (``>= 1``).
    min_corr
        Keep co-expression neighbours with ``|r| > min_corr``; in ``[0, 1)``.
    method
        ``"exact"``: all pairs. ``"approx"``: ``5 * n_neighbors`` candidates per gene from
        correlations on a random subsample of 2,048 cells, re-ranked exactly on all cells (a neighbour
        the subsample misses is lost). Equal to ``"exact"`` for ``<= 2,048`` cells.
    cells
        Cells used for the correlations (e.g. the training cells only, so query cells never leak):
        a boolean mask of length ``n_obs``, or ``(obs_key, value)`` / ``(obs_key, [values, ...])``.
        ``None``: all cells.
    gene_symbols
        Column of ``adata.var`` with gene symbols to match the prior on (e.g. ``"feature_name"``
        when ``var_names`` are Ensembl IDs). ``None``: ``var_names``. Symbols are matched on the
        approved HGNC symbol of each side, letter case ignored: a gene measured under a previous or alias
        symbol gets the edges of its approved symbol (``MARCH8`` those of ``MARCHF8``), and a network
        written with older symbols or UniProt accessions matches too (the count is logged and stored).
        When several genes share a symbol, every one of them receives the symbol's prior edges.
    edges
        ``"both"`` (default), or an ablation: ``"coexpression"`` (paper's "w/o GRN"; ``prior`` is
        ignored) or ``"prior"`` (paper's "w/o Co").
    allow_empty_prior
        Accept a prior that matches no gene pair (instead of raising).
    block_size
        Genes per block of the exact kernel; ``None`` fits about 512 MiB of dense float32 blocks.
        Results do not depend on it (up to float32 round-off).
    random_state
        Seed of the cell subsample of ``method="approx"``.
    key_added
        Key of the graph in ``adata.varp`` and of its metadata in ``adata.uns``.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a modified copy of ``adata`` if ``copy=True``. Sets the following fields:

    ``adata.varp[key_added]`` : :class:`scipy.sparse.csr_matrix`, float32, ``(n_vars, n_vars)``
        The gene graph: ``1.0`` at ``[i, j]`` if gene ``i`` attends to gene ``j``; no self loops
        (the model adds them); union of both edge sets, deduplicated.
    ``adata.varp[key_added + "_source"]`` : :class:`scipy.sparse.csr_matrix`, int8
        Same sparsity; ``1`` co-expression only, ``2`` prior only, ``3`` both.
    ``adata.uns[key_added]`` : :class:`dict`
        ``"params"`` (all arguments, the prior described as a string, ``"n_cells"`` used),
        ``"n_edges"``, ``"n_coexpression_edges"``, ``"n_prior_edges"``, ``"n_both_edges"``,
        ``"mean_degree"`` (edges per gene), ``"engine"`` (how the co-expression was computed:
        ``"in_memory"``, ``"streamed"`` for a backed matrix, ``"dask"``, or ``"none"`` without
        co-expression), ``"n_genes_in_prior"`` (genes whose symbol occurs in the
        prior), ``"n_genes_matched_by_alias"`` (of those, genes found in the prior only through another
        HGNC symbol of the same gene), ``"prior_coverage"`` (fraction of genes with at least one prior edge),
        ``"prior_edges_kept"`` / ``"prior_edges_dropped"`` (prior rows with both / not both genes
        present; self-regulation counts as dropped), ``"source_codes"`` (code → name).

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData; the matrix is float16 or not numeric.
    KeyError
        ``layer``, ``gene_symbols`` or the ``cells`` obs key is missing.
    ImportError
        A dask array when dask is not installed (``pip install 'dask[array]'``).
    ValueError
        Duplicated ``var_names``; fewer than 3 cells selected; NaN, infinite or negative values;
        invalid ``n_neighbors``, ``min_corr``, ``method``, ``edges`` or ``cells``; ``method="approx"``,
        ``copy=True`` or a CSC matrix with a backed AnnData (``method="approx"`` with a dask array);
        a prior with the wrong columns, or one sharing no gene pair with the data (unless
        ``allow_empty_prior``); an empty resulting graph.

    In all these cases ``adata`` is left unchanged (values of a backed or dask matrix are checked as
    they are read, still before anything is written).

    Warns
    -----
    UserWarning
        If the prior covers fewer than 5% of the genes.

    References
    ----------
    Cheng et al., "Bridging Gene Network Graphs and Single-Cell Foundation Models" (GenoHoption).
    Türei et al., Mol. Syst. Biol. (2021) (OmniPath); Müller-Dott et al., Nucleic Acids Res. (2023)
    (CollecTRI); Garcia-Alonso et al., Genome Res. (2019) (DoRothEA); Han et al., Nucleic Acids Res.
    (2018) (TRRUST v2); Seal et al., Nucleic Acids Res. (2023) (HGNC).

    Examples
    --------
    >>> import genohoption as gh
    >>> adata = gh.datasets.pbmc68k_reduced()
    >>> gh.pp.build_gene_graph(adata, cells=("lane", ["1", "2", "3", "4", "5", "6", "7"]))
    >>> adata.varp["gene_graph"]
    <Compressed Sparse Row sparse matrix of dtype 'float32' ...>
    """
    adata = as_anndata(adata, allow_backed=True)
    _check_params(n_neighbors, min_corr, method, edges, key_added)
    check_unique_var_names(adata)
    if adata.isbacked and copy:
        raise ValueError(
            f"copy=True would load the backed AnnData (file {adata.filename}) into memory; use copy=False "
            "(the graph goes to adata.varp / adata.uns; with backed='r+', adata.write() stores it in the file)."
        )
    use_coexpression = edges in ("both", "coexpression")
    use_prior = edges in ("both", "prior") and prior is not None
    if edges == "prior" and prior is None:
        raise ValueError('`edges="prior"` needs a prior network; pass `prior="default"` or a DataFrame.')

    n_vars = adata.n_vars
    cell_mask, cells_desc = _cell_mask(adata, cells)
    n_cells = int(cell_mask.sum()) if cell_mask is not None else adata.n_obs

    X = None
    engine = ENGINE_NONE
    if use_coexpression:
        if n_cells < 3:
            raise ValueError(
                f"Co-expression needs at least 3 cells, got {n_cells} (after the `cells` selection). "
                'Select more cells or use `edges="prior"`.'
            )
        X, engine = _get_matrix(adata, layer, cell_mask)
        if engine != ENGINE_IN_MEMORY and method == "approx":
            raise ValueError(
                f'method="approx" needs the matrix in memory (it draws a random subsample of cells), but '
                f"{matrix_name(layer)} is {'a dask array' if engine == ENGINE_DASK else 'backed (on disk)'}; "
                'use method="exact", which reads it once in chunks of cells, or load it with adata.to_memory().'
            )
    elif layer is not None:
        get_matrix(adata, layer)  # the layer must exist even when only the prior is used

    # prior edges (validated before any heavy computation)
    prior_rows = np.empty(0, dtype=np.int64)
    prior_cols = np.empty(0, dtype=np.int64)
    prior_stats = {"n_genes_in_prior": 0, "n_genes_matched_by_alias": 0, "prior_edges_kept": 0,
                   "prior_edges_dropped": 0}
    if use_prior:
        net = _resolve_prior(prior)
        symbols = _gene_symbols(adata, gene_symbols)
        prior_rows, prior_cols, prior_stats = _match_prior(net, symbols)
        if prior_rows.size == 0 and not allow_empty_prior:
            raise ValueError(_no_prior_match_message(net, symbols, gene_symbols))

    co_rows = np.empty(0, dtype=np.int64)
    co_cols = np.empty(0, dtype=np.int64)
    if engine in (ENGINE_STREAMED, ENGINE_DASK):
        co_rows, co_cols, _ = coexpression_topk_streamed(
            X, n_neighbors, min_corr, cell_mask=cell_mask, block_size=block_size, where=matrix_name(layer)
        )
        del X
    elif use_coexpression:
        kernel = coexpression_topk_exact if method == "exact" else coexpression_topk_approx
        kwargs = {"block_size": block_size}
        if method == "approx":
            kwargs["random_state"] = random_state
        co_rows, co_cols, _ = kernel(X, n_neighbors, min_corr, **kwargs)
        del X

    co = sparse.csr_matrix(
        (np.full(co_rows.size, EDGE_COEXPRESSION, dtype=np.int8), (co_rows, co_cols)), shape=(n_vars, n_vars)
    )
    pr = sparse.csr_matrix(
        (np.full(prior_rows.size, EDGE_PRIOR, dtype=np.int8), (prior_rows, prior_cols)),
        shape=(n_vars, n_vars),
    )
    co.sum_duplicates()
    pr.sum_duplicates()
    co.data[:] = EDGE_COEXPRESSION
    pr.data[:] = EDGE_PRIOR
    source = (co + pr).tocsr()  # codes add up: 1 + 2 = 3 for both (neither has self loops)
    source.sort_indices()
    source = source.astype(np.int8)
    if source.nnz == 0:
        raise ValueError(
            "The gene graph is empty: no co-expression pair has |r| > min_corr and no prior edge matches. "
            "Lower `min_corr`, check the expression values, or pass a prior that matches `adata.var_names` "
            "(see `gene_symbols=`)."
        )
    graph = sparse.csr_matrix(
        (np.ones(source.nnz, dtype=np.float32), source.indices, source.indptr), shape=source.shape
    )

    codes = source.data
    n_co_only = int((codes == EDGE_COEXPRESSION).sum())
    n_prior_only = int((codes == EDGE_PRIOR).sum())
    n_both = int((codes == EDGE_BOTH).sum())
    is_prior = codes >= EDGE_PRIOR
    edge_rows = np.repeat(np.arange(n_vars), np.diff(source.indptr))
    incident = np.zeros(n_vars, dtype=bool)
    incident[edge_rows[is_prior]] = True
    incident[source.indices[is_prior]] = True
    prior_coverage = float(incident.mean()) if n_vars else 0.0
    if use_prior and prior_coverage < _MIN_PRIOR_COVERAGE:
        warnings.warn(
            f"The prior network gives edges to only {prior_coverage:.1%} of the {n_vars} genes "
            f"({prior_stats['prior_edges_kept']} prior edges kept). Check that gene names match "
            "(`gene_symbols=`) or use a larger prior.",
            UserWarning,
            stacklevel=2,
        )

    params = {
        "layer": "X" if layer is None else layer,
        "prior": _describe_prior(prior) if edges != "coexpression" else "none",
        "n_neighbors": int(n_neighbors),
        "min_corr": float(min_corr),
        "method": method,
        "cells": cells_desc,
        "n_cells": int(n_cells),
        "gene_symbols": "var_names" if gene_symbols is None else gene_symbols,
        "edges": edges,
        "allow_empty_prior": bool(allow_empty_prior),
        "random_state": -1 if random_state is None else int(random_state),
    }
    uns = {
        "params": params,
        "n_edges": int(source.nnz),
        "n_coexpression_edges": n_co_only + n_both,
        "n_prior_edges": n_prior_only + n_both,
        "n_both_edges": n_both,
        "mean_degree": float(source.nnz / max(n_vars, 1)),
        "engine": engine,
        "n_genes_in_prior": int(prior_stats["n_genes_in_prior"]),
        "n_genes_matched_by_alias": int(prior_stats["n_genes_matched_by_alias"]),
        "prior_coverage": prior_coverage,
        "prior_edges_kept": int(prior_stats["prior_edges_kept"]),
        "prior_edges_dropped": int(prior_stats["prior_edges_dropped"]),
        "source_codes": {"coexpression": EDGE_COEXPRESSION, "prior": EDGE_PRIOR, "both": EDGE_BOTH},
    }
    logger.info(
        "gene graph %r: %d edges (%d co-expression, %d prior, %d both) over %d genes from %d cells; params %s",
        key_added, source.nnz, n_co_only, n_prior_only, n_both, n_vars, n_cells, params,
    )  # fmt: skip

    if copy:
        adata = adata.copy()
    _save_data(adata, attr="varp", key=key_added, data=graph)
    _save_data(adata, attr="varp", key=key_added + GRAPH_SOURCE_SUFFIX, data=source)
    _save_data(adata, attr="uns", key=key_added, data=uns)
    return adata if copy else None


def _check_params(n_neighbors, min_corr, method, edges, key_added) -> None:
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
        raise ValueError(f"`n_neighbors` must be an integer >= 1, got {n_neighbors!r}.")
    if (
        isinstance(min_corr, bool)
        or not isinstance(min_corr, int | float | np.number)
        or not 0 <= min_corr < 1
    ):
        raise ValueError(f"`min_corr` must be a number in [0, 1), got {min_corr!r}.")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if edges not in _EDGES:
        raise ValueError(f"`edges` must be one of {_EDGES}, got {edges!r}.")
    check_key(key_added)


def _cell_mask(adata: AnnData, cells) -> tuple[np.ndarray | None, str]:
    """Boolean mask of the selected cells (``None`` = all) and a description for ``uns``."""
    if cells is None:
        return None, "all"
    if isinstance(cells, tuple):
        if len(cells) != 2 or not isinstance(cells[0], str):
            raise ValueError("`cells` as a tuple must be `(obs_key, value)` or `(obs_key, [values, ...])`.")
        key, values = cells
        if key not in adata.obs:
            raise KeyError(f"`cells` refers to obs column {key!r}, which is not in `adata.obs`.")
        values = list(values) if isinstance(values, list | tuple | set | np.ndarray | pd.Index) else [values]
        mask = adata.obs[key].isin(values).to_numpy()
        return mask, f"{key} in {[str(v) for v in values]}"
    mask = np.asarray(cells)
    if mask.dtype != bool or mask.ndim != 1 or mask.shape[0] != adata.n_obs:
        raise ValueError(
            f"`cells` must be a boolean mask of length n_obs={adata.n_obs} or an `(obs_key, values)` tuple; "
            f"got an array of dtype {mask.dtype} and shape {mask.shape}."
        )
    return mask, f"mask ({int(mask.sum())} of {adata.n_obs} cells)"


def _get_matrix(adata: AnnData, layer: str | None, cell_mask: np.ndarray | None):
    """Return the matrix to correlate and its engine.

    In memory: the selected cells' matrix, validated (finite, non-negative), integers upcast. Backed
    (on disk) or dask: the matrix itself, untouched; the streamed kernel selects, checks and upcasts chunk
    by chunk.
    """
    X = get_matrix(adata, layer)
    if is_dask_array(X):
        return X, ENGINE_DASK
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        fmt = getattr(X, "format", None)
        if fmt == "csc":
            raise ValueError(
                f"{matrix_name(layer)} is a backed CSC matrix, which can only be read a column block at a time "
                "(every chunk of cells would read the whole file); write the file with a CSR matrix "
                "(adata.X = adata.X.tocsr() before write_h5ad) or load it with adata.to_memory()."
            )
        if fmt == "csr" or (hasattr(X, "shape") and len(X.shape) == 2 and hasattr(X, "dtype")):
            return X, ENGINE_STREAMED  # h5py.Dataset or anndata's backed CSR dataset
        X = np.asarray(X)
    if sparse.issparse(X) and X.format not in ("csr", "csc"):
        X = sparse.csr_matrix(X)
    if cell_mask is not None:
        X = X[cell_mask]
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)  # counts and booleans: exact in float32 below 2**24
    check_values(X, matrix_name(layer))
    return X, ENGINE_IN_MEMORY


def _resolve_prior(prior) -> pd.DataFrame:
    return read_prior(prior)


def _describe_prior(prior) -> str:
    if prior is None:
        return "none"
    if isinstance(prior, pd.DataFrame):
        return f"DataFrame ({len(prior)} rows)"
    if isinstance(prior, list | tuple):
        return "[" + ", ".join(_describe_prior(p) for p in prior) + "]"
    return str(prior)


def _gene_symbols(adata: AnnData, gene_symbols: str | None) -> pd.Series:
    if gene_symbols is None:
        return pd.Series(adata.var_names.astype(str), index=adata.var_names)
    if gene_symbols not in adata.var:
        raise KeyError(
            f"`gene_symbols={gene_symbols!r}` is not a column of `adata.var` (columns: {list(adata.var.columns)})."
        )
    return adata.var[gene_symbols]


def _match_prior(net: pd.DataFrame, symbols: pd.Series) -> tuple[np.ndarray, np.ndarray, dict]:
    """Graph entries ``[target, TF]`` (row, col) of prior edges, matched on approved HGNC symbols.

    Both the data's symbols and the network's names go through :func:`genohoption._symbols.symbol_keys`
    (letter case ignored; previous / alias symbols and UniProt accessions to the approved symbol).
    """
    present = symbols.notna().to_numpy()
    raw = symbols.astype("string").str.upper().to_numpy()[present]
    genes = pd.DataFrame({"sym": symbol_keys(raw), "idx": np.flatnonzero(present)})
    e = pd.DataFrame(
        {"source": symbol_keys(net["source"].astype(str)), "target": symbol_keys(net["target"].astype(str))}
    )
    e = e.drop_duplicates()
    n_rows = len(e)
    known = set(genes["sym"])
    in_data = e["source"].isin(known) & e["target"].isin(known) & (e["source"] != e["target"])
    kept = e.loc[in_data]
    m = kept.merge(genes.rename(columns={"sym": "target", "idx": "row"}), on="target")
    m = m.merge(genes.rename(columns={"sym": "source", "idx": "col"}), on="source")
    m = m.loc[m["row"] != m["col"]]
    prior_keys = set(e["source"]) | set(e["target"])
    in_prior = genes["sym"].isin(prior_keys).to_numpy()
    written = set(net["source"].astype(str).str.upper()) | set(net["target"].astype(str).str.upper())
    by_alias = in_prior & ~pd.Series(raw).isin(written).to_numpy()
    if by_alias.any():
        examples = [f"{a} → {b}" for a, b in zip(raw[by_alias][:3], genes["sym"].to_numpy()[by_alias][:3], strict=True)]
        logger.info(
            "%d genes of the data matched the prior network through another HGNC symbol of the same gene "
            "(previous or alias symbol, or UniProt accession, e.g. %s)", int(by_alias.sum()), ", ".join(examples),
        )
    stats = {
        "n_genes_in_prior": int(in_prior.sum()),
        "n_genes_matched_by_alias": int(by_alias.sum()),
        "prior_edges_kept": len(kept),
        "prior_edges_dropped": int(n_rows - len(kept)),
    }
    return m["row"].to_numpy(np.int64), m["col"].to_numpy(np.int64), stats


def _no_prior_match_message(net: pd.DataFrame, symbols: pd.Series, gene_symbols: str | None) -> str:
    example = symbols.astype(str).head(3).tolist()
    prior_ex = net["source"].astype(str).head(3).tolist()
    msg = (
        f"No edge of the prior network ({len(net)} edges, e.g. TFs {prior_ex}) joins two genes of the data "
        f"(genes e.g. {example})."
    )
    if symbols.astype(str).str.upper().str.startswith("ENS").mean() > 0.5:
        msg += (
            " The genes look like Ensembl IDs while the prior uses symbols: pass `gene_symbols=` with the "
            "`adata.var` column holding symbols (e.g. `gene_symbols='feature_name'`)."
        )
    elif gene_symbols is None:
        msg += " Pass `gene_symbols=` if `adata.var` has a column with matching gene symbols."
    msg += (
        ' Use `edges="coexpression"` or `prior=None` to build without a prior, or `allow_empty_prior=True`.'
    )
    return msg
