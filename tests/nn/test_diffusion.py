from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genohoption.nn import (
    BatchGraph,
    GraphDiffusionAttention,
    dense_diffusion_reference,
    graph_diffusion_attention,
    induced_batch_graph,
    last_diffusion_stats,
)

torch.set_num_threads(1)

CONFIGS = [
    dict(method="ppr", n_hops=6, alpha=0.25),
    dict(method="ppr", n_hops=3, alpha=0.6),
    dict(method="heat", n_hops=6, t=5.0, normalize=False),
    dict(method="heat", n_hops=4, t=1.5, normalize=True),
    dict(method="mask"),
]


def _graph(seed=0, n_genes=30):
    """B=4 cells of different lengths, CLS, padding, an isolated gene token, an all-padding cell."""
    m = sp.random(n_genes, n_genes, density=0.15, random_state=seed, format="csr")
    m.data[:] = 1.0
    m = m.tolil()
    m[3, :] = 0
    m[:, 3] = 0
    m = m.tocsr()
    rng = np.random.default_rng(seed)
    n_tok = 9
    tokens = np.full((4, n_tok), -1)
    for c, length in enumerate([9, 6, 3, 1]):
        tokens[c, :length] = rng.choice(np.arange(4, n_genes), size=length, replace=False)
    tokens[1, 2] = 3  # gene without neighbours: self-loop + CLS only
    return induced_batch_graph(torch.as_tensor(tokens), torch.as_tensor(m.indptr), torch.as_tensor(m.indices))


def _graph_no_cls_with_empty(seed=0):
    """No CLS: padding rows are empty, and a token with only a self-loop."""
    m = sp.random(20, 20, density=0.2, random_state=seed, format="csr")
    m.data[:] = 1.0
    m = m.tolil()
    m[3, :] = 0
    m[:, 3] = 0
    m = m.tocsr()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, -1, -1, -1]])
    return induced_batch_graph(tokens, torch.as_tensor(m.indptr), torch.as_tensor(m.indices), cls_token=False)


