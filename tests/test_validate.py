"""The shared input checks (genohoption._validate): clear typed errors, nothing written, no crash."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from genohoption._validate import (
    as_anndata,
    check_csr_structure,
    check_graph,
    check_key,
    check_labels,
    check_values,
    get_matrix,
)


def _adata(n_obs=6, n_vars=4):
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.random((n_obs, n_vars)).astype(np.float32))
    a.var_names = [f"g{i}" for i in range(n_vars)]
    return a


def test_as_anndata_accepts_mudata_rna_and_refuses_others():
    mudata = pytest.importorskip("mudata")
    mudata.set_options(pull_on_update=False)  # the behaviour mudata 0.4 makes the default
    a = _adata()
    assert as_anndata(a) is a
    values = a.X.copy()
    protein = ad.AnnData(np.full((a.n_obs, 2), 7.0, dtype=np.float32))  # listed first: "rna" is chosen by name
    protein.var_names = ["p0", "p1"]
    mdata = mudata.MuData({"prot": protein, "rna": a})
    got = as_anndata(mdata)
    assert got is mdata["rna"] and got is a  # the modality itself, not a copy and not the first modality
    assert got.shape == (6, 4) and list(got.var_names) == ["g0", "g1", "g2", "g3"]
    np.testing.assert_array_equal(got.X, values)
    got.obs["written"] = np.arange(got.n_obs)  # what a function writes lands in the MuData's modality
    np.testing.assert_array_equal(mdata["rna"].obs["written"], np.arange(6))
    with pytest.raises(KeyError, match="'rna' modality"):
        as_anndata(mudata.MuData({"prot": a}))
    for bad in (a.X, None, {"X": a.X}):
        with pytest.raises(TypeError, match="must be an AnnData"):
            as_anndata(bad)


def test_get_matrix_and_values():
    a = _adata()
    a.layers["f16"] = a.X.astype(np.float16)
    a.layers["text"] = np.full(a.shape, "x", dtype=object)
    with pytest.raises(KeyError, match="available"):
        get_matrix(a, "nope")
    with pytest.raises(TypeError, match="float16"):
        get_matrix(a, "f16")
    with pytest.raises(TypeError, match="real numbers"):
        get_matrix(a, "text")
    X = a.X.copy()
    X[2, 1] = -0.5
    with pytest.raises(ValueError, match="negative"):
        check_values(X)
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_values(sparse.csr_matrix(X))


def test_check_labels_and_key():
    a = _adata()
    a.obs["ct"] = ["x"] * 6
    with pytest.raises(ValueError, match="at least 2"):
        check_labels(a, "ct")
    check_labels(a, "ct", min_classes=1)
    with pytest.raises(KeyError, match="available"):
        check_labels(a, "nope")
    for bad in ("", "a/b", None, 3):
        with pytest.raises(ValueError, match="key_added"):
            check_key(bad)


@pytest.mark.parametrize(
    ("indptr", "indices", "match"),
    [
        ([0, 2, 1, 3, 3], [0, 1, 2], "decrease"),
        ([0, 1, 2, 3], [0, 1, 2], "row pointers"),
        ([0, 1, 2, 3, 4], [0, 1, 2, 9], "out of"),
        ([0, 1, 2, 3, 4], [0, 1, -1, 2], "out of"),
        ([1, 1, 2, 3, 4], [0, 1, 2, 3], "row pointers"),
    ],
)
def test_check_csr_structure(indptr, indices, match):
    with pytest.raises(ValueError, match=match):
        check_csr_structure(np.array(indptr), np.array(indices), 4, 4, "graph")


@pytest.mark.parametrize(
    ("graph", "match"),
    [
        (sparse.identity(4, format="csr", dtype=np.float32), "self-loops only"),
        (sparse.csr_matrix((4, 4), dtype=np.float32), "no edge"),
        (sparse.csr_matrix(np.array([[0, -1, 0, 0]] * 4, dtype=np.float32)), "negative"),
        (sparse.csr_matrix(np.array([[0, np.nan, 0, 0]] * 4, dtype=np.float32)), "NaN"),
    ],
)
def test_check_graph_refuses_degenerate_graphs(graph, match):
    a = _adata()
    a.varp["g"] = graph
    with pytest.raises(ValueError, match=match):
        check_graph(a, "g")


def test_corrupt_csr_graph_in_varp_is_refused_without_crash():
    """A CSR matrix whose row pointers decrease, as an h5ad can carry: checked before SciPy's C code."""
    code = """
import anndata as ad, numpy as np
from scipy import sparse
from genohoption._validate import check_graph
a = ad.AnnData(np.ones((3, 4), dtype=np.float32))
g = sparse.csr_matrix(np.eye(4, k=1, dtype=np.float32))
g.indptr = np.array([0, 1, 3, 2, 3], dtype=g.indptr.dtype)  # decreasing, bypassing SciPy's checks
a.varp["g"] = sparse.csr_matrix((4, 4), dtype=np.float32)
a.varp._data["g"] = g
try:
    check_graph(a, "g")
except ValueError as e:
    print("refused:", "decrease" in str(e))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused: True"
