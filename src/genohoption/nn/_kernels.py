"""CPU kernels of the diffusion engine, compiled with numba.

Two row-parallel kernels over a CSR matrix ``A`` (``crow``, ``col``, ``val``; int32 or int64 indices):

- :func:`spmm` ``out = alpha * A @ x + beta * v`` (and optionally ``total += out``), one hop of the power
  iteration with its axpby fused;
- :func:`sddmm` ``out[e] = alpha * <a[i], b[j]> + beta * out[e]`` for every edge ``e = (i, j)``, the sampled
  dense-dense product that gives attention scores and the gradient of ``A``.

Why not ``torch.sparse`` (MKL) on CPU: with ``d = 64`` a hop is bound by the latency of the gathered rows
``x[col[e]]`` (each a 256-byte random read from L2/L3), not by arithmetic, and MKL's CSR product issues the
gathers without look-ahead. Here every thread keeps the ``d`` accumulators of its row in registers (a stack
array of compile-time length, one kernel per ``d``) and prefetches the row needed ``PREFETCH_DISTANCE`` edges
ahead. The loops over ``d`` are vectorised (compiled with LLVM's SLP vectorizer, see :func:`_slp_vectorized`).
CUDA keeps using ``torch.sparse`` (cuSPARSE).

Threads: the kernels run on ``torch.get_num_threads()`` threads (numba's pool, capped by
``NUMBA_NUM_THREADS``); with one thread, or for less than :data:`PARALLEL_MIN_WORK` multiply-adds, a serial
build runs, which never wakes the pool (waking it costs more than such a call, and its idle workers wait). The calling thread's
numba thread count and ``numba.config`` are the same after a call as before it.

Kernels are compiled on first use for each head dimension ``d``, dtype and index dtype and cached on disk by
numba (``NUMBA_CACHE_DIR``), so later processes load them. Any error while compiling or loading them is raised
as :class:`KernelError`.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

IMPORT_ERROR: Exception | None = None
"""Why numba could not be imported (``None`` if it was); the engine then uses torch.sparse."""

try:  # numba is a dependency (also scanpy's); the engine falls back to torch.sparse without it
    import numba
    from llvmlite import ir
    from numba import carray
    from numba.core import cgutils, types
    from numba.core.compiler_lock import global_compiler_lock
    from numba.extending import intrinsic
except Exception as exc:  # pragma: no cover - broken environments (e.g. numba too old for this numpy)
    numba = None
    IMPORT_ERROR = exc

__all__ = ["IMPORT_ERROR", "PREFETCH_DISTANCE", "KernelError", "available", "sddmm", "spmm"]

PREFETCH_DISTANCE = 16
"""Edges ahead whose gathered row is prefetched."""

PARALLEL_MIN_WORK = 2**15
"""Calls with fewer multiply-adds (edges x head dimension) run the serial build (never waking the pool)."""

_DTYPES = (torch.float32, torch.float64)


class KernelError(RuntimeError):
    """A numba kernel failed to compile or to load (numba / LLVM error as ``__cause__``)."""


def available(dtype: torch.dtype | None = None) -> bool:
    """Whether the numba kernels can run (numba importable and, if given, ``dtype`` float32 or float64)."""
    return numba is not None and (dtype is None or dtype in _DTYPES)


if numba is not None:

    @intrinsic
    def _stack_empty(typingctx, n, like):
        """Uninitialised stack array of ``n`` (a compile-time constant) elements of ``like.dtype``."""
        if not isinstance(n, types.IntegerLiteral):
            return None
        size = n.literal_value

        def codegen(context, builder, sig, args):
            elem = context.get_value_type(like.dtype)
            return cgutils.alloca_once(builder, elem, size=context.get_constant(types.intp, size))

        return types.CPointer(like.dtype)(n, like), codegen

    @intrinsic
    def _prefetch_row(typingctx, arr, row, n):
        """Prefetch (read, keep in all cache levels) the first ``n`` elements of row ``row`` of a 2-D C array."""
        if not isinstance(n, types.IntegerLiteral):
            return None
        nbytes = n.literal_value * (arr.dtype.bitwidth // 8)

        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            a = context.make_array(aty)(context, builder, args[0])
            r = context.cast(builder, args[1], sig.args[1], types.intp)
            zero = context.get_constant(types.intp, 0)
            ptr = cgutils.get_item_pointer2(
                context,
                builder,
                a.data,
                cgutils.unpack_tuple(builder, a.shape),
                cgutils.unpack_tuple(builder, a.strides),
                aty.layout,
                [r, zero],
            )
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            base = builder.bitcast(ptr, i8p)
            for off in range(0, nbytes, 64):  # one prefetch per cache line
                builder.call(
                    fn, [builder.gep(base, [ir.Constant(ir.IntType(64), off)]), i32(0), i32(3), i32(1)]
                )
            return context.get_dummy_value()

        return types.void(arr, row, n), codegen


@functools.cache
def _spmm_kernel(d: int, parallel: bool = True):
    dist = PREFETCH_DISTANCE
    variant = (d, parallel)  # numba's disk cache keys on closure contents, not on jit flags

    @numba.njit(parallel=parallel, fastmath=True, boundscheck=False, nogil=True, cache=True)
    def kernel(crow, col, val, x, out, alpha, v, beta, total, accumulate):  # pragma: no cover - compiled
        variant  # noqa: B018 - referenced so that it is part of the closure
        n = out.shape[0]
        nnz = crow[n]
        for r in numba.prange(n):
            acc = carray(_stack_empty(d, x), (d,))
            for c in range(d):
                acc[c] = 0.0
            stop = crow[r + 1]
            for e in range(crow[r], stop):
                if e + dist < nnz:
                    _prefetch_row(x, col[e + dist], d)
                w = val[e]
                xj = x[col[e]]
                for c in range(d):
                    acc[c] += w * xj[c]
            if beta != 0.0:
                for c in range(d):
                    out[r, c] = alpha * acc[c] + beta * v[r, c]
            else:
                for c in range(d):
                    out[r, c] = alpha * acc[c]
            if accumulate:
                for c in range(d):
                    total[r, c] += out[r, c]

    return kernel


@functools.cache
def _sddmm_kernel(d: int, parallel: bool = True):
    dist = PREFETCH_DISTANCE
    variant = (d, parallel)  # see _spmm_kernel

    @numba.njit(parallel=parallel, fastmath=True, boundscheck=False, nogil=True, cache=True)
    def kernel(crow, col, a, b, out, alpha, beta, zero):  # pragma: no cover - compiled
        variant  # noqa: B018 - referenced so that it is part of the closure
        n = a.shape[0]
        nnz = crow[n]
        for r in numba.prange(n):
            ar = carray(_stack_empty(d, a), (d,))
            for c in range(d):
                ar[c] = a[r, c]
            for e in range(crow[r], crow[r + 1]):
                if e + dist < nnz:
                    _prefetch_row(b, col[e + dist], d)
                bj = b[col[e]]
                s = zero
                for c in range(d):
                    s += ar[c] * bj[c]
                if beta != 0.0:
                    out[e] = alpha * s + beta * out[e]
                else:
                    out[e] = alpha * s

    return kernel


def _check_csr(crow: torch.Tensor, col: torch.Tensor, n_rows: int, edge_arrays: dict[str, torch.Tensor],
               name: str) -> None:
    """Check the CSR arrays in ``O(1)`` before a kernel reads them without bounds checks.

    ``crow`` must be 1-D integer of length ``n_rows + 1`` starting at 0, and ``col`` and every array of
    ``edge_arrays`` (values per edge) must hold at least ``crow[-1]`` entries. The order of ``crow`` and
    the range of ``col`` are the caller's (:class:`~genohoption.nn.BatchGraph` validates them).
    """
    for what, t in (("crow", crow), ("col", col)):
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name}: {what} must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}.")
    if crow.numel() != n_rows + 1:
        raise ValueError(f"{name}: crow must have n_rows + 1 = {n_rows + 1} entries, got {crow.numel()}.")
    nnz = int(crow[-1])
    if int(crow[0]) != 0 or nnz < 0:
        raise ValueError(f"{name}: crow must start at 0 and end at the number of edges, got {int(crow[0])}..{nnz}.")
    for what, t in {"col": col, **edge_arrays}.items():
        if t.numel() < nnz:
            raise ValueError(f"{name}: {what} has {t.numel()} entries but crow[-1] = {nnz} edges.")


def _np(t: torch.Tensor) -> np.ndarray:
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("numba kernels need contiguous CPU tensors.")
    return t.detach().numpy()


def _scalar(t: torch.Tensor):
    """Return the numpy scalar type of ``t``'s dtype (scalars passed to a kernel must not promote float32 math to float64)."""
    return np.dtype(str(t.dtype).removeprefix("torch.")).type