def _qkv(graph, h=3, d=5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (graph.batch_size, h, graph.seq_len, d)
    return [torch.randn(shape, generator=gen, dtype=dtype).mul_(1.5).requires_grad_() for _ in range(3)]


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


BACKENDS = ["numba", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("make_graph", [_graph, _graph_no_cls_with_empty])
def test_matches_dense_reference(cfg, make_graph, backend):
    graph = make_graph()
    q, k, v = _qkv(graph)
    out = graph_diffusion_attention(q, k, v, graph, backend=backend, **cfg)
    ref_cfg = {"n_hops": 1, **cfg}
    ref = dense_diffusion_reference(q, k, v, graph.to_dense_mask(), **ref_cfg)
    assert out.shape == q.shape and out.dtype == torch.float64
    assert _rel(out, ref) <= 1e-6
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), gout)
    grads_ref = torch.autograd.grad(ref, (q, k, v), gout)
    for g, gr in zip(grads, grads_ref, strict=True):
        assert _rel(g, gr) <= 1e-6
    # edge-less rows output 0
    empty = graph.indptr.diff().view(graph.batch_size, 1, graph.seq_len) == 0
    assert torch.all(out.detach().masked_select(empty[..., None]) == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_gradcheck(cfg, backend):
    graph = _graph(seed=2)
    q, k, v = _qkv(graph, h=2, d=3, seed=1)
    assert torch.autograd.gradcheck(
        lambda q, k, v: graph_diffusion_attention(q, k, v, graph, backend=backend, **cfg),
        (q, k, v),
        eps=1e-6,
        atol=1e-7,
    )


def test_backends_agree_at_head_dim_64():
    """The register-blocked d = 64 kernels (the production head size) against torch.sparse, fwd and bwd."""
    graph = _graph(seed=4, n_genes=60)
    q, k, v = _qkv(graph, h=4, d=64, dtype=torch.float32, seed=3)
    gout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    res = {}
    for backend in BACKENDS:
        out = graph_diffusion_attention(q, k, v, graph, method="heat", backend=backend)
        res[backend] = (out, *torch.autograd.grad(out, (q, k, v), gout))
    for a, b in zip(res["numba"], res["torch"], strict=True):
        assert _rel(a, b) <= 1e-5


def test_only_v_requires_grad():
    graph = _graph()
    q, k, v = _qkv(graph)
    q, k = q.detach(), k.detach()
    out = graph_diffusion_attention(q, k, v, graph)
    (gv,) = torch.autograd.grad(out.sum(), v)
    ref = dense_diffusion_reference(q, k, v, graph.to_dense_mask())
    (gv_ref,) = torch.autograd.grad(ref.sum(), v)
    assert _rel(gv, gv_ref) <= 1e-6


def _fixed_attention_graph():
    """One cell, no CLS, complete graph on 4 tokens; q = k = 0 makes A exactly uniform (1/4)."""
    n = 4
    indptr = torch.arange(0, n * n + 1, n)
    indices = torch.arange(n).repeat(n)
    return BatchGraph(indptr, indices, 1, n)


def test_ppr_and_heat_closed_series():
    graph = _fixed_attention_graph()
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(1, 1, 4, 2, generator=gen, dtype=torch.float64)
    z = torch.zeros_like(v)
    a = torch.full((4, 4), 0.25, dtype=torch.float64)
    vv = v[0, 0]
    n_hops, alpha, t = 5, 0.3, 2.0
    apow = [torch.linalg.matrix_power(a, i) for i in range(n_hops + 1)]
    ppr = (
        sum(alpha * (1 - alpha) ** i * apow[i] @ vv for i in range(n_hops))
        + (1 - alpha) ** n_hops * apow[n_hops] @ vv
    )
    out = graph_diffusion_attention(z, z, v, graph, method="ppr", n_hops=n_hops, alpha=alpha)
    assert _rel(out[0, 0], ppr) <= 1e-12
    heat = math.exp(-t) * sum(t**i / math.factorial(i) * apow[i] @ vv for i in range(n_hops + 1))
    out = graph_diffusion_attention(z, z, v, graph, method="heat", n_hops=n_hops, t=t)
    assert _rel(out[0, 0], heat) <= 1e-12
    weights = math.exp(-t) * sum(t**i / math.factorial(i) for i in range(n_hops + 1))
    out = graph_diffusion_attention(z, z, v, graph, method="heat", n_hops=n_hops, t=t, normalize=True)
    assert _rel(out[0, 0], heat / weights) <= 1e-12
    out = graph_diffusion_attention(z, z, v, graph, method="mask")
    assert _rel(out[0, 0], a @ vv) <= 1e-12


def _path_graph_attention():
    """One cell of 5 tokens, no CLS, unequal degrees (a path with self-loops plus the edge 4 -> 0).

    With q = k = 0 every neighbour gets the same score, so ``A`` is the row-normalised adjacency: row-stochastic,
    not symmetric and not idempotent (``A^2 != A``), so each hop changes the output.
    """
    neighbours = [[0, 1], [0, 1, 2], [1, 2, 3, 4], [2, 3], [0, 4]]
    n = len(neighbours)
    indptr = torch.tensor([0, *np.cumsum([len(r) for r in neighbours])])
    indices = torch.tensor([j for r in neighbours for j in r])
    a = np.zeros((n, n))
    for i, r in enumerate(neighbours):
        a[i, r] = 1.0 / len(r)
    return BatchGraph(indptr, indices, 1, n), a


def _closed_form(a, method, n_hops, alpha, t, normalize):
    """``M`` with output ``M V`` per head, from powers of ``A`` (float64 numpy): eqs. 6-8, 10 summed out."""
    powers = [np.linalg.matrix_power(a, i) for i in range(n_hops + 1)]
    if method == "mask":
        return a
    if method == "ppr":  # V_K = (1 - alpha)^K A^K V + alpha sum_{k<K} (1 - alpha)^k A^k V
        return (1 - alpha) ** n_hops * powers[n_hops] + sum(
            alpha * (1 - alpha) ** i * powers[i] for i in range(n_hops)
        )
    weights = [math.exp(-t) * t**i / math.factorial(i) for i in range(n_hops + 1)]
    m = sum(w * p for w, p in zip(weights, powers, strict=True))
    return m / sum(weights) if normalize else m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cfg",
    [
        dict(method="ppr", alpha=0.3, t=1.0, normalize=False),
        dict(method="heat", alpha=0.25, t=2.0, normalize=False),
        dict(method="heat", alpha=0.25, t=2.0, normalize=True),
    ],
    ids=lambda c: f"{c['method']}-normalize={c['normalize']}",
)
def test_closed_form_on_non_idempotent_attention(cfg, backend):
    """Output and dL/dV equal the closed-form series in A for K = 1, 2, 5, which give different outputs."""
    graph, a = _path_graph_attention()
    assert not np.allclose(a @ a, a)
    gen = torch.Generator().manual_seed(11)
    shape = (1, 2, graph.seq_len, 3)
    v = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = torch.zeros(shape, dtype=torch.float64)
    vv, gg = v.detach().numpy()[0], gout.numpy()[0]
    outs = {}
    for n_hops in (1, 2, 5):
        out = graph_diffusion_attention(z, z, v, graph, n_hops=n_hops, backend=backend, **cfg)
        (gv,) = torch.autograd.grad(out, v, gout)
        m = _closed_form(a, n_hops=n_hops, **cfg)
        np.testing.assert_allclose(out.detach().numpy()[0], m @ vv, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gv.numpy()[0], m.T @ gg, rtol=1e-10, atol=1e-10)
        assert last_diffusion_stats().n_hops == n_hops
        outs[n_hops] = out.detach()
    for k1, k2 in ((1, 2), (2, 5), (1, 5)):  # a wrong hop count would not go unnoticed
        assert (outs[k1] - outs[k2]).abs().max() > 1e-3
    out = graph_diffusion_attention(z, z, v, graph, method="mask", backend=backend)
    np.testing.assert_allclose(out.detach().numpy()[0], a @ vv, rtol=1e-10, atol=1e-10)


