from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.collections import LineCollection
from scipy import sparse

import genohoption as gh


@pytest.fixture
def adata_graph() -> ad.AnnData:
    """Hand-made 8-gene graph with known sources."""
    names = [f"G{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.random((30, 8)).astype(np.float32),
        var=pd.DataFrame(index=names),
        obsm={"X_umap": rng.normal(size=(30, 2))},
    )
    adata.obs["group"] = pd.Categorical(rng.choice(["a", "b"], 30))
    # edges [row, col] with codes: 1 co-expression, 2 prior, 3 both
    entries = [(0, 1, 1), (1, 0, 1), (0, 2, 2), (3, 0, 3), (4, 5, 1), (2, 1, 2), (6, 7, 2)]
    r, c, v = zip(*entries, strict=True)
    src = sparse.csr_matrix((np.array(v, dtype=np.int8), (r, c)), shape=(8, 8))
    adata.varp["gene_graph_source"] = src
    adata.varp["gene_graph"] = sparse.csr_matrix(
        (np.ones(src.nnz, np.float32), src.indices, src.indptr), shape=(8, 8)
    )
    return adata


def _segments_by_label(ax):
    out = {}
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            out[coll.get_label()] = len(coll.get_segments())
    return out


def test_gene_graph_single_gene(adata_graph):
    ax = gh.pl.gene_graph(adata_graph, "G0", show=False)
    assert isinstance(ax, plt.Axes)
    # neighbourhood of G0: G1 (co-expr, both directions), G2 (prior), G3 (both); induced G2-G1 (prior)
    segs = _segments_by_label(ax)
    assert segs == {"co-expression": 1, "prior (TF → target)": 2, "both": 1}
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["G0", "G1", "G2", "G3"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["co-expression (1)", "prior (TF → target) (2)", "both (1)"]
    plt.close("all")


def test_gene_graph_several_genes_and_ax(adata_graph):
    fig, axs = plt.subplots(1, 2)
    sc.pl.umap(adata_graph, color="group", ax=axs[0], show=False)
    ax = gh.pl.gene_graph(adata_graph, ["G0", "G4"], ax=axs[1], show=False)
    assert ax is axs[1]
    assert sorted(t.get_text() for t in ax.texts) == ["G0", "G1", "G2", "G3", "G4", "G5"]
    assert sum(_segments_by_label(ax).values()) == 5
    assert len(fig.axes) >= 2
    plt.close("all")


def test_gene_graph_max_neighbors_and_errors(adata_graph):
    ax = gh.pl.gene_graph(adata_graph, "G0", max_neighbors=1, show=False)
    # the strongest neighbour (shared edge, G3) is kept
    assert sorted(t.get_text() for t in ax.texts) == ["G0", "G3"]
    with pytest.raises(KeyError, match=r"not in `adata\.var_names`"):
        gh.pl.gene_graph(adata_graph, "NOPE", show=False)
    with pytest.raises(KeyError, match="build_gene_graph"):
        gh.pl.gene_graph(adata_graph, "G0", key="other", show=False)
    plt.close("all")


def test_gene_graph_show_returns_none(adata_graph, monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    assert gh.pl.gene_graph(adata_graph, "G0", show=True) is None
    assert gh.pl.graph_summary(adata_graph, show=True) is None
    plt.close("all")


def test_graph_summary(adata_graph):
    axs = gh.pl.graph_summary(adata_graph, show=False)
    assert isinstance(axs, np.ndarray) and axs.shape == (2,)
    heights = [p.get_height() for p in axs[1].patches]
    assert heights == [3, 3, 1]  # co-expression only, prior only, both
    assert [t.get_text() for t in axs[1].get_xticklabels()] == [
        "co-expression",
        "prior (TF → target)",
        "both",
    ]
    hist_counts = sum(p.get_height() for p in axs[0].patches)
    assert hist_counts == 16  # out- and in-degree histograms over 8 genes each
    plt.close("all")


def test_graph_summary_into_given_axes_and_real_graph():
    adata = gh.datasets.pbmc68k_reduced()
    gh.pp.build_gene_graph(adata)
    _, axs = plt.subplots(1, 3)
    sc.pl.umap(adata, color="bulk_labels", ax=axs[0], show=False)
    out = gh.pl.graph_summary(adata, ax=axs[1:], show=False)
    assert out[0] is axs[1] and out[1] is axs[2]
    heights = [int(p.get_height()) for p in axs[2].patches]
    uns = adata.uns["gene_graph"]
    assert heights == [
        uns["n_coexpression_edges"] - uns["n_both_edges"],
        uns["n_prior_edges"] - uns["n_both_edges"],
        uns["n_both_edges"],
    ]
    with pytest.raises(ValueError, match="two Axes"):
        gh.pl.graph_summary(adata, ax=axs[0], show=False)
    gene = adata.var_names[np.argmax(np.diff(adata.varp["gene_graph"].indptr))]
    ax = gh.pl.gene_graph(adata, gene, show=False)
    assert sum(_segments_by_label(ax).values()) >= 20
    plt.close("all")
