"""The two sparse primitives of the diffusion engine on each backend, and the choice of backend.

Primitives, over a CSR matrix ``A = (crow, col, val)`` of ``n x n``:

- ``spmm(crow, col, val, x, out, alpha, v, beta, total)``: ``out = alpha A x + beta v`` (then
  ``total += out`` if given), one hop of the power iteration;
- ``sddmm(crow, col, a, b, out, alpha, beta)``: ``out[e] = alpha <a_i, b_j> + beta out[e]`` on the
  pattern of ``(crow, col)``, the sampled dense-dense product (attention scores, gradient of ``A``).

Backends: ``"numba"`` (:mod:`genohoption.nn._kernels`: CPU kernels with prefetched row gathers) and
``"torch"`` (``torch.sparse`` CSR: MKL on CPU, cuSPARSE on CUDA). ``"auto"`` runs numba for CPU float32 /
float64 tensors when numba is installed, and torch.sparse otherwise.
"""

from __future__ import annotations

import warnings

import torch

from . import _kernels

__all__ = [
    "BACKENDS",
    "NumbaOps",
    "TorchOps",
    "check_backend",
    "csr_tensor",
    "make_ops",
    "resolve_backend",
]

BACKENDS = ("auto", "numba", "torch")
"""Kernel backends of :func:`~genohoption.nn.graph_diffusion_attention`."""


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
    """The two primitives as numba CPU kernels (:mod:`genohoption.nn._kernels`)."""

    name = "numba"

    def spmm(self, crow, col, val, x, out, alpha=1.0, v=None, beta=0.0, total=None):
        """See :meth:`TorchOps.spmm`."""
        return _kernels.spmm(crow, col, val, x, out, alpha=alpha, v=v, beta=beta, total=total)

    def sddmm(self, crow, col, a, b, out, alpha=1.0, beta=0.0):
        """See :meth:`TorchOps.sddmm`."""
        return _kernels.sddmm(crow, col, a, b, out, alpha=alpha, beta=beta)


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
    cpu_ok = device.type == "cpu" and _kernels.available(dtype)
    if backend == "numba" and not cpu_ok:
        raise ValueError(
            f"backend='numba' runs on CPU float32/float64 tensors with numba installed; got {device} {dtype}. "
            "Use backend='auto' or 'torch'."
        )
    if backend == "auto":
        return "numba" if cpu_ok else "torch"
    return backend


def make_ops(backend: str, device: torch.device, dtype: torch.dtype, n: int) -> TorchOps:
    """Return the primitives for ``n x n`` matrices on the backend ``backend`` resolves to (:func:`resolve_backend`)."""
    if resolve_backend(backend, device, dtype) == "numba":
        return NumbaOps(n)
    return TorchOps(n)
