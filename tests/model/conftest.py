"""Data shared by the model tests."""

import pytest

import genohoption as gh


@pytest.fixture(scope="module")
def five_type_pbmc():
    """pbmc68k_reduced's 5 largest cell types with a co-expression graph: (reference lanes 1-6, query lanes 7-8).

    Module-scoped: each test module gets its own copies.
    """
    adata = gh.datasets.pbmc68k_reduced()
    keep = adata.obs["bulk_labels"].value_counts().index[:5]
    adata = adata[adata.obs["bulk_labels"].isin(keep)].copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str).astype("category")
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.2)
    in_ref = adata.obs["lane"].isin(list("123456")).to_numpy()
    return adata[in_ref].copy(), adata[~in_ref].copy()
