from __future__ import annotations

import copy
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import genohoption as gh
from genohoption.pp._coexpression import coexpression_topk_approx, coexpression_topk_exact


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert list(a.varp.keys()) == list(b.varp.keys())
    assert list(a.uns.keys()) == list(b.uns.keys())
    assert list(a.layers.keys()) == list(b.layers.keys())
    xa, xb = a.X, b.X
    xa = xa.toarray() if sparse.issparse(xa) else xa
    xb = xb.toarray() if sparse.issparse(xb) else xb
    np.testing.assert_array_equal(xa, xb)


# --- co-expression: exactness -------------------------------------------------------------------


@pytest.mark.parametrize(("k", "min_corr"), [(5, 0.4), (10, 0.2), (40, 0.0)])
def test_exact_matches_naive_corrcoef(X_corr, k, min_corr, helpers):
    rows, cols, absr = coexpression_topk_exact(X_corr, k, min_corr)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == helpers.naive_edges(X_corr, k, min_corr)
    with np.errstate(all="ignore"):
        R = np.corrcoef(X_corr.T.astype(np.float64))
    np.testing.assert_allclose(absr, np.abs(R[rows, cols]), atol=2e-5)
    assert not np.isnan(absr).any()


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "coo"])
@pytest.mark.parametrize("block_size", [1, 7, 32, 64, None])
def test_exact_same_for_formats_and_blocks(X_corr, fmt, block_size, helpers):
    ref = helpers.naive_edges(X_corr, 8, 0.3)
    X = X_corr if fmt == "dense" else sparse.coo_matrix(X_corr).asformat(fmt)
    X_before = X.copy()
    rows, cols, _ = coexpression_topk_exact(X, 8, 0.3, block_size=block_size)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == ref
    # input untouched
    a = X_before.toarray() if sparse.issparse(X_before) else X_before
    b = X.toarray() if sparse.issparse(X) else X
    np.testing.assert_array_equal(a, b)


def test_constant_and_zero_genes_get_no_edges(adata_sym):
    gh.pp.build_gene_graph(adata_sym, prior=None, n_neighbors=10, min_corr=0.0)
    g = adata_sym.varp["gene_graph"]
    for const in (3, 7):
        assert g[const].nnz == 0
        assert g[:, const].nnz == 0
    assert np.isfinite(g.data).all()


def test_approx_equals_exact_when_few_cells(X_corr):
    a = coexpression_topk_exact(X_corr, 6, 0.3)
    b = coexpression_topk_approx(X_corr, 6, 0.3)
    assert set(zip(a[0].tolist(), a[1].tolist(), strict=True)) == set(
        zip(b[0].tolist(), b[1].tolist(), strict=True)
    )


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_approx_recall_with_subsample(fmt, helpers):
    X = helpers.correlated_counts(n_cells=600, n_genes=60, seed=3)
    X = X if fmt == "dense" else sparse.csr_matrix(X)
    exact = coexpression_topk_exact(X, 8, 0.3)
    approx = coexpression_topk_approx(X, 8, 0.3, n_sketch_cells=200)
    e = set(zip(exact[0].tolist(), exact[1].tolist(), strict=True))
    a = set(zip(approx[0].tolist(), approx[1].tolist(), strict=True))
    assert a <= e | a and len(a & e) / len(e) >= 0.9
    # re-ranked values are exact correlations
    Xd = X.toarray() if sparse.issparse(X) else X
    with np.errstate(all="ignore"):
        R = np.abs(np.nan_to_num(np.corrcoef(Xd.T.astype(np.float64))))
    np.testing.assert_allclose(approx[2], R[approx[0], approx[1]], atol=1e-5)


# --- build_gene_graph: stored fields ------------------------------------------------------------