def test_adaptive_hops():
    graph = _graph()
    q, k, v = _qkv(graph)
    out = graph_diffusion_attention(q, k, v, graph, method="ppr", n_hops=50, tol=1e-3)
    stats = last_diffusion_stats()
    assert stats.converged and 1 <= stats.n_hops < 50 and stats.residual < 1e-3
    ref = dense_diffusion_reference(q, k, v, graph.to_dense_mask(), method="ppr", n_hops=stats.n_hops)
    assert _rel(out, ref) <= 1e-6
    g, gr = (torch.autograd.grad(x.sum(), q)[0] for x in (out, ref))
    assert _rel(g, gr) <= 1e-6
    out = graph_diffusion_attention(q, k, v, graph, method="heat", n_hops=30, tol=1e-4, normalize=True)
    stats = last_diffusion_stats()
    ref = dense_diffusion_reference(
        q, k, v, graph.to_dense_mask(), method="heat", n_hops=stats.n_hops, normalize=True
    )
    assert stats.n_hops < 30 and _rel(out, ref) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["ppr", "heat", "mask"])
def test_bfloat16_and_float32(method, backend):
    graph = _graph()
    q, k, v = _qkv(graph, h=2, d=8)
    ref = dense_diffusion_reference(q, k, v, graph.to_dense_mask(), method=method)
    gref = torch.autograd.grad(ref.sum(), (q, k, v))
    # float32: 1e-5; bfloat16 inputs (8-bit mantissa, computed in float32): 3e-2
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        qs, ks, vs = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
        out = graph_diffusion_attention(qs, ks, vs, graph, method=method, backend=backend)
        assert out.dtype == dtype
        assert _rel(out.double(), ref) <= tol
        grads = torch.autograd.grad(out.float().sum(), (qs, ks, vs))
        for g, gr in zip(grads, gref, strict=True):
            assert g.dtype == dtype
            assert _rel(g.double(), gr) <= 3 * tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    graph = _graph()
    results = []
    for _ in range(2):
        q, k, v = _qkv(graph, dtype=torch.float32, seed=7)
        out = graph_diffusion_attention(q, k, v, graph, method="heat", backend=backend)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        results.append((out, *grads))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_module_dense_equals_multihead_attention():
    torch.manual_seed(0)
    d_model, h = 16, 4
    attn = GraphDiffusionAttention(d_model, h, attention="dense")
    mha = torch.nn.MultiheadAttention(d_model, h, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.Wqkv.weight)
        mha.in_proj_bias.copy_(attn.Wqkv.bias)
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
    x = torch.randn(3, 7, d_model)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    kpm[2, 2:] = True
    out = attn(x, key_padding_mask=kpm)
    ref, _ = mha(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert (out - ref).abs().max() <= 1e-5
    out = attn(x)
    ref, _ = mha(x, x, x, need_weights=False)
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("attention", ["ppr", "heat", "mask"])
def test_module_sparse_matches_functional(attention):
    torch.manual_seed(0)
    graph = _graph()
    d_model, h = 12, 3
    attn = GraphDiffusionAttention(d_model, h, attention=attention, n_hops=4).double()
    x = torch.randn(graph.batch_size, graph.seq_len, d_model, dtype=torch.float64, requires_grad=True)
    out = attn(x, graph)
    qkv = attn.Wqkv(x).view(*x.shape[:2], 3, h, d_model // h)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    ref = dense_diffusion_reference(q, k, v, graph.to_dense_mask(), method=attention, n_hops=4)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(x.shape))
    assert _rel(out, ref) <= 1e-6
    g1 = torch.autograd.grad(out.sum(), (x, attn.Wqkv.weight))
    g2 = torch.autograd.grad(ref.sum(), (x, attn.Wqkv.weight))
    for a, b in zip(g1, g2, strict=True):
        assert _rel(a, b) <= 1e-6
    assert "n_heads=3" in repr(attn)


def test_errors():
    graph = _graph()
    q, k, v = _qkv(graph)
    with pytest.raises(ValueError, match="choose one of 'ppr', 'heat', 'mask'"):
        graph_diffusion_attention(q, k, v, graph, method="dense")
    with pytest.raises(ValueError, match="n_hops"):
        graph_diffusion_attention(q, k, v, graph, n_hops=0)
    with pytest.raises(ValueError, match="alpha"):
        graph_diffusion_attention(q, k, v, graph, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        graph_diffusion_attention(q, k, v, graph, alpha=1.5)
    with pytest.raises(ValueError, match="t \\(heat"):
        graph_diffusion_attention(q, k, v, graph, method="heat", t=0.0)
    with pytest.raises(ValueError, match="tol"):
        graph_diffusion_attention(q, k, v, graph, tol=-1.0)
    with pytest.raises(ValueError, match="shape"):
        graph_diffusion_attention(q, k[:, :, :-1], v, graph)
    with pytest.raises(ValueError, match="batch_size, seq_len"):
        graph_diffusion_attention(q[:2], k[:2], v[:2], graph)
    with pytest.raises(TypeError, match="BatchGraph"):
        graph_diffusion_attention(q, k, v, graph.to_dense_mask())
    with pytest.raises(ValueError, match="mask must be"):
        dense_diffusion_reference(q, k, v, graph.to_dense_mask()[:, :2], method="ppr")
    with pytest.raises(ValueError, match="choose one of"):
        GraphDiffusionAttention(8, 2, attention="flash")
    with pytest.raises(ValueError, match="multiple of n_heads"):
        GraphDiffusionAttention(10, 3)
    attn = GraphDiffusionAttention(8, 2)
    with pytest.raises(ValueError, match="needs the batch graph"):
        attn(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        attn(torch.randn(1, 3, 7), graph)


def test_backend_choice(monkeypatch):
    from genohoption.nn import _backends, _kernels

    graph = _graph()
    q, k, v = _qkv(graph)
    with pytest.raises(ValueError, match="choose one of 'auto', 'numba', 'torch'"):
        graph_diffusion_attention(q, k, v, graph, backend="mkl")
    assert _backends.resolve_backend("auto", torch.device("cpu"), torch.float32) == "numba"
    assert _backends.resolve_backend("auto", torch.device("cpu"), torch.float16) == "torch"
    assert _backends.resolve_backend("numba", torch.device("cpu"), torch.float32) == "numba"
    assert _backends.resolve_backend("auto", torch.device("cuda"), torch.float32) == "torch"
    with pytest.raises(ValueError, match="backend='numba' runs on CPU"):
        _backends.resolve_backend("numba", torch.device("cuda"), torch.float32)
    # without numba, backend="numba" is refused and "auto" still runs torch.sparse
    expected = graph_diffusion_attention(q, k, v, graph, backend="numba")
    monkeypatch.setattr(_kernels, "numba", None)
    with pytest.raises(ValueError, match="backend='numba' runs on CPU"):
        _backends.resolve_backend("numba", torch.device("cpu"), torch.float64)
    assert _backends.resolve_backend("auto", torch.device("cpu"), torch.float64) == "torch"
    assert _rel(graph_diffusion_attention(q, k, v, graph), expected) <= 1e-12


def _failing_njit_factory(d, parallel=True):
    """A kernel factory whose kernels fail to compile (numba TypingError), as on an incompatible numba/LLVM."""
    import numba

    @numba.njit
    def kernel(*args):  # pragma: no cover - never compiles
        return args[0] + "no kernel"

    return kernel


def _lowering_error_factory(d, parallel=True):
    from numba.core.errors import LoweringError

    raise LoweringError(
        "Intrinsic name not mangled correctly for type arguments! Should be: llvm.prefetch.p0i8"
    )


@pytest.mark.parametrize(
    ("factory", "broken", "error"),
    [
        (_failing_njit_factory, ("_spmm_kernel", "_sddmm_kernel"), "TypingError"),
        (_lowering_error_factory, ("_spmm_kernel", "_sddmm_kernel"), "LoweringError"),
        (_failing_njit_factory, ("_spmm_kernel",), "TypingError"),  # fails after numba computed the scores
    ],
    ids=["typing-error", "lowering-error", "spmm-only"],
)
def test_auto_falls_back_to_torch_when_kernels_fail(monkeypatch, factory, broken, error):
    from genohoption.nn import _backends, _kernels

    monkeypatch.setattr(_backends, "_NUMBA_FAILURE", None)  # as in a fresh process; restored afterwards
    graph = _graph()
    q, k, v = _qkv(graph)
    gout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2), dtype=q.dtype)
    expected = graph_diffusion_attention(q, k, v, graph, backend="torch")
    grads_expected = torch.autograd.grad(expected, (q, k, v), gout)
    for name in broken:
        monkeypatch.setattr(_kernels, name, factory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            out = graph_diffusion_attention(q, k, v, graph)  # backend="auto"
            grads = torch.autograd.grad(out, (q, k, v), gout)
            assert _rel(out, expected) <= 1e-12
            for g, ge in zip(grads, grads_expected, strict=True):
                assert _rel(g, ge) <= 1e-12
            if len(broken) == 2:  # nothing ran on numba: the torch backend's values exactly
                assert torch.equal(out, expected)
    fallback = [w for w in caught if issubclass(w.category, _backends.KernelFallbackWarning)]
    assert len(fallback) == 1 and issubclass(fallback[0].category, RuntimeWarning)
    message = str(fallback[0].message)
    assert error in message and "torch.sparse" in message
    assert error in _backends.numba_failure()
    assert _backends.resolve_backend("auto", torch.device("cpu"), torch.float64) == "torch"
    # asked for explicitly, numba raises a clear error instead
    with pytest.raises(RuntimeError, match=f"backend='numba'.*failed to compile or load: {error}"):
        graph_diffusion_attention(q, k, v, graph, backend="numba")


def test_auto_falls_back_when_numba_does_not_import(monkeypatch):
    from genohoption.nn import _backends, _kernels

    monkeypatch.setattr(_backends, "_NUMBA_FAILURE", None)
    graph = _graph()
    q, k, v = _qkv(graph)
    expected = graph_diffusion_attention(q, k, v, graph, backend="torch")
    monkeypatch.setattr(_kernels, "numba", None)
    monkeypatch.setattr(
        _kernels, "IMPORT_ERROR", ImportError("Numba needs NumPy 2.2 or less. Got NumPy 2.9.")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [graph_diffusion_attention(q, k, v, graph) for _ in range(2)]
    assert [w.category for w in caught] == [_backends.KernelFallbackWarning]
    assert "ImportError: Numba needs NumPy 2.2" in str(caught[0].message)
    assert all(torch.equal(out, expected) for out in outs)
    with pytest.raises(ValueError, match="numba import failed: ImportError"):
        graph_diffusion_attention(q, k, v, graph, backend="numba")


def test_module_backend():
    graph = _graph()
    torch.manual_seed(0)
    attn = GraphDiffusionAttention(8, 2, attention="heat").double()
    x = torch.randn(graph.batch_size, graph.seq_len, 8, dtype=torch.float64)
    outs = {}
    for backend in ("numba", "torch"):
        attn.backend = backend
        outs[backend] = attn(x, graph)
    assert _rel(outs["numba"], outs["torch"]) <= 1e-12
    assert "backend='torch'" in repr(attn) and GraphDiffusionAttention(8, 2).backend == "auto"
    with pytest.raises(ValueError, match="choose one of 'auto', 'numba', 'torch'"):
        GraphDiffusionAttention(8, 2, backend="mkl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["ppr", "heat", "mask"])
def test_cuda_matches_dense_reference(method):
    """The torch.sparse path on CUDA (cuSPARSE), float64, float32 and bfloat16, against the CPU reference."""
    graph = _graph()
    q, k, v = _qkv(graph, h=2, d=8)
    ref = dense_diffusion_reference(q, k, v, graph.to_dense_mask(), method=method)
    gout = torch.randn_like(ref)
    gref = torch.autograd.grad(ref, (q, k, v), gout)
    cuda_graph = graph.to("cuda")
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        qs, ks, vs = (x.detach().to("cuda", dtype).requires_grad_() for x in (q, k, v))
        out = graph_diffusion_attention(qs, ks, vs, cuda_graph, method=method)
        assert out.device.type == "cuda" and out.dtype == dtype
        assert _rel(out.double().cpu(), ref) <= tol
        grads = torch.autograd.grad(out, (qs, ks, vs), gout.to("cuda", dtype))
        for g, gr in zip(grads, gref, strict=True):
            assert _rel(g.double().cpu(), gr) <= 3 * tol
