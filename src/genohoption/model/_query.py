"""Query data for inference: genes aligned to the model's by name, read in minibatches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._validate import (
    as_anndata,
    check_row_access,
    check_unique_var_names,
    check_value_scale,
    check_values,
    get_matrix,
    is_backed_matrix,
    matrix_name,
    value_scale,
)

if TYPE_CHECKING:
    from anndata import AnnData


@dataclass(frozen=True)
class Query:
    """Cells to run a model on, resolved once by the model and handed to its task.

    Attributes
    ----------
    adata
        The AnnData the results are written to (a MuData's ``"rna"`` modality; a view stays a view).
    X
        ``(n_obs, n_model_genes)`` expression in the model's gene order (:func:`aligned_matrix`): in
        memory, or read from disk a minibatch at a time (backed AnnData).
    layer
        Layer the expression was read from (``None``: ``X``).
    var_names
        The model's genes, in model order.
    batch_codes
        ``(n_obs,)`` int64 batch code of each cell for a model set up with ``batch_key``
        (:func:`~genohoption.model._batch.query_batch_codes`), else ``None``.
    new_batches
        Names of the query's batches that the model was not trained on.
    """

    adata: AnnData
    X: Any
    layer: str | None
    var_names: pd.Index
    batch_codes: np.ndarray | None = None
    new_batches: tuple[str, ...] = ()

    @property
    def n_genes_matched(self) -> int:
        """Genes of the query that are model genes."""
        return int(self.adata.var_names.astype(str).isin(self.var_names).sum())


def resolve_query(adata: Any, var_names: pd.Index, layer: str | None, *, reference_scale: dict | None,
                  check_backed) -> Query:
    """Check a query once and align its genes to the model's: the one entry of inference.

    Parameters
    ----------
    adata
        AnnData or MuData (its ``"rna"`` modality), possibly backed.
    var_names
        The model's genes, in model order.
    layer
        The model's layer (``None``: ``X``).
    reference_scale
        :func:`~genohoption._validate.value_scale` of the training data (``model.value_scale_``); a query
        clearly on another scale gets a warning. ``None``: not compared.
    check_backed
        The task's check of a backed AnnData (raises where the task cannot read one).

    Returns
    -------
    The :class:`Query`.

    Raises
    ------
    TypeError
        If ``adata`` is not an AnnData / MuData.
    ValueError
        If the query has no cells, shares no gene with the model, has duplicated gene names or bad
        values, or is a backed AnnData the task cannot read.
    KeyError
        If ``layer`` is missing.
    """
    adata = as_anndata(adata, allow_backed=True)
    if adata.isbacked:
        check_backed(adata, layer)
    if adata.n_obs == 0:
        raise ValueError("The query has no cells (n_obs = 0); pass at least one cell (check the filter that "
                         "selected them).")
    X = aligned_matrix(adata, var_names, layer, stacklevel=5)
    check_value_scale(reference_scale, value_scale(X), "The query", stacklevel=5)
    return Query(adata, X, layer, var_names)


def aligned_matrix(adata: AnnData, var_names: pd.Index, layer: str | None, *, stacklevel: int = 2):
    """Expression of ``adata`` in the order of ``var_names``; genes missing from ``adata`` are zero.

    Parameters
    ----------
    adata
        Query cells, ``(n_obs, n_vars)``.
    var_names
        The model's genes, in model order.
    layer
        Layer with the expression (``None``: ``adata.X``).
    stacklevel
        Of the warning about few shared genes (:func:`warnings.warn`).

    Returns
    -------
    ``(n_obs, len(var_names))`` matrix: ``adata``'s own matrix when the genes already match, else a
    CSR matrix (no dense copy). For a matrix on disk (backed AnnData) nothing is loaded: the matrix
    itself, or a :class:`BackedRows` that aligns the genes of the rows it reads; its values are checked
    as :func:`iter_rows` reads them.

    Raises
    ------
    ValueError
        If no gene is shared, the names repeat, values are NaN / negative, or the matrix is a backed CSC
        matrix (which cannot be read a few cells at a time).
    KeyError
        If ``layer`` is missing.
    """
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    backed = is_backed_matrix(X)
    if backed:
        check_row_access(X, matrix_name(layer))
    else:
        check_values(X, matrix_name(layer))
    query = adata.var_names.astype(str)
    if query.equals(var_names):
        return X
    pos = query.get_indexer(var_names)
    present = np.flatnonzero(pos >= 0)
    if present.size == 0:
        raise ValueError(
            "The query has no gene in common with the genes the model was trained on "
            f"(e.g. {var_names[:3].tolist()} vs {query[:3].tolist()}); check that both use the same "
            "identifiers (symbols or Ensembl ids)."
        )
    if present.size < 0.5 * var_names.size:
        warnings.warn(
            f"Only {present.size} of the model's {var_names.size} genes are in the query; the rest are "
            "treated as not expressed.",
            UserWarning,
            stacklevel=stacklevel,
        )
    select = sp.csr_matrix(
        (np.ones(present.size, np.float32), (np.arange(present.size), present)),
        shape=(present.size, var_names.size),
    )
    if backed:
        return BackedRows(X, pos[present], select)
    return sp.csr_matrix(X)[:, pos[present]] @ select


class BackedRows:
    """Rows of a matrix on disk with its genes put in the model's order, read only when indexed.

    Parameters
    ----------
    X
        ``(n_obs, n_query_genes)`` backed matrix (``h5py.Dataset`` or anndata's backed CSR dataset).
    columns
        Columns of ``X`` that are model genes, in the order of ``select``'s rows.
    select
        ``(len(columns), n_model_genes)`` 0/1 CSR matrix placing each of those columns at its model gene.
    """

    def __init__(self, X, columns: np.ndarray, select: sp.csr_matrix):
        self.X, self.columns, self.select = X, columns, select
        self.shape = (int(X.shape[0]), int(select.shape[1]))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows) -> sp.csr_matrix:
        """Read ``rows`` (a slice or sorted indices) from disk and align their genes (CSR)."""
        return sp.csr_matrix(self.X[rows])[:, self.columns] @ self.select


def is_backed(X) -> bool:
    """Whether ``X`` (from :func:`aligned_matrix`) is read from disk."""
    return isinstance(X, BackedRows) or is_backed_matrix(X)


def iter_rows(X, batch_size: int, device: torch.device, where: str = "adata.X") -> Iterator[torch.Tensor]:
    """Yield ``(<= batch_size, n_vars)`` float32 tensors of ``X``'s rows on ``device``, in order.

    A matrix on disk is read ``batch_size`` rows at a time (nothing else is loaded) and each minibatch's
    values are checked as it is read (:func:`~genohoption._validate.check_values`, naming ``where``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    backed = is_backed(X)
    for start in range(0, X.shape[0], batch_size):
        rows = X[start : start + batch_size]
        if backed:
            check_values(rows, where)
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        yield torch.as_tensor(rows, dtype=torch.float32, device=device)


class RowOutputs:
    """Per-cell outputs of a minibatch loop, copied into ``(n_obs, ...)`` arrays as the minibatches come.

    Each array is allocated once, at the first minibatch (or here, for the shapes in ``widths``), and
    filled in place; nothing of a minibatch outlives it. Keeping each minibatch's outputs in a list until
    one final ``np.concatenate`` would leave a small long-lived block on the heap after every forward
    pass, between the pass's large temporary buffers (whose sizes change with the minibatch's longest
    cell): glibc's allocator then cannot reuse or return that space, and its heap grew by several KiB
    per cell read (the process's peak memory with it); in place, it stays flat in the number of cells.

    Parameters
    ----------
    n_obs
        Number of cells (rows of every output).
    widths
        Shapes after the first axis of the outputs, to allocate them now as float32 (``None``: at the first
        minibatch, with the minibatch outputs' shapes and dtypes).

    Examples
    --------
    >>> rows = RowOutputs(5)
    >>> for start in range(0, 5, 2):
    ...     rows.add(torch.ones(min(2, 5 - start), 3))
    >>> rows.arrays[0].shape
    (5, 3)
    """

    def __init__(self, n_obs: int, widths: tuple[tuple[int, ...], ...] | None = None):
        self.n_obs, self.filled = int(n_obs), 0
        self.arrays: tuple[np.ndarray, ...] | None = None
        if widths is not None:
            self.arrays = tuple(np.empty((self.n_obs, *w), np.float32) for w in widths)

    def add(self, *outputs: torch.Tensor) -> None:
        """Copy one minibatch's outputs (``(b, ...)`` tensors, in the arrays' order) into the next ``b`` rows."""
        values = [t.detach().cpu().numpy() for t in outputs]
        if self.arrays is None:
            self.arrays = tuple(np.empty((self.n_obs, *v.shape[1:]), v.dtype) for v in values)
        stop = self.filled + values[0].shape[0]
        if len(values) != len(self.arrays) or stop > self.n_obs:
            raise ValueError(f"RowOutputs got {len(values)} outputs for rows {self.filled}..{stop}, expected "
                             f"{len(self.arrays)} outputs and at most {self.n_obs} rows.")
        for array, v in zip(self.arrays, values, strict=True):
            array[self.filled : stop] = v
        self.filled = stop