@contextlib.contextmanager
def _slp_vectorized():
    """Compile with LLVM's SLP vectorizer, which numba leaves off (``NUMBA_SLP_VECTORIZE=0``).

    For ``d < 64`` LLVM fully unrolls the per-row loops over ``d`` before its loop vectorizer runs; without
    SLP they become scalar FMAs with spilled accumulators. ``numba.config.SLP_VECTORIZE`` is only read while
    a function compiles: it is set for the duration of the block and restored after, and the caller holds
    numba's compiler lock so that no other thread compiles with it.
    """
    if not hasattr(numba.config, "SLP_VECTORIZE"):  # pragma: no cover - numba without the option
        yield
        return
    old = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = True
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = old


@contextlib.contextmanager
def _numba_threads(work: int):
    """Run on ``torch.get_num_threads()`` threads (at most ``NUMBA_NUM_THREADS``); yield whether in parallel.

    With one thread, or less than :data:`PARALLEL_MIN_WORK` multiply-adds of ``work``, the serial kernels run
    and numba's thread pool is not touched: a parallel kernel masked to one thread still wakes the pool,
    whose idle worker spin-waits. Otherwise the calling thread's numba thread count is set for the block and
    restored after it.
    """
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if threads == 1 or work < PARALLEL_MIN_WORK:
        yield False
        return
    old = numba.get_num_threads()
    if old != threads:
        numba.set_num_threads(threads)
    try:
        yield True
    finally:
        if old != threads:
            numba.set_num_threads(old)


