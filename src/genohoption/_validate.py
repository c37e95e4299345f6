"""Input checks shared by ``pp``, ``model``, ``tl`` and ``datasets`` (no torch here).

Every check raises before anything is written, with a typed error whose message names the fix:
``TypeError`` for a wrong kind of object or dtype, ``KeyError`` for a missing key, ``ValueError`` for
bad values or shapes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._constants import UNS_KEY
from ._csr import check_csr, column_index_problem, row_pointer_problem, structure_error

#: rows checked at a time for dense matrices (bounds the temporary memory of the checks)
_CHECK_ELEMENTS = 2**24

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Largest float32; the models compute in float32, so larger values would become infinite."""

SCALE_SAMPLE_CELLS = 2000
"""Cells (evenly spaced rows) read by :func:`value_scale`."""

SCALE_RATIO = 4.0
"""A query whose maximum differs from the reference's by more than this factor, and whose values are integer
where the reference's are not (or the reverse), is flagged by :func:`check_value_scale`."""

SCALE_RATIO_ANY = 50.0
"""A query whose maximum differs from the reference's by more than this factor is flagged whatever its kind."""

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


def is_backed_matrix(X) -> bool:
    """Whether ``X`` is a matrix on disk: an :class:`h5py.Dataset` (dense) or anndata's backed CSR / CSC dataset.

    These are what ``adata.X`` is for an AnnData opened with ``anndata.read_h5ad(path, backed="r")``.
    """
    if sparse.issparse(X) or isinstance(X, np.ndarray):
        return False
    if getattr(X, "format", None) in ("csr", "csc") and hasattr(X, "shape"):
        return True  # anndata's backed sparse datasets
    return type(X).__module__.split(".")[0] == "h5py" and hasattr(X, "shape")


def check_row_access(X, where: str = "adata.X") -> None:
    """Raise ``ValueError`` when ``X`` is on disk in a layout that cannot be read a few rows (cells) at a time.

    A backed CSC matrix stores genes, not cells, contiguously: every minibatch of cells would read the whole
    file. Dense (``h5py``) and CSR matrices on disk, and every matrix in memory, pass.

    Raises
    ------
    ValueError
        For a backed CSC matrix, naming the fix (write the file with a CSR matrix, or load it in memory).
    """
    if is_backed_matrix(X) and getattr(X, "format", None) == "csc":
        raise ValueError(
            f"{where} is a backed CSC matrix, which can only be read a block of genes at a time (every minibatch "
            "of cells would read the whole file); write the file with a CSR matrix (adata = anndata.read_h5ad(path); "
            "adata.X = adata.X.tocsr(); adata.write_h5ad(path)) or load it with adata.to_memory()."
        )


def _backed_sparse_arrays(X, name: str, step: int):
    """Yield slices of ``step`` entries of a backed sparse matrix's ``data`` or ``indices`` array (on disk)."""
    arr = X.group[name]
    for s in range(0, int(arr.shape[0]), step):
        yield np.asarray(arr[s : s + step])


