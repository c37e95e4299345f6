"""The numba CPU kernels against scipy / dense products (exact to rounding)."""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genohoption.nn import _kernels

torch.set_num_threads(1)


def _csr(n, density, seed, empty_rows=(0, 5)):
    m = sp.random(n, n, density=density, random_state=seed, format="lil")
    for r in empty_rows:
        m[r, :] = 0
    m[7, :] = 1.0  # a dense row: longer than the prefetch distance, prefetches cross rows
    return m.tocsr()


# each (d, dtype, index dtype) is a separate compilation (~1-2 s): cover every axis without the full product
@pytest.mark.parametrize(
    ("d", "dtype", "idx_dtype"),
    [
        (1, torch.float64, torch.int32),
        (3, torch.float32, torch.int64),
        (64, torch.float32, torch.int32),  # the production head size: accumulators in registers
        (64, torch.float64, torch.int64),
        (130, torch.float32, torch.int32),  # too long to unroll: stack accumulators
    ],
)
def test_spmm_matches_scipy(d, dtype, idx_dtype):
    n = 70
    m = _csr(n, 0.2, seed=d)
    rng = np.random.default_rng(d)
    x = rng.standard_normal((n, d))
    v = rng.standard_normal((n, d))
    total0 = rng.standard_normal((n, d))
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    crow, col = torch.as_tensor(m.indptr, dtype=idx_dtype), torch.as_tensor(m.indices, dtype=idx_dtype)
    val = t(m.data)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    ax = m @ x

    out = torch.full((n, d), float("nan"), dtype=dtype)  # garbage in out must not leak through
    _kernels.spmm(crow, col, val, t(x), out)
    np.testing.assert_allclose(out.numpy(), ax, rtol=tol, atol=tol)
    assert torch.all(out[0] == 0) and torch.all(out[5] == 0)  # empty rows

    total = torch.tensor(total0, dtype=dtype)  # a copy: the kernel adds in place
    _kernels.spmm(crow, col, val, t(x), out, alpha=0.75, v=t(v), beta=0.25, total=total)
    np.testing.assert_allclose(out.numpy(), 0.75 * ax + 0.25 * v, rtol=tol, atol=tol)
    np.testing.assert_allclose(total.numpy(), total0 + 0.75 * ax + 0.25 * v, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("d", "dtype"), [(1, torch.float64), (5, torch.float32), (64, torch.float32), (64, torch.float64)]
)
def test_sddmm_matches_dense(d, dtype):
    n = 50
    m = _csr(n, 0.25, seed=10 + d)
    rng = np.random.default_rng(d)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    dense = a @ b.T
    rows = np.repeat(np.arange(n), np.diff(m.indptr))
    expected = dense[rows, m.indices]
    crow, col = torch.as_tensor(m.indptr, dtype=torch.int32), torch.as_tensor(m.indices, dtype=torch.int32)
    t = lambda z: torch.as_tensor(z, dtype=dtype)  # noqa: E731
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    out = torch.full((m.nnz,), float("nan"), dtype=dtype)
    _kernels.sddmm(crow, col, t(a), t(b), out, alpha=0.5)
    np.testing.assert_allclose(out.numpy(), 0.5 * expected, rtol=tol, atol=tol)
    prev = rng.standard_normal(m.nnz)
    out = torch.tensor(prev, dtype=dtype)
    _kernels.sddmm(crow, col, t(a), t(b), out, alpha=2.0, beta=1.0)
    np.testing.assert_allclose(out.numpy(), prev + 2.0 * expected, rtol=tol, atol=tol)


def test_kernel_input_errors():
    crow, col = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    val = torch.ones(1)
    with pytest.raises(ValueError, match="beta != 0 needs v"):
        _kernels.spmm(crow, col, val, torch.ones(1, 4), torch.empty(1, 4), beta=0.5)
    with pytest.raises(ValueError, match="dtype of val"):
        _kernels.spmm(crow, col, val, torch.ones(1, 4, dtype=torch.float64), torch.empty(1, 4))
    with pytest.raises(ValueError, match="contiguous CPU"):
        _kernels.spmm(crow, col, val, torch.ones(4, 2).t()[:1], torch.empty(1, 4))
    assert _kernels.available(torch.float32) and not _kernels.available(torch.float16)


