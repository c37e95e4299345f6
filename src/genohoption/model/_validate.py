"""Input checks shared by the model's entry points; they raise before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer that holds expression.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not in adata.layers; available: {list(adata.layers)}.")
    return adata.layers[layer]


def check_values(X, what: str = "the expression matrix") -> None:
    """Raise ``ValueError`` when ``X`` holds NaN, inf or negative values."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size == 0:
        return
    if not np.issubdtype(data.dtype, np.number):
        raise TypeError(f"{what} has non-numeric dtype {data.dtype}; convert it to float32.")
    if not np.all(np.isfinite(data)):
        raise ValueError(
            f"{what} contains NaN or inf values; remove or impute them (e.g. np.nan_to_num) before training."
        )
    if data.min() < 0:
        raise ValueError(
            f"{what} contains negative values; genohoption expects counts or log-normalised expression "
            "(e.g. sc.pp.normalize_total + sc.pp.log1p), not scaled data."
        )


def check_unique_var_names(adata: AnnData) -> None:
    """Raise ``ValueError`` when ``var_names`` repeat."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"adata.var_names are not unique (e.g. {dup}); call adata.var_names_make_unique() first."
        )


def check_labels(adata: AnnData, labels_key: str) -> None:
    """Raise when ``labels_key`` is missing or holds missing values."""
    if labels_key not in adata.obs:
        raise KeyError(
            f"labels_key={labels_key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}."
        )
    labels = adata.obs[labels_key]
    if labels.isna().any():
        raise ValueError(
            f"adata.obs[{labels_key!r}] has {int(labels.isna().sum())} missing labels; drop those cells "
            f"(adata = adata[adata.obs[{labels_key!r}].notna()].copy()) or fill them."
        )
    if pd.Series(labels).nunique() < 2:
        raise ValueError(f"adata.obs[{labels_key!r}] needs at least 2 cell types to train a classifier.")


def check_graph(adata: AnnData, graph_key: str):
    """Return ``adata.varp[graph_key]`` as CSR with sorted indices; raise when missing or empty."""
    if graph_key not in adata.varp:
        raise KeyError(
            f"graph_key={graph_key!r} is not in adata.varp; run gh.pp.build_gene_graph(adata, "
            f"key_added={graph_key!r}) first (available: {list(adata.varp)})."
        )
    graph = sp.csr_matrix(adata.varp[graph_key], copy=True)
    if graph.shape != (adata.n_vars, adata.n_vars):
        raise ValueError(f"adata.varp[{graph_key!r}] must be (n_vars, n_vars), got {graph.shape}.")
    graph.eliminate_zeros()
    if graph.nnz == 0:
        raise ValueError(
            f"adata.varp[{graph_key!r}] has no edges; rebuild it with gh.pp.build_gene_graph using a lower "
            "min_corr or a prior network that covers these genes, or use attention='dense'."
        )
    graph.sort_indices()
    return graph