def test_build_fields_and_types(adata_sym, small_prior, helpers):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 5 of 90 genes covered: above the 5% warning threshold
        out = gh.pp.build_gene_graph(adata_sym, prior=small_prior, n_neighbors=5, min_corr=0.3)
    assert out is None
    g = adata_sym.varp["gene_graph"]
    src = adata_sym.varp["gene_graph_source"]
    assert sparse.isspmatrix_csr(g) and g.dtype == np.float32 and g.shape == (90, 90)
    assert src.dtype == np.int8 and (src.indptr == g.indptr).all() and (src.indices == g.indices).all()
    assert set(np.unique(src.data)) <= {1, 2, 3}
    np.testing.assert_array_equal(g.data, 1.0)
    assert g.diagonal().sum() == 0
    uns = adata_sym.uns["gene_graph"]
    for field in (
        "params",
        "n_coexpression_edges",
        "n_prior_edges",
        "n_edges",
        "n_genes_in_prior",
        "n_genes_matched_by_alias",
        "prior_coverage",
        "prior_edges_kept",
        "prior_edges_dropped",
        "mean_degree",
        "n_both_edges",
        "source_codes",
    ):
        assert field in uns, field
    assert uns["n_edges"] == g.nnz
    assert uns["n_coexpression_edges"] + uns["n_prior_edges"] - uns["n_both_edges"] == g.nnz
    assert uns["prior_edges_kept"] == 3  # TP53 unknown, GENE5 -> GENE5 self-regulation dropped
    assert uns["prior_edges_dropped"] == 2
    assert uns["n_prior_edges"] == 3
    assert uns["n_genes_in_prior"] == 6  # GENE1, 2, 5, 10, 11, 20
    assert uns["prior_coverage"] == pytest.approx(5 / 90)
    assert uns["mean_degree"] == pytest.approx(g.nnz / 90)
    assert uns["params"]["n_neighbors"] == 5 and uns["params"]["min_corr"] == 0.3
    assert uns["params"]["prior"].startswith("DataFrame")
    # co-expression part equals the naive reference
    co = src.tocoo()
    is_co = co.data != 2
    co_edges = set(zip(co.row[is_co].tolist(), co.col[is_co].tolist(), strict=True))
    assert co_edges == helpers.naive_edges(adata_sym.X.toarray(), 5, 0.3)


def test_low_prior_coverage_warns(adata_sym):
    with pytest.warns(UserWarning, match=r"only 2\.2% of the 90 genes"):
        gh.pp.build_gene_graph(adata_sym, prior=pd.DataFrame({"source": ["GENE1"], "target": ["GENE2"]}))
    assert adata_sym.uns["gene_graph"]["n_prior_edges"] == 1


def test_prior_orientation_target_attends_to_tf(adata_sym, small_prior, helpers):
    gh.pp.build_gene_graph(adata_sym, prior=small_prior, edges="prior")
    g = adata_sym.varp["gene_graph"]
    idx = {name: i for i, name in enumerate(adata_sym.var_names)}
    expected = {(idx["GENE10"], idx["GENE1"]), (idx["GENE11"], idx["GENE1"]), (idx["GENE20"], idx["GENE2"])}
    assert helpers.graph_edges(adata_sym) == expected
    assert set(np.unique(adata_sym.varp["gene_graph_source"].data)) == {2}
    assert g[idx["GENE1"], idx["GENE10"]] == 0


def test_symbol_matching_via_gene_symbols_and_case(adata_corr, small_prior, helpers):
    lower = small_prior.assign(source=small_prior["source"].str.lower())
    gh.pp.build_gene_graph(adata_corr, prior=lower, edges="prior", gene_symbols="feature_name")
    assert adata_corr.uns["gene_graph"]["n_prior_edges"] == 3
    assert (90 + 10, 1) not in helpers.graph_edges(adata_corr)
    assert (10, 1) in helpers.graph_edges(adata_corr)


