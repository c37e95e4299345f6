"""The two sparse primitives of the diffusion engine on each backend, and the choice of backend.

Primitives, over a CSR matrix ``A = (crow, col, val)`` of ``n x n``:

- ``spmm(crow, col, val, x, out, alpha, v, beta, total)``: ``out = alpha A x + beta v`` (then
  ``total += out`` if given), one hop of the power iteration;
- ``sddmm(crow, col, a, b, out, alpha, beta)``: ``out[e] = alpha <a_i, b_j> + beta out[e]`` on the
  pattern of ``(crow, col)``, the sampled dense-dense product (attention scores, gradient of ``A``).

Backends: ``"numba"`` (:mod:`genohoption.nn._kernels`: CPU kernels with prefetched row gathers) and
``"torch"`` (``torch.sparse`` CSR: MKL on CPU, cuSPARSE on CUDA). ``"auto"`` runs numba for CPU float32 /
float64 tensors and torch.sparse otherwise; if the numba kernels cannot be imported, compiled or run in this
process, it falls back to torch.sparse with one :class:`KernelFallbackWarning` per process.
"""

from __future__ import annotations

import warnings

import torch

from . import _kernels

__all__ = [
    "BACKENDS",
    "KernelFallbackWarning",
    "NumbaOps",
    "TorchOps",
    "check_backend",
    "csr_tensor",
    "make_ops",
    "numba_failure",
    "resolve_backend",
]

BACKENDS = ("auto", "numba", "torch")
"""Kernel backends of :func:`~genohoption.nn.graph_diffusion_attention`."""


class KernelFallbackWarning(RuntimeWarning):
    """``backend="auto"`` could not use the numba kernels and runs torch.sparse instead (once per process)."""


_NUMBA_FAILURE: str | None = None
"""Why the numba kernels are unusable in this process (``"auto"`` then runs torch.sparse); ``None`` if usable."""


def numba_failure() -> str | None:
    """Why ``backend="auto"`` stopped using the numba kernels in this process, or ``None``."""
    return _NUMBA_FAILURE