def check_backed_structure(X, where: str, fix: str = "") -> None:
    """Check a backed CSR / CSC matrix's index arrays on disk, reading ``indices`` in chunks.

    The row pointers are read whole (``n_obs + 1`` integers), the column indices ``2**24`` at a time, so
    memory stays bounded however large the file.

    Raises
    ------
    ValueError
        For a corrupt structure (see :func:`check_csr_structure`).
    """
    fix = fix or MATRIX_FIX
    group = getattr(X, "group", None)
    if group is None or "indptr" not in group or "indices" not in group:
        return
    n_rows, n_cols = (int(s) for s in X.shape)
    if X.format == "csc":
        n_rows, n_cols = n_cols, n_rows
    where, layout = f"{where} (on disk)", X.format.upper()
    n_entries = int(group["indices"].shape[0])
    problem = row_pointer_problem(np.asarray(group["indptr"][...]), n_rows, n_entries)
    if problem:
        raise structure_error(where, problem, fix, layout)
    if int(group["data"].shape[0]) != n_entries:
        raise ValueError(f"{where} is not a valid sparse matrix (data and index arrays differ in length); {fix}.")
    for chunk in _backed_sparse_arrays(X, "indices", _CHECK_ELEMENTS):
        problem = column_index_problem(chunk, n_cols)
        if problem:
            raise structure_error(where, problem, fix, layout)


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
        If ``adata.X`` is ``None``, or a sparse matrix whose index arrays are corrupt.
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
    if sparse.issparse(X):  # a corrupt structure (an h5ad can carry one) would crash SciPy's C code
        check_sparse_structure(X, where, MATRIX_FIX)
    elif is_backed_matrix(X) and getattr(X, "format", None) in ("csr", "csc"):
        check_backed_structure(X, where, MATRIX_FIX)  # the same, read from disk in chunks
    return X


def check_values(X, where: str = "the expression matrix") -> None:
    """Raise ``ValueError`` unless every value of ``X`` is finite, non-negative and within float32's range.

    Parameters
    ----------
    X
        Dense or sparse ``(n_obs, n_vars)`` matrix, in memory or on disk (backed AnnData). Dense
        matrices are read in chunks of rows and the values of backed sparse ones in chunks of entries,
        so the check needs little extra memory.
    where
        Name of the matrix, for messages.

    Raises
    ------
    ValueError
        For NaN, inf or negative values (scaled or centred data), or values above the largest float32
        (``3.4e38``; the models compute in float32).
    """
    if sparse.issparse(X):
        chunks = [X.data]
    elif is_backed_matrix(X) and getattr(X, "group", None) is not None and "data" in X.group:
        chunks = _backed_sparse_arrays(X, "data", _CHECK_ELEMENTS)  # the stored values, never the whole array
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
        if chunk.dtype.itemsize > 4 and np.issubdtype(chunk.dtype, np.floating) and (chunk > FLOAT32_MAX).any():
            raise ValueError(
                f"{where} holds values above {FLOAT32_MAX:.3g}, which become infinite in float32 (the models "
                "compute in float32); normalise the data first (sc.pp.normalize_total + sc.pp.log1p)."
            )


def value_scale(X) -> dict[str, Any]:
    """Summarise the scale of an expression matrix, to tell raw counts from log-normalised values.

    Parameters
    ----------
    X
        Dense or sparse ``(n_obs, n_vars)`` matrix of non-negative values; up to
        :data:`SCALE_SAMPLE_CELLS` evenly spaced rows are read.

    Returns
    -------
    ``{"max": float, "mean_nonzero": float, "integer": bool, "n_cells": int}``: the largest value, the
    mean of the non-zero values and whether every non-zero value is an integer (raw counts), over the
    rows read (``n_cells``).
    """
    n = int(X.shape[0])
    rows = np.unique(np.linspace(0, n - 1, min(n, SCALE_SAMPLE_CELLS)).round().astype(np.int64)) if n else []
    sample = X[rows] if n else X[:0]
    values = sample.data if sparse.issparse(sample) else np.asarray(sample).ravel()
    values = np.asarray(values, dtype=np.float64)
    values = values[values != 0]
    if values.size == 0:
        return {"max": 0.0, "mean_nonzero": 0.0, "integer": True, "n_cells": len(rows)}
    return {
        "max": float(values.max()),
        "mean_nonzero": float(values.mean()),
        "integer": bool(np.array_equal(values, np.round(values))),
        "n_cells": len(rows),
    }


def _describe_scale(scale: dict[str, Any]) -> str:
    kind = "integers (raw counts)" if scale["integer"] else "non-integer values (e.g. log-normalised)"
    return f"{kind}, max {scale['max']:.4g}"