def test_previous_symbols_match_the_prior(caplog, helpers):
    """A dataset measuring MARCH8 (HGNC's previous symbol) gets MARCHF8's edges of the default prior, as one
    measuring MARCHF8 does; a network written with UniProt accessions matches symbols."""
    import logging

    net = gh.pp.read_prior("default")
    regulators = sorted(net.loc[net["target"] == "MARCHF8", "source"])
    assert regulators == ["ATF3", "MAX", "NFE2", "SIN3A", "USF1", "USF2"]
    rng = np.random.default_rng(0)

    def graph(symbols):
        adata = ad.AnnData(rng.random((5, len(symbols)), dtype=np.float32), var=pd.DataFrame(index=symbols))
        with caplog.at_level(logging.INFO, logger="genohoption.pp._gene_graph"):
            gh.pp.build_gene_graph(adata, prior="default", edges="prior")
        return adata

    old = graph(["MARCH8", *regulators, "SEPT7"])
    new = graph(["MARCHF8", *regulators, "SEPTIN7"])
    assert (old.varp["gene_graph"] != new.varp["gene_graph"]).nnz == 0
    assert set(old.varp["gene_graph"][0].indices) >= set(range(1, 7))  # MARCH8 attends to its 6 regulators
    assert old.uns["gene_graph"]["n_genes_matched_by_alias"] == 2  # MARCH8 and SEPT7
    assert new.uns["gene_graph"]["n_genes_matched_by_alias"] == 0
    assert "2 genes of the data matched the prior network through another HGNC symbol" in caplog.text
    assert "MARCH8 → MARCHF8" in caplog.text
    by_accession = pd.DataFrame({"source": ["P04637", "P04637"], "target": ["CDKN1A", "march8"]})
    adata = ad.AnnData(np.ones((2, 3), np.float32), var=pd.DataFrame(index=["TP53", "CDKN1A", "MARCHF8"]))
    gh.pp.build_gene_graph(adata, prior=by_accession, edges="prior")
    assert helpers.graph_edges(adata) == {(1, 0), (2, 0)}  # TP53 regulates CDKN1A and MARCHF8


def test_duplicated_symbols_all_receive_edges(adata_corr, small_prior, helpers):
    adata_corr.var.loc[adata_corr.var_names[30], "feature_name"] = "GENE10"  # two genes named GENE10
    gh.pp.build_gene_graph(adata_corr, prior=small_prior, edges="prior", gene_symbols="feature_name")
    edges = helpers.graph_edges(adata_corr)
    assert (10, 1) in edges and (30, 1) in edges
    assert adata_corr.uns["gene_graph"]["prior_edges_kept"] == 3
    assert adata_corr.uns["gene_graph"]["n_prior_edges"] == 4


def test_ensembl_symbol_mismatch_error(adata_corr, small_prior):
    before = copy.deepcopy(adata_corr)
    with pytest.raises(ValueError, match=r"Ensembl IDs.*gene_symbols"):
        gh.pp.build_gene_graph(adata_corr, prior=small_prior)
    _assert_same(adata_corr, before)
    # explicit opt-in builds co-expression only
    with pytest.warns(UserWarning, match="only 0.0%"):
        gh.pp.build_gene_graph(adata_corr, prior=small_prior, allow_empty_prior=True)
    assert adata_corr.uns["gene_graph"]["n_prior_edges"] == 0


