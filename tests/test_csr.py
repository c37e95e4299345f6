"""The CSR structure checks (genohoption._csr) behind _validate and nn: one message per problem, NumPy or torch."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from scipy import sparse

from genohoption._csr import check_csr, column_index_problem, csr_problem, row_pointer_problem
from genohoption._validate import GRAPH_FIX, check_csr_structure, get_matrix
from genohoption.nn._graph import check_csr_tensors

# (indptr, indices) of a 4 x 4 matrix, and the exact problem reported
BAD = [
    ([0, 2, 1, 3, 3], [0, 1, 2], "row pointers decrease; they must be non-decreasing"),
    ([0, 1, 2, 3], [0, 1, 2], "row pointers of length 4, expected n_rows + 1 = 5"),
    ([1, 1, 2, 3, 4], [0, 1, 2, 3], "row pointers must run from 0 to len(indices) = 4, got 1..4"),
    ([0, 1, 2, 3, 9], [0, 1, 2, 3], "row pointers must run from 0 to len(indices) = 4, got 0..9"),
    ([0, 1, 2, 3, 4], [0, 1, 2, 9], "column index out of [0, 4): 0..9"),
    ([0, 1, 2, 3, 4], [0, 1, -1, 2], "column index out of [0, 4): -1..2"),
]


@pytest.mark.parametrize(("indptr", "indices", "problem"), BAD)
def test_same_problem_for_numpy_and_torch(indptr, indices, problem):
    for to in (np.asarray, torch.tensor, list):
        assert csr_problem(to(indptr), to(indices), 4, 4) == problem
    with pytest.raises(ValueError) as numpy_error:
        check_csr_structure(np.array(indptr), np.array(indices), 4, 4, "graph")
    assert str(numpy_error.value) == f"graph is not a valid CSR matrix ({problem}); {GRAPH_FIX}."
    with pytest.raises(ValueError) as torch_error:
        check_csr_tensors(torch.tensor(indptr), torch.tensor(indices), 4, 4, "the gene graph")
    assert str(torch_error.value) == f"the gene graph is not a valid CSR matrix ({problem})."


def test_valid_structures_and_dtypes():
    m = sparse.random(6, 5, density=0.4, format="csr", random_state=0)
    for dtype in (np.int32, np.int64, np.uint32):
        assert csr_problem(m.indptr.astype(dtype), m.indices.astype(dtype), 6, 5) is None
    for dtype in (torch.int32, torch.int64, torch.uint8):
        assert csr_problem(torch.tensor(m.indptr).to(dtype), torch.tensor(m.indices).to(dtype), 6, 5) is None
    assert csr_problem(np.zeros(1, np.int64), np.zeros(0, np.int64), 0, 0) is None  # empty matrix
    assert csr_problem(np.array([0, 0, 0]), np.zeros(0, np.int64), 2, 7) is None  # no entries
    check_csr(m.indptr, m.indices, 6, 5, "m")


@pytest.mark.parametrize(
    ("indptr", "indices", "problem"),
    [
        (np.array([0.0, 1.0]), np.array([0]), "indptr must be a 1-D integer array, got float64 of shape (2,)"),
        (np.array([0, 1]), np.array([[0]]), "indices must be a 1-D integer array, got int64 of shape (1, 1)"),
        (np.array([0, 1]), np.array([True]), "indices must be a 1-D integer array, got bool of shape (1,)"),
        (torch.tensor([0, 1]), torch.tensor([0.5]),
         "indices must be a 1-D integer array, got torch.float32 of shape (1,)"),
        (torch.tensor([0, 1], dtype=torch.bfloat16), torch.tensor([0]),
         "indptr must be a 1-D integer array, got torch.bfloat16 of shape (2,)"),
    ],
)
def test_non_integer_or_not_1d(indptr, indices, problem):
    assert csr_problem(indptr, indices, 1, 1) == problem


def test_parts_used_for_chunks():
    """The backed check reads the row pointers whole and the column indices in chunks."""
    assert row_pointer_problem(np.array([0, 2, 5]), 2, 5) is None
    assert row_pointer_problem(np.array([0, 2, 5]), 2, 4) == "row pointers must run from 0 to len(indices) = 4, got 0..5"
    assert column_index_problem(np.array([3, 0, 2]), 4) is None
    assert column_index_problem(np.array([3, 4]), 4) == "column index out of [0, 4): 3..4"


def test_backed_matrix_checked_on_disk(tmp_path):
    import anndata as ad

    a = ad.AnnData(sparse.csr_matrix(np.eye(4, 3, dtype=np.float32)))
    a.write_h5ad(tmp_path / "a.h5ad")
    with h5py.File(tmp_path / "a.h5ad", "r+") as f:
        f["X/indptr"][...] = np.array([0, 2, 1, 3, 3])  # decreasing
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    try:
        with pytest.raises(ValueError) as error:
            get_matrix(backed)
    finally:
        backed.file.close()
    assert str(error.value).startswith(
        "adata.X (on disk) is not a valid CSR matrix (row pointers decrease; they must be non-decreasing); read"
    )


def test_imports_numpy_only():
    code = "import sys; import genohoption._csr; print(sorted(m for m in ('torch', 'anndata', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
