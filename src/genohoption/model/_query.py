"""Query data for inference: genes aligned to the model's by name, read in minibatches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._validate import check_unique_var_names, check_values, get_matrix, matrix_name

if TYPE_CHECKING:
    from anndata import AnnData


def aligned_matrix(adata: AnnData, var_names: pd.Index, layer: str | None):
    """Expression of ``adata`` in the order of ``var_names``; genes missing from ``adata`` are zero.

    Parameters
    ----------
    adata
        Query cells, ``(n_obs, n_vars)``.
    var_names
        The model's genes, in model order.
    layer
        Layer with the expression (``None``: ``adata.X``).

    Returns
    -------
    ``(n_obs, len(var_names))`` matrix: ``adata``'s own matrix when the genes already match, else a
    CSR matrix (no dense copy).

    Raises
    ------
    ValueError
        If no gene is shared, the names repeat, or values are NaN / negative.
    KeyError
        If ``layer`` is missing.
    """
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
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
            stacklevel=4,
        )
    select = sp.csr_matrix(
        (np.ones(present.size, np.float32), (np.arange(present.size), present)),
        shape=(present.size, var_names.size),
    )
    return sp.csr_matrix(X)[:, pos[present]] @ select


def iter_rows(X, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Yield ``(<= batch_size, n_vars)`` float32 tensors of ``X``'s rows on ``device``, in order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for start in range(0, X.shape[0], batch_size):
        rows = X[start : start + batch_size]
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        yield torch.as_tensor(rows, dtype=torch.float32, device=device)
