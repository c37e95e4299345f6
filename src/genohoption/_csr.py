"""Checks of CSR index arrays, shared by the input checks (``_validate``) and the attention layer (``nn``).

A corrupt structure (row pointers that decrease, an index out of range) makes SciPy's C code and the
sparse kernels read out of bounds, which can crash the interpreter; these checks run first. They take
NumPy arrays or torch tensors alike (only ``ndim``, ``shape``, ``dtype``, slicing, comparisons and
``min`` / ``max`` are used, so a tensor is checked on its own device) and import NumPy only.
"""

from __future__ import annotations

import numpy as np


def is_integer(a) -> bool:
    """Whether ``a``'s dtype is a signed or unsigned integer (``int64``, ``torch.int32``, ...; not bool)."""
    try:
        return np.dtype(str(a.dtype).removeprefix("torch.")).kind in "iu"
    except TypeError:  # a torch dtype NumPy does not know (bfloat16, quantised)
        return False


def _as_array(a):
    return a if hasattr(a, "dtype") and hasattr(a, "ndim") else np.asarray(a)


def _not_1d_integer(name: str, a) -> str | None:
    if a.ndim == 1 and is_integer(a):
        return None
    return f"{name} must be a 1-D integer array, got {a.dtype} of shape {tuple(a.shape)}"


def row_pointer_problem(indptr, n_rows: int, nnz: int) -> str | None:
    """Say what is wrong with CSR row pointers, or return ``None`` when they are valid.

    Parameters
    ----------
    indptr
        ``(n_rows + 1,)`` row pointers (NumPy array or torch tensor).
    n_rows
        Number of rows.
    nnz
        Number of stored entries (``len(indices)``).

    Returns
    -------
    ``None``, or the first problem found: not a 1-D integer array, a length other than ``n_rows + 1``,
    not running from 0 to ``nnz``, or decreasing.
    """
    indptr = _as_array(indptr)
    problem = _not_1d_integer("indptr", indptr)
    if problem:
        return problem
    if indptr.shape[0] != n_rows + 1:
        return f"row pointers of length {indptr.shape[0]}, expected n_rows + 1 = {n_rows + 1}"
    first, last = int(indptr[0]), int(indptr[-1])
    if first != 0 or last != nnz:
        return f"row pointers must run from 0 to len(indices) = {nnz}, got {first}..{last}"
    if n_rows and bool((indptr[1:] < indptr[:-1]).any()):
        return "row pointers decrease; they must be non-decreasing"
    return None


def column_index_problem(indices, n_cols: int) -> str | None:
    """Say what is wrong with CSR column indices (or a chunk of them), or return ``None``.

    Parameters
    ----------
    indices
        ``(nnz,)`` column indices (NumPy array or torch tensor).
    n_cols
        Number of columns.

    Returns
    -------
    ``None``, or the problem: not a 1-D integer array, or an index outside ``[0, n_cols)`` (the
    message gives the smallest and largest index).
    """
    indices = _as_array(indices)
    problem = _not_1d_integer("indices", indices)
    if problem:
        return problem
    if indices.shape[0]:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n_cols:
            return f"column index out of [0, {n_cols}): {low}..{high}"
    return None


def csr_problem(indptr, indices, n_rows: int, n_cols: int) -> str | None:
    """Say what is wrong with a CSR structure, or return ``None`` when it is valid.

    Parameters
    ----------
    indptr
        ``(n_rows + 1,)`` row pointers.
    indices
        ``(nnz,)`` column indices.
    n_rows, n_cols
        Shape of the matrix.

    Returns
    -------
    ``None``, or the first problem (see :func:`row_pointer_problem` and :func:`column_index_problem`).
    """
    indptr, indices = _as_array(indptr), _as_array(indices)
    problem = _not_1d_integer("indptr", indptr) or _not_1d_integer("indices", indices)
    if problem:
        return problem
    return row_pointer_problem(indptr, n_rows, indices.shape[0]) or column_index_problem(indices, n_cols)


def structure_error(where: str, problem: str, fix: str | None = None, layout: str = "CSR") -> ValueError:
    """Return the error for a corrupt structure: ``"<where> is not a valid <layout> matrix (<problem>); <fix>."``."""
    return ValueError(f"{where} is not a valid {layout} matrix ({problem})" + (f"; {fix}." if fix else "."))


def check_csr(indptr, indices, n_rows: int, n_cols: int, where: str, fix: str | None = None,
              layout: str = "CSR") -> None:
    """Raise ``ValueError`` unless ``indptr`` / ``indices`` form a valid ``(n_rows, n_cols)`` CSR structure.

    Parameters
    ----------
    indptr
        ``(n_rows + 1,)`` row pointers (NumPy array, torch tensor or sequence).
    indices
        ``(nnz,)`` column indices.
    n_rows, n_cols
        Shape of the matrix (for CSC, pass the transposed shape and ``layout="CSC"``).
    where
        Name of the matrix, for messages.
    fix
        What the message tells the user to do.
    layout
        ``"CSR"`` or ``"CSC"``, for messages.

    Raises
    ------
    ValueError
        If the arrays are not 1-D integers, ``indptr`` has a length other than ``n_rows + 1``, does not
        run from 0 to ``len(indices)`` or decreases, or an index is negative or ``>= n_cols``.
    """
    problem = csr_problem(indptr, indices, n_rows, n_cols)
    if problem:
        raise structure_error(where, problem, fix, layout)
