"""Input checks shared by ``pp``, ``model``, ``tl`` and ``datasets`` (no torch here).

Every check raises before anything is written, with a typed error whose message names the fix:
``TypeError`` for a wrong kind of object or dtype, ``KeyError`` for a missing key, ``ValueError`` for
bad values or shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

#: rows checked at a time for dense matrices (bounds the temporary memory of the checks)
_CHECK_ELEMENTS = 2**24

RNA_MODALITY = "rna"
"""Modality of a :class:`~mudata.MuData` used where an AnnData is expected."""


def _is_mudata(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "mudata" and hasattr(obj, "mod")


def as_anndata(adata: Any, *, name: str = "adata", allow_backed: bool = False) -> AnnData:
    """Return ``adata`` as an :class:`~anndata.AnnData`, or raise a clear error.

    A :class:`~mudata.MuData` stands for its RNA modality, ``mdata.mod["rna"]`` (the object itself,
    not a copy: what a function writes lands in that modality).

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` or :class:`~mudata.MuData`.
    name
        Name of the argument, for messages.
    allow_backed
        Accept a backed AnnData (``adata.isbacked``).

    Returns
    -------
    The AnnData (the RNA modality of a MuData).

    Raises
    ------
    TypeError
        If ``adata`` is neither AnnData nor MuData (e.g. a NumPy array or a DataFrame).
    KeyError
        If a MuData has no ``"rna"`` modality.
    ValueError
        If the AnnData is backed and ``allow_backed`` is false.
    """
    if _is_mudata(adata):
        if RNA_MODALITY not in adata.mod:
            raise KeyError(
                f"{name} is a MuData without an {RNA_MODALITY!r} modality (has {list(adata.mod)}); pass the "
                f"AnnData of the gene-expression modality, e.g. {name}.mod['<name>']."
            )
        adata = adata.mod[RNA_MODALITY]
    if not isinstance(adata, AnnData):
        raise TypeError(
            f"{name} must be an AnnData (or a MuData with an {RNA_MODALITY!r} modality), got "
            f"{type(adata).__name__}; wrap a matrix with anndata.AnnData(X, obs=..., var=...)."
        )
    if adata.isbacked and not allow_backed:
        raise ValueError(
            f"{name} is backed (file {adata.filename}) but this function needs it in memory; load it with "
            f"{name} = {name}.to_memory() or anndata.read_h5ad(path) without backed=."
        )
    return adata


def matrix_name(layer: str | None) -> str:
    """``"adata.X"`` or ``"adata.layers['<layer>']"``, for messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, checked to be a numeric matrix.

    Parameters
    ----------
    adata
        Data, ``(n_obs, n_vars)``.
    layer
        Layer name; ``None`` for ``adata.X``.

    Returns
    -------
    The matrix as stored (NumPy array, SciPy sparse matrix or an h5py/backed array), not copied.

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    ValueError
        If ``adata.X`` is ``None``.
    TypeError
        If the values are not real numbers, or are float16 (too imprecise; convert to float32).
    """
    if layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer={layer!r} is not in adata.layers; available: {list(adata.layers)}.")
        X = adata.layers[layer]
    else:
        X = adata.X
        if X is None:
            raise ValueError("adata.X is empty (None); pass layer= naming the layer that holds expression.")
    where = matrix_name(layer)
    dtype = getattr(X, "dtype", None)
    if dtype is None:
        raise TypeError(f"{where} must be a NumPy array or SciPy sparse matrix, got {type(X).__name__}.")
    if dtype == np.float16:
        raise TypeError(f"{where} is float16, too imprecise; convert it with {where} = {where}.astype('float32').")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise TypeError(f"{where} must hold real numbers, got dtype {dtype}; convert it to float32.")
    return X


def check_values(X, where: str = "the expression matrix") -> None:
    """Raise ``ValueError`` unless every value of ``X`` is finite and non-negative.

    Parameters
    ----------
    X
        Dense or sparse ``(n_obs, n_vars)`` matrix. Dense matrices are read in chunks of rows, so the
        check needs little extra memory.
    where
        Name of the matrix, for messages.

    Raises
    ------
    ValueError
        For NaN, inf or negative values (scaled or centred data).
    """
    if sparse.issparse(X):
        chunks = [X.data]
    else:
        X = np.asarray(X) if not hasattr(X, "shape") else X
        step = max(1, _CHECK_ELEMENTS // max(int(X.shape[1]) if X.ndim > 1 else 1, 1))
        chunks = (np.asarray(X[s : s + step]) for s in range(0, X.shape[0], step))
    for chunk in chunks:
        if chunk.size == 0:
            continue
        if not np.isfinite(chunk).all():
            raise ValueError(
                f"{where} contains NaN or infinite values; remove or impute them (e.g. recompute the "
                "log-normalisation) first."
            )
        if (chunk < 0).any():
            raise ValueError(
                f"{where} contains negative values; genohoption expects counts or log-normalised expression "
                "(sc.pp.normalize_total + sc.pp.log1p), not scaled or centred data."
            )


def check_unique_var_names(adata: AnnData) -> None:
    """Raise ``ValueError`` when ``adata.var_names`` repeat (genes are matched by name)."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"adata.var_names are not unique (e.g. {dup}); call adata.var_names_make_unique() first.")


def check_obs_key(adata: AnnData, key: str, what: str) -> pd.Series:
    """Return ``adata.obs[key]``; raise ``KeyError`` naming the available columns when it is missing."""
    if key not in adata.obs:
        raise KeyError(f"{what}={key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
    return adata.obs[key]


def check_labels(adata: AnnData, labels_key: str, *, min_classes: int = 2) -> None:
    """Raise when ``adata.obs[labels_key]`` is missing, has missing values or too few classes.

    Raises
    ------
    KeyError
        If the column is missing.
    ValueError
        For missing labels or fewer than ``min_classes`` distinct labels.
    """
    labels = check_obs_key(adata, labels_key, "labels_key")
    if labels.isna().any():
        raise ValueError(
            f"adata.obs[{labels_key!r}] has {int(labels.isna().sum())} missing labels; drop those cells "
            f"(adata = adata[adata.obs[{labels_key!r}].notna()].copy()) or fill them."
        )
    if pd.Series(labels).nunique() < min_classes:
        raise ValueError(f"adata.obs[{labels_key!r}] needs at least {min_classes} cell types to train a classifier.")


def check_key(key: Any, what: str = "key_added") -> str:
    """Return ``key`` if it is a non-empty string without ``/`` (h5ad stores refuse it); else ``ValueError``."""
    if not isinstance(key, str) or not key or "/" in key:
        raise ValueError(f"{what} must be a non-empty string without '/', got {key!r}.")
    return key


def check_csr_structure(indptr, indices, n_rows: int, n_cols: int, where: str) -> None:
    """Check CSR index arrays before any C code reads them (a bad structure can crash the interpreter).

    Parameters
    ----------
    indptr
        ``(n_rows + 1,)`` row pointers.
    indices
        ``(nnz,)`` column indices.
    n_rows, n_cols
        Shape of the matrix.
    where
        Name of the matrix, for messages.

    Raises
    ------
    ValueError
        If ``indptr`` has the wrong length, does not start at 0, decreases, or does not end at
        ``len(indices)``, or if an index is negative or ``>= n_cols``, or the arrays are not integers.
    """
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    fix = "rebuild it (e.g. gh.pp.build_gene_graph) or repair the file"
    if indptr.ndim != 1 or indices.ndim != 1 or not (
        np.issubdtype(indptr.dtype, np.integer) and np.issubdtype(indices.dtype, np.integer)
    ):
        raise ValueError(f"{where} is not a valid CSR matrix (index arrays must be 1-D integers); {fix}.")
    if indptr.size != n_rows + 1 or indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError(
            f"{where} is not a valid CSR matrix (row pointers of length {indptr.size} from {indptr[:1]} to "
            f"{indptr[-1:]} for {n_rows} rows and {indices.size} entries); {fix}."
        )
    if indptr.size > 1 and (np.diff(indptr) < 0).any():
        raise ValueError(f"{where} is not a valid CSR matrix (row pointers decrease); {fix}.")
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(
            f"{where} is not a valid CSR matrix (column index out of [0, {n_cols}): "
            f"{int(indices.min())}..{int(indices.max())}); {fix}."
        )


def check_sparse_structure(M, where: str) -> None:
    """Check a SciPy sparse matrix's index arrays (CSR, CSC or COO) before SciPy's C code reads them.

    Raises
    ------
    ValueError
        For a corrupt structure (see :func:`check_csr_structure`).
    """
    n_rows, n_cols = M.shape
    if M.format == "csr":
        check_csr_structure(M.indptr, M.indices, n_rows, n_cols, where)
    elif M.format == "csc":
        check_csr_structure(M.indptr, M.indices, n_cols, n_rows, where)
    elif M.format == "coo":
        for name, idx, n in (("row", M.row, n_rows), ("col", M.col, n_cols)):
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{where} is not a valid COO matrix ({name} index out of range).")
    if M.format in ("csr", "csc", "coo") and np.asarray(M.data).size != M.nnz:
        raise ValueError(f"{where} is not a valid sparse matrix (data and index arrays differ in length).")


def check_graph(adata: AnnData, graph_key: str) -> sparse.csr_matrix:
    """Return ``adata.varp[graph_key]`` as a validated CSR matrix with sorted indices (a copy).

    Parameters
    ----------
    adata
        Data holding the gene graph, ``(n_vars, n_vars)`` in ``adata.varp[graph_key]``.
    graph_key
        Key of ``adata.varp`` (written by :func:`genohoption.pp.build_gene_graph`).

    Returns
    -------
    ``(n_vars, n_vars)`` CSR matrix, explicit zeros removed, indices sorted.

    Raises
    ------
    KeyError
        If ``graph_key`` is not in ``adata.varp``.
    ValueError
        For a wrong shape, a corrupt sparse structure, NaN / inf / negative weights, no edge, or only
        self-loops.
    """
    if graph_key not in adata.varp:
        raise KeyError(
            f"graph_key={graph_key!r} is not in adata.varp; run gh.pp.build_gene_graph(adata, "
            f"key_added={graph_key!r}) first (available: {list(adata.varp)})."
        )
    where = f"adata.varp[{graph_key!r}]"
    raw = adata.varp[graph_key]
    if sparse.issparse(raw):
        check_sparse_structure(raw, where)
    graph = sparse.csr_matrix(raw, copy=True)
    if graph.shape != (adata.n_vars, adata.n_vars):
        raise ValueError(f"{where} must be (n_vars, n_vars) = {(adata.n_vars,) * 2}, got {graph.shape}.")
    if not np.issubdtype(graph.dtype, np.number) or np.issubdtype(graph.dtype, np.complexfloating):
        raise ValueError(f"{where} must hold real edge weights, got dtype {graph.dtype}.")
    if graph.nnz and (not np.isfinite(graph.data).all() or (graph.data < 0).any()):
        raise ValueError(
            f"{where} has NaN, infinite or negative edge weights; the attention uses the pattern of "
            "non-zero entries, so store 1 (or a positive weight) per edge: rebuild it with gh.pp.build_gene_graph."
        )
    graph.sum_duplicates()
    graph.eliminate_zeros()
    graph.sort_indices()
    off_diagonal = graph.nnz - int(np.count_nonzero(graph.diagonal()))
    if off_diagonal == 0:
        raise ValueError(
            f"{where} has no edge between two genes"
            + (f" ({graph.nnz} self-loops only)" if graph.nnz else "")
            + "; rebuild it with "
            "gh.pp.build_gene_graph using a lower min_corr or a prior network that covers these genes, or "
            "use attention='dense'."
        )
    return graph
