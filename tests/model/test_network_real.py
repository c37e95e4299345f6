"""get_gene_network on real PBMC 3k: per-cell-type networks follow the cells' marker modules."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import scvi

import genohoption as gh

NK = ["NKG7", "GNLY", "GZMB", "GZMA", "PRF1", "CST7", "CCL5", "CTSW", "FGFBP2"]
MONO = ["LYZ", "S100A8", "S100A9", "CST3", "FCN1", "TYROBP", "FCER1G", "LGALS2", "MS4A6A"]


def test_pbmc3k_nk_and_monocyte_networks(shared_data):
    adata = ad.read_h5ad(shared_data / "annotation" / "pbmc3k_seurat_labels.h5ad")
    adata = adata[adata.obs["cell_type"].isin(["NK", "CD14+ Mono", "B"])].copy()
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 360, replace=False))].copy()
    hv = sc.pp.highly_variable_genes(adata, n_top_genes=150, flavor="seurat", inplace=False)
    adata = adata[:, hv["highly_variable"].to_numpy() | adata.var_names.isin(NK + MONO)].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.remove_unused_categories()
    gh.pp.build_gene_graph(adata, prior=None)  # co-expression: few TF -> target pairs among 166 genes
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = gh.GenoHoptionModel(adata, d_model=16, n_heads=2, n_layers=1, d_hid=32)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    edges = model.get_gene_network(adata, groupby="cell_type", batch_size=90)
    keys = adata.uns["gene_network"]["varp_keys"]
    graph = sp.csr_matrix(adata.varp["gene_graph"])
    for group in ("NK", "CD14+ Mono", "B"):
        att = sp.csr_matrix(adata.varp[keys[group]["attention"]])
        # an averaged attention lives on the graph's edges (and the diagonal), each row a part of a distribution
        allowed = (abs(graph) + sp.identity(adata.n_vars)).astype(bool)
        assert att.multiply(allowed).nnz == att.nnz
        assert 0 < att.data.min() and att.data.max() <= 1 + 1e-6
        field = adata.varp[keys[group]["diffusion"]]
        assert field.nnz >= att.nnz

    def module_cells(group, genes):
        """Mean number of cells of the group in which an edge among the module's genes occurs."""
        part = edges[(edges["group"] == group) & edges["source"].isin(genes) & edges["target"].isin(genes)
                     & (edges["source"] != edges["target"])]
        return part["n_cells"].sum() / (adata.obs["cell_type"] == group).sum()

    # the NK module's edges occur in NK cells, the monocyte module's in monocytes
    assert module_cells("NK", NK) > 3 * module_cells("CD14+ Mono", NK)
    assert module_cells("CD14+ Mono", MONO) > 3 * module_cells("NK", MONO)
    assert set(edges["group"]) == {"NK", "CD14+ Mono", "B"}
