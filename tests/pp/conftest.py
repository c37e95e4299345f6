from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse


def correlated_counts(n_cells: int = 240, n_genes: int = 90, seed: int = 0) -> np.ndarray:
    """Non-negative, sparse-ish data with low-rank gene-gene correlation, plus special genes."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_cells, 6))
    loadings = rng.normal(size=(6, n_genes)) * (rng.random((6, n_genes)) < 0.4)
    X = np.maximum(factors @ loadings + rng.normal(size=(n_cells, n_genes)), 0)
    X = np.log1p(3 * X).astype(np.float32)
    X[:, 3] = 0.0  # all-zero gene
    X[:, 7] = 1.5  # constant gene
    return X


def naive_edges(X: np.ndarray, k: int, min_corr: float) -> set[tuple[int, int]]:
    """Reference: dense np.corrcoef + argpartition."""
    with np.errstate(all="ignore"):
        R = np.corrcoef(np.asarray(X, dtype=np.float64).T)
    A = np.abs(np.nan_to_num(R))
    np.fill_diagonal(A, 0)
    out = set()
    for i in range(A.shape[0]):
        if (A[i] > min_corr).sum() <= k:
            cand = np.nonzero(A[i] > min_corr)[0]
        else:
            cand = np.argpartition(-A[i], k - 1)[:k]
        out |= {(i, int(j)) for j in cand if A[i, j] > min_corr}
    return out


def graph_edges(adata: ad.AnnData, key: str = "gene_graph") -> set[tuple[int, int]]:
    g = adata.varp[key].tocoo()
    return set(zip(g.row.tolist(), g.col.tolist(), strict=True))


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The reference functions above, for the test modules (a conftest is not importable by name)."""
    return SimpleNamespace(correlated_counts=correlated_counts, naive_edges=naive_edges, graph_edges=graph_edges)


@pytest.fixture
def X_corr() -> np.ndarray:
    return correlated_counts()


@pytest.fixture
def adata_corr(X_corr) -> ad.AnnData:
    n_cells, n_genes = X_corr.shape
    adata = ad.AnnData(
        sparse.csr_matrix(X_corr),
        obs=pd.DataFrame(
            {"split": np.where(np.arange(n_cells) % 4 == 0, "query", "ref")},
            index=[f"c{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(
            {"feature_name": [f"GENE{i}" for i in range(n_genes)]},
            index=[f"ENSG{i:011d}" for i in range(n_genes)],
        ),
    )
    return adata


@pytest.fixture
def adata_sym(adata_corr) -> ad.AnnData:
    """Same data with symbols as var_names."""
    adata = adata_corr.copy()
    adata.var_names = adata.var["feature_name"].to_numpy()
    return adata


@pytest.fixture
def small_prior() -> pd.DataFrame:
    # TF GENE1 regulates GENE10 and GENE11; GENE2 regulates GENE20 (weight -1); unknown genes dropped
    return pd.DataFrame(
        {
            "source": ["GENE1", "GENE1", "GENE2", "TP53", "GENE5"],
            "target": ["GENE10", "GENE11", "GENE20", "GENE1", "GENE5"],
            "weight": [1.0, 1.0, -1.0, 1.0, 1.0],
        }
    )