def test_parallel_and_serial_builds_agree():
    """One torch thread runs the serial build, more run the parallel one: same values, both cached apart."""
    n, d = 300, 16
    m = _csr(n, 0.05, seed=3)
    rng = np.random.default_rng(3)
    crow, col = torch.as_tensor(m.indptr), torch.as_tensor(m.indices)
    val = torch.as_tensor(m.data, dtype=torch.float32)
    x = torch.as_tensor(rng.standard_normal((n, d)), dtype=torch.float32)
    res = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty(n, d)
            scores = torch.empty(m.nnz)
            _kernels.spmm(crow, col, val, x, out)
            _kernels.sddmm(crow, col, x, x, scores)
            res[threads] = (out, scores)
    finally:
        torch.set_num_threads(1)
    np.testing.assert_allclose(res[2][0].numpy(), m @ x.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(res[1], res[2], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    assert _kernels._spmm_kernel(d, False) is not _kernels._spmm_kernel(d, True)


def _small_problem(n=40, d=8, seed=5):
    m = _csr(n, 0.2, seed=seed)
    crow, col = torch.as_tensor(m.indptr, dtype=torch.int32), torch.as_tensor(m.indices, dtype=torch.int32)
    x = torch.as_tensor(np.random.default_rng(seed).standard_normal((n, d)), dtype=torch.float32)
    return m, crow, col, torch.as_tensor(m.data, dtype=torch.float32), x


def _call_both(crow, col, val, x):
    _kernels.spmm(crow, col, val, x, torch.empty_like(x))
    _kernels.sddmm(crow, col, x, x, torch.empty(col.numel(), dtype=x.dtype))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_numba_thread_count_restored(monkeypatch):
    """A parallel call (2 torch threads) runs on 2 numba threads and leaves the caller's count as it was."""
    monkeypatch.setattr(_kernels, "PARALLEL_MIN_WORK", 0)  # the small problem would run serially
    _, crow, col, val, x = _small_problem()
    before = numba.get_num_threads()
    seen = []
    run = _kernels._run

    def spy(name, factory, d, parallel, *args):
        seen.append((parallel, numba.get_num_threads()))
        return run(name, factory, d, parallel, *args)

    try:
        numba.set_num_threads(1)
        torch.set_num_threads(2)
        _kernels._run = spy
        _call_both(crow, col, val, x)
        assert seen == [(True, 2), (True, 2)]
        assert numba.get_num_threads() == 1
        torch.set_num_threads(1)  # serial build: numba's thread count is not touched
        _call_both(crow, col, val, x)
        assert seen[2:] == [(False, 1), (False, 1)]
        assert numba.get_num_threads() == 1
    finally:
        _kernels._run = run
        torch.set_num_threads(1)
        numba.set_num_threads(before)


@pytest.mark.parametrize("slp", [False, True])
def test_numba_config_unchanged(slp, monkeypatch):
    """SLP vectorisation is switched on only while a kernel compiles, and numba.config is as before after it."""
    monkeypatch.setattr(numba.config, "SLP_VECTORIZE", slp)
    _, crow, col, val, x = _small_problem(d=11 + slp)  # a head dimension no other test compiles
    during = []
    slp_vectorized = _kernels._slp_vectorized

    @contextlib.contextmanager
    def spy():
        with slp_vectorized():
            during.append(numba.config.SLP_VECTORIZE)
            yield

    config_before = {k: getattr(numba.config, k) for k in dir(numba.config) if k.isupper()}
    monkeypatch.setattr(_kernels, "_slp_vectorized", spy)
    for _ in range(2):
        _call_both(crow, col, val, x)
    assert during == [True, True]  # the first spmm and the first sddmm only: later calls compile nothing
    assert numba.config.SLP_VECTORIZE is slp
    assert {k: getattr(numba.config, k) for k in dir(numba.config) if k.isupper()} == config_before


def test_kernel_error_names_the_cause(monkeypatch):
    """Compilation errors come out as KernelError (a RuntimeError) with the numba error as cause."""
    from numba.core.errors import TypingError

    def factory(d, parallel=True):
        raise TypingError("cannot type this")

    _, crow, col, val, x = _small_problem()
    monkeypatch.setattr(_kernels, "_spmm_kernel", factory)
    with pytest.raises(_kernels.KernelError, match=r"spmm\(d=8, .*TypingError: cannot type this") as info:
        _kernels.spmm(crow, col, val, x, torch.empty_like(x))
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, TypingError)


def test_small_work_runs_serially(monkeypatch):
    """Below PARALLEL_MIN_WORK multiply-adds the serial build runs even with 2 torch threads (no pool wake-up)."""
    _, crow, col, val, x = _small_problem()
    seen = []
    run = _kernels._run

    def spy(name, factory, d, parallel, *args):
        seen.append(parallel)
        return run(name, factory, d, parallel, *args)

    monkeypatch.setattr(_kernels, "_run", spy)
    try:
        torch.set_num_threads(2)
        _call_both(crow, col, val, x)  # 40 rows x 20% x d=8: far below the threshold
        monkeypatch.setattr(_kernels, "PARALLEL_MIN_WORK", 0)
        _call_both(crow, col, val, x)
    finally:
        torch.set_num_threads(1)
    assert seen == [False, False, True, True] if numba.config.NUMBA_NUM_THREADS >= 2 else [False] * 4
