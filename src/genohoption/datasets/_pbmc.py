"""Real single-cell data bundled with scanpy, reshaped for genohoption."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .._constants import LANE_KEY


def pbmc68k_reduced() -> ad.AnnData:
    """Scanpy's bundled ``pbmc68k_reduced`` with log-normalised expression in ``.X``.

    700 PBMCs (a subsample of 10x Genomics' 68k PBMC data, Zheng et al. 2017) × 765 genes (gene
    symbols). ``sc.datasets.pbmc68k_reduced()`` stores *scaled* values in ``.X``; here ``.X`` is
    replaced by ``.raw.X``, the log1p of counts per 10,000 (CSR, float32, the same 765 genes), which
    is what the gene graph and the models expect. Works offline (the file ships inside scanpy).

    Returns
    -------
    :class:`~anndata.AnnData` with

    ``.X``
        log1p CP10k, ``(700, 765)`` CSR float32;
    ``.obs["bulk_labels"]``
        cell type (10 categories), kept from scanpy, with the other ``obs`` columns;
    ``.obs["lane"]``
        categorical barcode suffix ``"1"`` … ``"8"`` (the ``-1`` … ``-8`` of ``obs_names``): one 10x
        lane per value, so a reference / query split is one line, e.g.
        ``ref = adata[adata.obs["lane"] != "8"]``;
    ``.obsm["X_pca"]``, ``.obsm["X_umap"]``
        kept from scanpy (computed on the scaled data).

    Examples
    --------
    >>> import genohoption as gh
    >>> adata = gh.datasets.pbmc68k_reduced()
    >>> adata.shape
    (700, 765)
    """
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    X = src.raw.X.copy()
    X = X.astype(np.float32) if X.dtype != np.float32 else X
    adata = ad.AnnData(
        X=X,
        obs=src.obs.copy(),
        var=src.raw.var.copy(),
        obsm={k: np.asarray(v).copy() for k, v in src.obsm.items()},
    )
    lane = pd.Index(adata.obs_names).str.rsplit("-", n=1).str[-1]
    adata.obs[LANE_KEY] = pd.Categorical(lane, categories=sorted(set(lane), key=int))
    for key in ("bulk_labels_colors",):
        if key in src.uns:
            adata.uns[key] = src.uns[key]
    return adata
