"""The gene graph out of core: backed AnnData and dask arrays give the in-memory graph (issue 15, item 3)."""

from __future__ import annotations

import copy
import pathlib
import sys

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import genohoption as gh
from genohoption.pp import _coexpression
from genohoption.pp._coexpression import coexpression_topk_exact, coexpression_topk_streamed


def _edges(rows, cols) -> set[tuple[int, int]]:
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


@pytest.fixture
def small_chunks(monkeypatch):
    """Many chunks of cells (37 rows at 90 genes), several bands and tiles: every seam is exercised."""
    monkeypatch.setattr(_coexpression, "_CHUNK_BYTES", 4 * 90 * 37)
    monkeypatch.setattr(_coexpression, "_BAND_BYTES", 8 * 90 * 25)  # bands of 25, 30, ... rows
    monkeypatch.setattr(_coexpression, "_SHIFT_CELLS", 50)


def _write(adata: ad.AnnData, path: pathlib.Path, fmt: str) -> ad.AnnData:
    a = adata.copy()
    a.X = {"dense": lambda X: X.toarray(), "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt](a.X)
    a.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def _same_graph(a: ad.AnnData, b: ad.AnnData, key: str = "gene_graph") -> None:
    assert (a.varp[key] != b.varp[key]).nnz == 0
    assert (a.varp[key + "_source"] != b.varp[key + "_source"]).nnz == 0
    for field in ("n_edges", "n_coexpression_edges", "n_prior_edges", "n_both_edges"):
        assert a.uns[key][field] == b.uns[key][field]


# --- the streamed kernel ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize(("k", "min_corr"), [(5, 0.4), (40, 0.0)])
def test_streamed_equals_exact_and_naive(X_corr, fmt, k, min_corr, small_chunks, helpers):
    X = X_corr if fmt == "dense" else sparse.csr_matrix(X_corr)
    rows, cols, absr = coexpression_topk_streamed(X, k, min_corr, block_size=16)
    naive = helpers.naive_edges(X_corr, k, min_corr)
    assert _edges(rows, cols) == naive
    er, ec, eabs = coexpression_topk_exact(X, k, min_corr, block_size=16)
    assert _edges(er, ec) == naive
    # same |r| as the in-memory kernel, to float32 round-off
    a = dict(zip(zip(rows.tolist(), cols.tolist(), strict=True), absr.tolist(), strict=True))
    b = dict(zip(zip(er.tolist(), ec.tolist(), strict=True), eabs.tolist(), strict=True))
    np.testing.assert_allclose([a[e] for e in naive], [b[e] for e in naive], atol=2e-6)


def test_streamed_cell_mask_and_constant_genes(X_corr, small_chunks, helpers):
    mask = np.arange(X_corr.shape[0]) % 3 != 0
    rows, cols, _ = coexpression_topk_streamed(X_corr, 8, 0.3, cell_mask=mask, block_size=32)
    assert _edges(rows, cols) == helpers.naive_edges(X_corr[mask], 8, 0.3)
    assert not ({3, 7} & set(rows.tolist()) | {3, 7} & set(cols.tolist()))  # all-zero and constant genes


def test_streamed_shift_keeps_highly_expressed_genes_exact(X_corr, small_chunks, helpers):
    # a large common offset makes raw moments cancel catastrophically; the per-gene shift avoids it
    X = X_corr.astype(np.float64) + 3000.0
    rows, cols, _ = coexpression_topk_streamed(X, 6, 0.3)
    assert _edges(rows, cols) == helpers.naive_edges(X, 6, 0.3)


# --- build_gene_graph on backed AnnData -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_backed_graph_equals_in_memory(adata_sym, small_prior, tmp_path, fmt, small_chunks):
    cells = ("split", "ref")
    mem = adata_sym.copy()
    gh.pp.build_gene_graph(mem, prior=small_prior, n_neighbors=6, min_corr=0.3, cells=cells)
    backed = _write(adata_sym, tmp_path / f"{fmt}.h5ad", fmt)
    try:
        gh.pp.build_gene_graph(backed, prior=small_prior, n_neighbors=6, min_corr=0.3, cells=cells)
        assert backed.isbacked  # nothing was loaded into memory
        _same_graph(backed, mem)
        assert backed.uns["gene_graph"]["engine"] == "streamed"
        assert mem.uns["gene_graph"]["engine"] == "in_memory"
        assert backed.uns["gene_graph"]["params"] == mem.uns["gene_graph"]["params"]
    finally:
        backed.file.close()


def test_backed_integer_counts(adata_sym, tmp_path, small_chunks):
    counts = adata_sym.copy()
    counts.X = sparse.csr_matrix(np.round(adata_sym.X.toarray() * 4).astype(np.int32))
    mem = counts.copy()
    gh.pp.build_gene_graph(mem, prior=None, n_neighbors=5)
    counts.write_h5ad(tmp_path / "int.h5ad")
    backed = ad.read_h5ad(tmp_path / "int.h5ad", backed="r")
    gh.pp.build_gene_graph(backed, prior=None, n_neighbors=5)
    _same_graph(backed, mem)
    backed.file.close()


def test_backed_graph_written_back_with_r_plus(adata_sym, tmp_path):
    adata_sym.write_h5ad(tmp_path / "rw.h5ad")
    backed = ad.read_h5ad(tmp_path / "rw.h5ad", backed="r+")
    gh.pp.build_gene_graph(backed, prior=None, n_neighbors=5)
    backed.write()
    backed.file.close()
    again = ad.read_h5ad(tmp_path / "rw.h5ad")
    assert again.varp["gene_graph"].nnz == again.uns["gene_graph"]["n_edges"] > 0


def test_backed_refusals_leave_adata_unchanged(adata_sym, tmp_path):
    bad = adata_sym.copy()
    X = bad.X.toarray()
    X[5, 2] = np.nan
    bad.X = sparse.csr_matrix(X)
    cases = [
        (_write(bad, tmp_path / "nan.h5ad", "csr"), {}, ValueError, "NaN or infinite"),
        (_write(adata_sym, tmp_path / "a.h5ad", "csr"), {"method": "approx"}, ValueError, 'method="exact"'),
        (_write(adata_sym, tmp_path / "c.h5ad", "csr"), {"copy": True}, ValueError, "copy=False"),
        (_write(adata_sym, tmp_path / "csc.h5ad", "csc"), {}, ValueError, "CSR"),
    ]
    for backed, kwargs, exc, match in cases:
        try:
            with pytest.raises(exc, match=match):
                gh.pp.build_gene_graph(backed, prior=None, **kwargs)
            assert "gene_graph" not in backed.uns and "gene_graph" not in backed.varp
        finally:
            backed.file.close()


def test_backed_with_in_memory_layer_uses_in_memory_kernel(adata_sym, tmp_path):
    a = adata_sym.copy()
    a.layers["log"] = a.X.copy()
    a.write_h5ad(tmp_path / "layer.h5ad")
    backed = ad.read_h5ad(tmp_path / "layer.h5ad", backed="r")
    gh.pp.build_gene_graph(backed, prior=None, layer="log", n_neighbors=5)
    assert backed.uns["gene_graph"]["engine"] == "in_memory"
    backed.file.close()


# --- dask -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", ["dense", "csr", "gene-chunked"])
def test_dask_graph_equals_in_memory(adata_sym, small_prior, blocks, small_chunks):
    da = pytest.importorskip("dask.array")
    mem = adata_sym.copy()
    mask = np.arange(mem.n_obs) % 5 != 0
    gh.pp.build_gene_graph(mem, prior=small_prior, n_neighbors=6, min_corr=0.3, cells=mask)
    dense = adata_sym.X.toarray()
    if blocks == "csr":
        X = da.from_array(dense, chunks=(45, -1)).map_blocks(sparse.csr_matrix, dtype=np.float32)
    else:
        X = da.from_array(dense, chunks=(45, -1) if blocks == "dense" else (60, 25))
    lazy = ad.AnnData(X=X, obs=adata_sym.obs.copy(), var=adata_sym.var.copy())
    gh.pp.build_gene_graph(lazy, prior=small_prior, n_neighbors=6, min_corr=0.3, cells=mask)
    _same_graph(lazy, mem)
    assert lazy.uns["gene_graph"]["engine"] == "dask"


def test_dask_lazy_h5ad(adata_sym, tmp_path):
    pytest.importorskip("dask.array")
    import h5py
    from anndata.experimental import read_elem_lazy

    adata_sym.write_h5ad(tmp_path / "lazy.h5ad")
    mem = adata_sym.copy()
    gh.pp.build_gene_graph(mem, prior=None, n_neighbors=5)
    with h5py.File(tmp_path / "lazy.h5ad") as f:
        X = read_elem_lazy(f["X"], chunks=(64, -1))  # CSR blocks read from disk by each task
        lazy = ad.AnnData(X=X, obs=adata_sym.obs.copy(), var=adata_sym.var.copy())
        gh.pp.build_gene_graph(lazy, prior=None, n_neighbors=5)
    _same_graph(lazy, mem)


def test_dask_bad_values_raise(adata_sym):
    da = pytest.importorskip("dask.array")
    X = adata_sym.X.toarray()
    X[17, 4] = -1.0
    lazy = ad.AnnData(X=da.from_array(X, chunks=(50, -1)), obs=adata_sym.obs.copy(), var=adata_sym.var.copy())
    before = copy.deepcopy(lazy.uns)
    with pytest.raises(ValueError, match="negative"):
        gh.pp.build_gene_graph(lazy, prior=None)
    with pytest.raises(ValueError, match='method="exact"'):
        gh.pp.build_gene_graph(lazy, prior=None, method="approx")
    assert lazy.uns == before and "gene_graph" not in lazy.varp


def test_dask_missing_names_the_install(adata_sym, monkeypatch):
    da = pytest.importorskip("dask.array")
    X = da.from_array(adata_sym.X.toarray(), chunks=(50, -1))
    lazy = ad.AnnData(X=X, obs=adata_sym.obs.copy(), var=adata_sym.var.copy())
    monkeypatch.setitem(sys.modules, "dask", None)  # import dask now fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'dask\[array\]'"):
        gh.pp.build_gene_graph(lazy, prior=None)


def test_prior_only_needs_no_matrix_pass(adata_sym, small_prior, tmp_path):
    backed = _write(adata_sym, tmp_path / "p.h5ad", "csr")
    gh.pp.build_gene_graph(backed, prior=small_prior, edges="prior")
    assert backed.uns["gene_graph"]["engine"] == "none"
    assert backed.uns["gene_graph"]["n_coexpression_edges"] == 0
    backed.file.close()