def _describe(exc: BaseException) -> str:
    """One-line description of ``exc``, at most 300 characters.

    The first line of its message: a :class:`~genohoption.nn._kernels.KernelError` names the kernel and the
    numba error; other exceptions get their type name in front.
    """
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if not isinstance(exc, _kernels.KernelError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


def _give_up_numba(exc: BaseException) -> None:
    """Record that the numba kernels are unusable in this process; warn the first time."""
    global _NUMBA_FAILURE
    if _NUMBA_FAILURE is not None:
        return
    reason = _describe(exc)
    if not isinstance(exc, _kernels.KernelError):
        reason = f"numba import failed: {reason}"
    _NUMBA_FAILURE = reason
    warnings.warn(
        f"genohoption: graph_diffusion_attention cannot use its numba CPU kernels ({reason}); "
        "backend='auto' runs torch.sparse instead for the rest of this process (same results, slower on CPU). "
        "Pass backend='torch' to silence this, or backend='numba' to raise the error.",
        KernelFallbackWarning,
        stacklevel=3,
    )


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """``n x n`` torch sparse CSR tensor sharing ``crow``, ``col``, ``values`` (no copy, invariants unchecked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)


class TorchOps:
    """The two primitives (see the module docstring) on ``torch.sparse`` CSR, for ``n x n`` matrices."""

    name = "torch"

    def __init__(self, n: int):
        self.n = n

    def spmm(self, crow, col, val, x, out, alpha=1.0, v=None, beta=0.0, total=None):
        """``out = alpha A x + beta v``; ``total += out`` if given; returns ``out`` (must not alias ``x``)."""
        mat = csr_tensor(crow, col, val, self.n)
        if beta != 0.0:
            torch.addmm(v, mat, x, beta=beta, alpha=alpha, out=out)
        else:
            out.zero_()  # addmm with beta=0 still propagates NaN from an uninitialised buffer
            torch.addmm(out, mat, x, beta=0.0, alpha=alpha, out=out)
        if total is not None:
            total.add_(out)
        return out

    def sddmm(self, crow, col, a, b, out, alpha=1.0, beta=0.0):
        """``out[e] = alpha <a_i, b_j> + beta out[e]`` for every edge ``e = (i, j)``; returns ``out``."""
        mat = csr_tensor(crow, col, out, self.n)
        if beta == 0.0:
            out.zero_()
        torch.sparse.sampled_addmm(mat, a, b.t(), beta=beta, alpha=alpha, out=mat)
        return out


class NumbaOps(TorchOps):
    """The two primitives as numba CPU kernels (:mod:`genohoption.nn._kernels`).

    If a kernel fails to compile or run (:class:`~genohoption.nn._kernels.KernelError`): with
    ``fallback=True`` (``backend="auto"``) this and every later primitive of the object run on torch.sparse,
    later ``"auto"`` calls use torch.sparse, and one :class:`KernelFallbackWarning` is issued per process;
    with ``fallback=False`` (``backend="numba"``) the error is raised.
    """

    name = "numba"

    def __init__(self, n: int, fallback: bool = True):
        super().__init__(n)
        self.fallback = fallback
        self.failed = False

    def _failed(self, exc: _kernels.KernelError) -> None:
        if not self.fallback:
            raise _kernels.KernelError(
                f"backend='numba': {exc}; use backend='torch', or 'auto' (which falls back to torch.sparse)."
            ) from exc.__cause__
        _give_up_numba(exc)
        self.failed = True

    def spmm(self, crow, col, val, x, out, alpha=1.0, v=None, beta=0.0, total=None):
        """See :meth:`TorchOps.spmm`."""
        if not self.failed:
            try:
                return _kernels.spmm(crow, col, val, x, out, alpha=alpha, v=v, beta=beta, total=total)
            except _kernels.KernelError as exc:  # compile errors come before the kernel runs
                self._failed(exc)
        return super().spmm(crow, col, val, x, out, alpha, v, beta, total)

    def sddmm(self, crow, col, a, b, out, alpha=1.0, beta=0.0):
        """See :meth:`TorchOps.sddmm`."""
        if not self.failed:
            try:
                return _kernels.sddmm(crow, col, a, b, out, alpha=alpha, beta=beta)
            except _kernels.KernelError as exc:
                self._failed(exc)
        return super().sddmm(crow, col, a, b, out, alpha, beta)


def check_backend(backend: str) -> None:
    """Raise :class:`ValueError` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}.")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``"numba"`` or ``"torch"``: the backend that ``backend`` means for tensors of ``device`` and ``dtype``.

    Raises
    ------
    ValueError
        Unknown ``backend``, or ``"numba"`` for tensors it cannot take (not CPU float32 / float64, or numba
        not importable).
    """
    check_backend(backend)
    cpu_float = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    cpu_ok = cpu_float and _kernels.available(dtype)
    if backend == "numba" and not cpu_ok:
        reason = (
            ""
            if _kernels.IMPORT_ERROR is None
            else f" (numba import failed: {_describe(_kernels.IMPORT_ERROR)})"
        )
        raise ValueError(
            f"backend='numba' runs on CPU float32/float64 tensors with numba installed; got {device} {dtype}"
            f"{reason}. Use backend='auto' or 'torch'."
        )
    if backend == "auto":
        if cpu_float and _kernels.IMPORT_ERROR is not None:
            _give_up_numba(_kernels.IMPORT_ERROR)
        return "numba" if cpu_ok and _NUMBA_FAILURE is None else "torch"
    return backend


def make_ops(backend: str, device: torch.device, dtype: torch.dtype, n: int) -> TorchOps:
    """Return the primitives for ``n x n`` matrices on the backend ``backend`` resolves to (:func:`resolve_backend`)."""
    if resolve_backend(backend, device, dtype) == "numba":
        return NumbaOps(n, fallback=backend == "auto")
    return TorchOps(n)