def test_ablation_switches(adata_sym, small_prior, helpers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        both = gh.pp.build_gene_graph(adata_sym, prior=small_prior, n_neighbors=5, min_corr=0.3, copy=True)
    co = gh.pp.build_gene_graph(
        adata_sym, prior=small_prior, n_neighbors=5, min_corr=0.3, edges="coexpression", copy=True
    )
    pr = gh.pp.build_gene_graph(adata_sym, prior=small_prior, edges="prior", copy=True)
    e_both, e_co, e_pr = helpers.graph_edges(both), helpers.graph_edges(co), helpers.graph_edges(pr)
    assert e_both == e_co | e_pr
    assert co.uns["gene_graph"]["n_prior_edges"] == 0 and co.uns["gene_graph"]["params"]["prior"] == "none"
    assert pr.uns["gene_graph"]["n_coexpression_edges"] == 0
    assert set(np.unique(co.varp["gene_graph_source"].data)) == {1}


def test_prior_none_is_coexpression_only(adata_sym, helpers):
    gh.pp.build_gene_graph(adata_sym, prior=None, n_neighbors=5, min_corr=0.3)
    assert adata_sym.uns["gene_graph"]["n_prior_edges"] == 0
    assert helpers.graph_edges(adata_sym) == helpers.naive_edges(adata_sym.X.toarray(), 5, 0.3)


def test_prior_from_file(adata_sym, small_prior, tmp_path):
    path = tmp_path / "net.tsv"
    small_prior.to_csv(path, sep="\t", index=False)
    gh.pp.build_gene_graph(adata_sym, prior=path, edges="prior")
    assert adata_sym.uns["gene_graph"]["n_prior_edges"] == 3
    assert adata_sym.uns["gene_graph"]["params"]["prior"] == str(path)


def test_default_prior_on_real_pbmc():
    adata = gh.datasets.pbmc68k_reduced()
    gh.pp.build_gene_graph(adata, cells=adata.obs["lane"].to_numpy() != "8")
    uns = adata.uns["gene_graph"]
    assert uns["n_prior_edges"] > 100 and uns["n_coexpression_edges"] > 100
    assert (
        uns["params"]["prior"] == "default" and uns["params"]["n_cells"] == (adata.obs["lane"] != "8").sum()
    )
    assert 0.05 < uns["prior_coverage"] < 1


@pytest.mark.parametrize("form", ["mask", "tuple", "tuple_list"])
def test_cells_selection_equals_subset(adata_sym, form, helpers):
    ref_mask = (adata_sym.obs["split"] == "ref").to_numpy()
    cells = {"mask": ref_mask, "tuple": ("split", "ref"), "tuple_list": ("split", ["ref"])}[form]
    gh.pp.build_gene_graph(adata_sym, prior=None, n_neighbors=6, min_corr=0.25, cells=cells)
    sub = adata_sym[ref_mask].copy()
    gh.pp.build_gene_graph(sub, prior=None, n_neighbors=6, min_corr=0.25)
    assert helpers.graph_edges(adata_sym) == helpers.graph_edges(sub)
    assert helpers.graph_edges(adata_sym) != helpers.naive_edges(adata_sym.X.toarray(), 6, 0.25)
    assert adata_sym.uns["gene_graph"]["params"]["n_cells"] == ref_mask.sum()


def test_copy_semantics(adata_sym):
    before = copy.deepcopy(adata_sym)
    out = gh.pp.build_gene_graph(
        adata_sym, prior=None, n_neighbors=5, min_corr=0.3, copy=True, key_added="gg"
    )
    assert isinstance(out, ad.AnnData) and out is not adata_sym
    assert "gg" in out.varp and "gg_source" in out.varp and "gg" in out.uns
    _assert_same(adata_sym, before)


def test_layer_and_integer_upcast(adata_sym, helpers):
    counts = np.rint(np.expm1(adata_sym.X.toarray()) * 10).astype(np.int64)
    adata_sym.layers["counts"] = counts
    gh.pp.build_gene_graph(adata_sym, layer="counts", prior=None, n_neighbors=5, min_corr=0.3)
    assert helpers.graph_edges(adata_sym) == helpers.naive_edges(counts.astype(np.float64), 5, 0.3)
    assert adata_sym.layers["counts"].dtype == np.int64
    assert adata_sym.uns["gene_graph"]["params"]["layer"] == "counts"


def test_writes_h5ad(adata_sym, small_prior, tmp_path, helpers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gh.pp.build_gene_graph(adata_sym, prior=small_prior, n_neighbors=5, min_corr=0.3)
    adata_sym.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert helpers.graph_edges(back) == helpers.graph_edges(adata_sym)
    assert back.uns["gene_graph"]["n_edges"] == adata_sym.uns["gene_graph"]["n_edges"]


# --- bad input: typed errors, adata unchanged --------------------------------------------------


def _bad_cases(adata):
    nan = adata.copy()
    nan.X = nan.X.toarray()
    nan.X[0, 0] = np.nan
    inf = adata.copy()
    inf.X = inf.X.tocsr()
    inf.X.data[0] = np.inf
    neg = adata.copy()
    neg.X = neg.X.toarray() - 1.0
    f16 = adata.copy()
    f16.X = f16.X.toarray().astype(np.float16)
    dup = adata.copy()
    dup.var_names = ["GENE0"] * 2 + list(dup.var_names[2:])
    few = adata[:2].copy()
    zero = adata.copy()
    zero.X = sparse.csr_matrix(zero.shape, dtype=np.float32)
    return [
        (
            adata,
            {"prior": pd.DataFrame({"source": ["XX1"], "target": ["XX2"]})},
            ValueError,
            "allow_empty_prior",
        ),
        (zero, {"prior": None}, ValueError, "graph is empty"),
        (few, {"prior": None}, ValueError, "at least 3 cells"),
        (dup, {"prior": None}, ValueError, r"var_names_make_unique\(\)"),
        (nan, {"prior": None}, ValueError, "NaN or infinite"),
        (inf, {"prior": None}, ValueError, "NaN or infinite"),
        (neg, {"prior": None}, ValueError, "negative"),
        (adata, {"layer": "nope", "prior": None}, KeyError, "is not in adata.layers"),
        (f16, {"prior": None}, TypeError, "float16"),
        (
            adata,
            {"prior": pd.DataFrame({"tf_name": ["GENE1"], "gene": ["GENE2"]})},
            ValueError,
            "needs columns",
        ),
        (adata, {"n_neighbors": 0}, ValueError, "n_neighbors"),
        (adata, {"n_neighbors": 2.5}, ValueError, "n_neighbors"),
        (adata, {"min_corr": 1.0}, ValueError, "min_corr"),
        (adata, {"min_corr": -0.1}, ValueError, "min_corr"),
        (adata, {"method": "fast"}, ValueError, "method"),
        (adata, {"edges": "grn"}, ValueError, "edges"),
        (adata, {"edges": "prior", "prior": None}, ValueError, "needs a prior"),
        (adata, {"cells": np.ones(5, dtype=bool)}, ValueError, "boolean mask"),
        (adata, {"cells": ("nokey", "ref")}, KeyError, "nokey"),
        (adata, {"gene_symbols": "nocol"}, KeyError, "nocol"),
        (adata, {"cells": ("split", "nothing")}, ValueError, "at least 3 cells"),
    ]


def test_bad_inputs_raise_and_leave_adata_unchanged(adata_sym):
    for obj, kwargs, exc, match in _bad_cases(adata_sym):
        before = copy.deepcopy(obj)
        with pytest.raises(exc, match=match):
            gh.pp.build_gene_graph(obj, **kwargs)
        _assert_same(obj, before)
        assert "gene_graph" not in obj.varp and "gene_graph" not in obj.uns


def test_bad_prior_file_columns(adata_sym, tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"a": ["GENE1"], "b": ["GENE2"]}).to_csv(path, index=False)
    before = copy.deepcopy(adata_sym)
    with pytest.raises(ValueError, match=r"bad\.csv.*needs columns"):
        gh.pp.build_gene_graph(adata_sym, prior=path)
    _assert_same(adata_sym, before)
    with pytest.raises(FileNotFoundError):
        gh.pp.build_gene_graph(adata_sym, prior=tmp_path / "missing.csv")


def test_not_anndata(adata_sym):
    with pytest.raises(TypeError, match="AnnData"):
        gh.pp.build_gene_graph(adata_sym.X)
    # backed AnnData are accepted: tests/pp/test_out_of_core.py


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_exact_cell_chunks_identical(X_corr, fmt, monkeypatch, helpers):
    from genohoption.pp import _coexpression

    monkeypatch.setattr(_coexpression, "_CHUNK_BYTES", 4 * 16 * 37)  # 37 cells per chunk at block 16
    X = X_corr if fmt == "dense" else sparse.csr_matrix(X_corr)
    rows, cols, _ = coexpression_topk_exact(X, 8, 0.3, block_size=16)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == helpers.naive_edges(X_corr, 8, 0.3)