def check_value_scale(reference: dict[str, Any] | None, query: dict[str, Any], where: str = "the query",
                      *, stacklevel: int = 2) -> bool:
    """Warn when ``query`` is clearly on another scale than ``reference`` (see :func:`value_scale`).

    Flagged: maxima more than :data:`SCALE_RATIO` apart with integer values on one side only (raw counts
    into a model trained on log-normalised data, or the reverse), or maxima more than
    :data:`SCALE_RATIO_ANY` apart. Nothing is compared when either summary is missing or all zero.

    Returns
    -------
    Whether a :class:`UserWarning` was issued.
    """
    if not reference or not query or reference.get("max", 0) <= 0 or query.get("max", 0) <= 0:
        return False
    ratio = query["max"] / reference["max"]
    far = max(ratio, 1 / ratio)
    if not ((far > SCALE_RATIO and query["integer"] != reference["integer"]) or far > SCALE_RATIO_ANY):
        return False
    warnings.warn(
        f"{where} holds {_describe_scale(query)}, but the model was trained on {_describe_scale(reference)}: "
        "transform the query as the reference was (e.g. sc.pp.normalize_total(query, target_sum=1e4) then "
        "sc.pp.log1p(query), or pass the same layer); predictions on another scale are unreliable.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return True


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


def uns_entry(adata: AnnData, *, create: bool = False) -> dict:
    """Return ``adata.uns["genohoption"]``, where the package records the parameters of its writes.

    Parameters
    ----------
    adata
        The AnnData written to.
    create
        Add an empty entry when there is none (only once everything is computed, right before writing).

    Returns
    -------
    The entry itself (a dict; an empty new dict, not stored, when it is missing and ``create`` is false).

    Raises
    ------
    TypeError
        If ``adata.uns["genohoption"]`` exists and is not a dict.
    """
    entry = adata.uns.get(UNS_KEY)
    if entry is None:
        entry = {}
        if create:
            adata.uns[UNS_KEY] = entry
    elif not isinstance(entry, dict):
        raise TypeError(
            f"adata.uns[{UNS_KEY!r}] is a {type(entry).__name__}, not a dict; rename or delete it before writing "
            "results."
        )
    return entry


GRAPH_FIX = "rebuild it (e.g. gh.pp.build_gene_graph) or repair the file"
"""The fix named when a gene graph's sparse structure is corrupt."""

MATRIX_FIX = "read the data again from an intact file, or repair the file it came from"
"""The fix named when an expression matrix's sparse structure is corrupt."""


def check_csr_structure(indptr, indices, n_rows: int, n_cols: int, where: str, fix: str = GRAPH_FIX) -> None:
    """:func:`genohoption._csr.check_csr` with the gene graph's fix named by default (for graphs read from files).

    Raises
    ------
    ValueError
        For a corrupt structure: ``"<where> is not a valid CSR matrix (<problem>); <fix>."``.
    """
    check_csr(indptr, indices, n_rows, n_cols, where, fix)


def check_sparse_structure(M, where: str, fix: str = GRAPH_FIX) -> None:
    """Check a SciPy sparse matrix's index arrays (CSR, CSC or COO) before SciPy's C code reads them.

    Raises
    ------
    ValueError
        For a corrupt structure (see :func:`check_csr_structure`).
    """
    n_rows, n_cols = M.shape
    if M.format == "csr":
        check_csr(M.indptr, M.indices, n_rows, n_cols, where, fix)
    elif M.format == "csc":
        check_csr(M.indptr, M.indices, n_cols, n_rows, where, fix, layout="CSC")
    elif M.format == "coo":
        for name, idx, n in (("row", M.row, n_rows), ("col", M.col, n_cols)):
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{where} is not a valid COO matrix ({name} index out of range); {fix}.")
    if M.format in ("csr", "csc", "coo") and np.asarray(M.data).size != M.nnz:
        raise ValueError(f"{where} is not a valid sparse matrix (data and index arrays differ in length); {fix}.")


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
