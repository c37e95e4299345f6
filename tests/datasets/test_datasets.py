"""gh.datasets readers of bundled data (the default prior's tests are in tests/pp/test_priors.py)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

import genohoption as gh

# --- pbmc68k_reduced ----------------------------------------------------------------------------


def test_pbmc68k_reduced():
    import scanpy as sc

    adata = gh.datasets.pbmc68k_reduced()
    ref = sc.datasets.pbmc68k_reduced()
    assert adata.shape == (700, 765) and sparse.issparse(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_allclose(adata.X.toarray(), ref.raw.X.toarray())
    assert adata.X.min() >= 0
    assert adata.X.max() < np.log1p(1e4)  # log1p CP10k (over all genes; 765 kept)
    assert adata.obs["bulk_labels"].nunique() == 10
    assert list(adata.obs["lane"].cat.categories) == [str(i) for i in range(1, 9)]
    assert (adata.obs["lane"].astype(str) == adata.obs_names.str.split("-").str[-1]).all()
    ref_cells = adata[adata.obs["lane"] != "8"]
    assert 0 < ref_cells.n_obs < adata.n_obs