_COMPILED: set[tuple] = set()
"""Kernels and argument types that have run in this process (no compilation left to do)."""


def _run(name: str, factory, d: int, parallel: bool, *args) -> None:
    """Call ``factory(d, parallel)(*args)``.

    The first call per kernel and argument types (the one that compiles, or loads from numba's disk cache)
    runs with SLP vectorisation on and holds numba's compiler lock.

    Raises
    ------
    KernelError
        numba or LLVM failed to build or load the kernel (the compiled kernels raise nothing themselves).
    """
    key = (factory, d, parallel, *(getattr(a, "dtype", type(a)) for a in args))
    try:
        kernel = factory(d, parallel)
        if key in _COMPILED:
            kernel(*args)
            return
        with global_compiler_lock, _slp_vectorized():
            kernel(*args)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise KernelError(
            f"numba kernel {name}(d={d}, parallel={parallel}) failed to compile or load: "
            f"{type(exc).__name__}: {lines[0] if lines else ''}"
        ) from exc
    _COMPILED.add(key)


def spmm(
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    alpha: float = 1.0,
    v: torch.Tensor | None = None,
    beta: float = 0.0,
    total: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out = alpha * A @ x + beta * v`` for CSR ``A = (crow, col, val)``; then ``total += out`` if given.

    ``x``, ``out``, ``v``, ``total`` are contiguous ``(n, d)`` CPU tensors of one dtype (float32 or float64);
    ``out`` must not alias ``x``. Rows without edges get ``beta * v``. Returns ``out``.

    Raises
    ------
    ValueError
        Shapes, dtypes, tensors not contiguous on CPU, or CSR arrays of the wrong length (``crow`` not
        ``(n + 1,)`` from 0, ``col`` / ``val`` shorter than ``crow[-1]``).
    KernelError
        The kernel failed to compile or load.
    """
    n, d = out.shape
    if x.dim() != 2 or x.shape[1] != d or val.dtype != x.dtype or out.dtype != x.dtype:
        raise ValueError("spmm: x and out must be (n, d) with the dtype of val.")
    if beta != 0.0 and (v is None or v.shape != out.shape):
        raise ValueError("spmm: beta != 0 needs v with the shape of out.")
    if total is not None and total.shape != out.shape:
        raise ValueError("spmm: total must have the shape of out.")
    _check_csr(crow, col, n, {"val": val}, "spmm")
    if n == 0 or d == 0:
        return out
    cast = _scalar(x)
    xs = _np(x)
    args = (
        _np(crow),
        _np(col),
        _np(val),
        xs,
        _np(out),
        cast(alpha),
        xs if v is None else _np(v),
        cast(beta),
        xs if total is None else _np(total),
        total is not None,
    )
    with _numba_threads(int(crow[-1]) * d) as parallel:
        _run("spmm", _spmm_kernel, d, parallel, *args)
    return out


def sddmm(
    crow: torch.Tensor,
    col: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """``out[e] = alpha * <a[i], b[j]> + beta * out[e]`` for every edge ``e = (i, j)`` of ``(crow, col)``.

    ``a``, ``b`` are contiguous ``(n, d)`` CPU tensors; ``out`` is ``(nnz,)`` of the same dtype (only read
    when ``beta != 0``). Returns ``out``.

    Raises
    ------
    ValueError
        Tensors not contiguous on CPU, ``a`` and ``b`` of different widths, or CSR arrays of the wrong
        length (``crow`` not ``(n + 1,)`` from 0, ``col`` / ``out`` shorter than ``crow[-1]``).
    KernelError
        The kernel failed to compile or load.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError("sddmm: a and b must be (n, d) and (m, d).")
    d = a.shape[1]
    _check_csr(crow, col, a.shape[0], {"out": out}, "sddmm")
    if out.numel() == 0:
        return out
    if d == 0:
        return out.mul_(beta)
    cast = _scalar(a)
    args = (_np(crow), _np(col), _np(a), _np(b), _np(out), cast(alpha), cast(beta), cast(0.0))
    with _numba_threads(int(crow[-1]) * d) as parallel:
        _run("sddmm", _sddmm_kernel, d, parallel, *args)
    return out
