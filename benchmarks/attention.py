"""Benchmark of the sparse graph-diffusion attention engine (genohoption.nn) against dense attention.

Usage::

    python benchmarks/attention.py            # full grid (takes a while on 2 cores)
    python benchmarks/attention.py --quick    # small sizes
    python benchmarks/attention.py --json     # machine-readable output
    python benchmarks/attention.py --device cuda   # the same grid on a GPU (exits with a message without CUDA)

Every (implementation, n, B) runs in a fresh subprocess. Times are wall-clock seconds of one call (after one
warm-up call when the estimated cost is small). Peak memory is the peak resident set size (VmHWM from
/proc/self/status, reset with /proc/self/clear_refs before the timed call) minus the RSS just before the
call, i.e. the extra memory the call needed on top of its inputs (q, k, v, the graph / mask, the output
gradient). Implementations:

a  dense F.scaled_dot_product_attention, no mask
b  F.scaled_dot_product_attention with the graph as a (B, 1, L, L) boolean mask
c  dense_diffusion_reference (PPR, K hops, explicit L x L matrices), only where it fits
d  graph_diffusion_attention, method "ppr" and "heat" (K hops), backend="numba" (CPU kernels);
   "d-ppr-torch" / "d-heat-torch" run the same engine on torch.sparse (MKL), the default backend

``--device cuda``: every tensor (q, k, v, graph, mask) on the first CUDA device; times are taken after
``torch.cuda.synchronize()``, memory is the peak of ``torch.cuda.max_memory_allocated`` minus the allocation
before the call (the same "extra memory" as on CPU). The numba kernels are CPU-only: their rows are skipped
(``d-*-torch`` is the engine on the GPU), and so are the hop-bandwidth and builder tables. Without a CUDA
device the script stops at once with a message saying so; nothing else in the package needs a GPU.

Graphs (``--graph``):

synthetic  power-law out-degree (mean ~23) and power-law popularity of targets over n genes, plus self-loops
           and the CLS token (mean degree ~25); every cell holds all n genes in random order.
pbmc3k     the real thing: the Seq2Graph gene graph (co-expression + packaged prior) of 10x PBMC 3k
           (``annotation/pbmc3k_seurat_labels.h5ad`` of the shared data, ``GENOHOPTION_SHARED_DATA``), and
           B cells drawn with a fixed seed, each tokenized to its n - 1 most expressed genes + CLS
           (``genohoption.data.tokenize``); L is the longest cell of the batch (<= n). Built once and cached in
           ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from importlib import import_module
from pathlib import Path

HEADS, HEAD_DIM, HOPS = 8, 64, 6
ROOT = Path(__file__).resolve().parents[1]
GRID = [(n, b) for n in (512, 1200, 3000, 6000, 20000) for b in (2, 8, 32)]
QUICK_GRID = [(512, 2), (512, 8), (1200, 8)]
DENSE_SECONDS_3000_8 = 10.3  # measured order of magnitude for (a) fwd+bwd; used to skip configs
MAX_DENSE_EST_S = 50.0
MAX_MEM_BYTES = 14 * 2**30


def _load_nn():
    """Import genohoption.nn without the heavy package __init__ (scvi, anndata).

    The modules keep their real names (``genohoption.nn._kernels``...), so numba's on-disk kernel cache is
    shared with normal imports of the package.
    """
    if "genohoption" not in sys.modules:
        pkg = types.ModuleType("genohoption")
        pkg.__path__ = [str(ROOT / "src" / "genohoption")]
        sys.modules["genohoption"] = pkg
    return import_module("genohoption.nn._graph"), import_module("genohoption.nn")


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def synthetic_graph(n: int, seed: int = 0, mean_deg: float = 23.0):
    """Global CSR graph over n genes: power-law out-degrees and power-law target popularity."""
    import numpy as np

    rng = np.random.default_rng(seed)
    deg = rng.pareto(2.0, n) + 1.0
    deg = np.clip(np.round(deg * mean_deg / deg.mean()), 1, n // 4).astype(np.int64)
    pop = 1.0 / np.arange(1, n + 1) ** 0.7
    pop = rng.permutation(pop / pop.sum())
    src = np.repeat(np.arange(n), deg)
    dst = rng.choice(n, size=src.size, p=pop)
    key = np.unique(src * n + dst)
    src, dst = key // n, key % n
    keep = src != dst
    src, dst = src[keep], dst[keep]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst.astype(np.int64)


SHARED_DATA = Path(os.environ.get("GENOHOPTION_SHARED_DATA", ROOT.parent / "shared" / "data"))
PBMC3K_CACHE = ROOT / "benchmarks" / "results" / "pbmc3k_inputs.npz"


def _prepare_pbmc3k() -> Path:
    """Gene graph of PBMC 3k and each cell's genes by decreasing expression, cached (parent process only)."""
    if PBMC3K_CACHE.exists():
        return PBMC3K_CACHE
    import numpy as np
    import scanpy as sc

    import genohoption as gh
    from genohoption._constants import GRAPH_KEY

    path = SHARED_DATA / "annotation" / "pbmc3k_seurat_labels.h5ad"
    if not path.exists():
        raise SystemExit(f"--graph pbmc3k needs {path} (set GENOHOPTION_SHARED_DATA).")
    adata = sc.read_h5ad(path)
    sc.pp.filter_genes(adata, min_cells=3)
    gh.pp.build_gene_graph(adata)
    graph = adata.varp[GRAPH_KEY].tocsr()
    x = adata.X.tocsr()
    order = np.random.default_rng(0).permutation(adata.n_obs)
    genes, cell_ptr = [], [0]
    for c in order:  # expressed genes of each cell, most expressed first
        row = x.getrow(c)
        genes.append(row.indices[np.argsort(-row.data, kind="stable")])
        cell_ptr.append(cell_ptr[-1] + genes[-1].size)
    PBMC3K_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        PBMC3K_CACHE,
        indptr=graph.indptr.astype(np.int64),
        indices=graph.indices.astype(np.int64),
        cell_ptr=np.asarray(cell_ptr, dtype=np.int64),
        cell_genes=np.concatenate(genes).astype(np.int64),
    )
    return PBMC3K_CACHE


def graph_and_tokens(kind: str, n: int, b: int):
    """``(indptr, indices, tokens)``: global CSR gene graph and ``(B, L)`` gene indices (-1 = CLS/padding)."""
    import numpy as np

    if kind == "synthetic":
        indptr, indices = synthetic_graph(n)
        return indptr, indices, make_tokens(n, b)
    data = np.load(PBMC3K_CACHE)
    ptr, cell_genes = data["cell_ptr"], data["cell_genes"]
    cells = [cell_genes[ptr[c] : ptr[c + 1]][: n - 1] for c in range(b)]
    tokens = np.full((b, 1 + max(c.size for c in cells)), -1, dtype=np.int64)
    for i, c in enumerate(cells):
        tokens[i, 1 : 1 + c.size] = np.sort(c)  # tokenize() keeps kept genes in gene order
    return data["indptr"], data["indices"], tokens


def make_tokens(n: int, b: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    tokens = np.empty((b, n), dtype=np.int64)
    tokens[:, 0] = -1  # CLS
    for c in range(b):
        tokens[c, 1:] = rng.permutation(n)[: n - 1]
    return tokens


def loop_builder(tokens, indptr, indices):
    """Per-cell Python loop (numpy inside), as in the authors' per-cell graph construction."""
    import numpy as np

    b, n_tok = tokens.shape
    rows, cols = [], []
    for c in range(b):
        pos = {}
        for i in range(1, n_tok):
            if tokens[c, i] >= 0:
                pos[int(tokens[c, i])] = i
        for i in range(n_tok):
            g = tokens[c, i]
            if i > 0 and g < 0:
                continue
            rows.append(c * n_tok + i)
            cols.append(c * n_tok + i)
            if i == 0:
                continue
            rows += [c * n_tok + i, c * n_tok]
            cols += [c * n_tok, c * n_tok + i]
            for nb in indices[indptr[g] : indptr[g + 1]]:
                j = pos.get(int(nb))
                if j is not None:
                    rows.append(c * n_tok + i)
                    cols.append(c * n_tok + j)
    return np.asarray(rows), np.asarray(cols)


def check_device(device: str) -> None:
    """Stop with a clear message when ``device`` cannot run here (``cuda`` without a visible CUDA device)."""
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        build = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} (built {build}) sees no CUDA device. Run on a machine with "
            "an NVIDIA GPU and a CUDA build of torch, or use --device cpu (the default)."
        )


def worker(impl: str, n: int, b: int, kind: str = "synthetic", device: str = "cpu") -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cuda = device == "cuda"
    if cuda and not impl.endswith("-torch") and impl.startswith("d-"):
        return {"skipped": "numba kernels are CPU-only (d-*-torch runs on the GPU)"}
    g_mod, d_mod = _load_nn()
    indptr, indices, tokens = graph_and_tokens(kind, n, b)
    tokens = torch.as_tensor(tokens, device=device)
    n_tok = tokens.shape[1]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    graph = g_mod.induced_batch_graph(
        tokens, torch.as_tensor(indptr, device=device), torch.as_tensor(indices, device=device)
    )
    sync()
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph.head_layout(HEADS)
    sync()
    t_layout = time.perf_counter() - t0
    res = {
        "impl": impl,
        "n": n,
        "B": b,
        "L": n_tok,
        "tokens_per_cell": float((tokens >= 0).sum()) / b + 1,
        "edges_per_cell": graph.n_edges / b,
        "graph_s": t_graph,
        "layout_s": t_layout,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    shape = (b, HEADS, n_tok, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=device).requires_grad_() for _ in range(3))
    gout = torch.randn(shape, device=device)
    if impl in ("b", "c"):
        mask = graph.to_dense_mask()
    del graph._cache[("heads", HEADS)]
    if not impl.startswith("d-"):
        graph = None

    if impl == "a":
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    elif impl == "b":
        m4 = mask[:, None]
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m4)  # noqa: E731
    elif impl == "c":
        fn = lambda: d_mod.dense_diffusion_reference(q, k, v, mask, method="ppr", n_hops=HOPS)  # noqa: E731
    else:
        method = impl.split("-")[1]
        backend = "torch" if impl.endswith("-torch") else "numba"
        graph.head_layout(HEADS)  # steady state: one layout per batch, shared by all layers
        fn = lambda: d_mod.graph_diffusion_attention(  # noqa: E731
            q, k, v, graph, method=method, n_hops=HOPS, backend=backend
        )

    def fwd():
        with torch.no_grad():
            return fn()

    def fwd_bwd():
        out = fn()
        q.grad = k.grad = v.grad = None
        out.backward(gout)

    est = DENSE_SECONDS_3000_8 * (n / 3000) ** 2 * b / 8
    if impl.startswith("d") or est < 5 or cuda:
        fwd_bwd()  # warm-up (on a GPU always: the first call pays for kernel loading)
    for name, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        q.grad = k.grad = v.grad = None
        if cuda:
            sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base = _status_bytes("VmRSS")
            _reset_hwm()
        t0 = time.perf_counter()
        f()
        sync()
        res[f"{name}_s"] = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else _status_bytes("VmHWM")
        res[f"{name}_mem"] = max(peak - base, 0)
    return res


def hop_bandwidth(n: int, b: int, kind: str = "synthetic") -> list[dict]:
    """Time one hop on the (B*H*L)^2 block-diagonal attention matrix vs a stream copy.

    Variants: the bare product ``A @ X`` with torch.sparse (MKL) and with the numba kernel, and the hops the
    engine runs (numba): PPR ``(1 - alpha) A X + alpha V`` and heat ``(t / k) A X`` with ``S += X_k`` fused.
    Compulsory bytes: CSR values and indices, row pointers, every dense operand read once, outputs written.
    """
    import torch

    torch.set_num_threads(2)
    g_mod, _ = _load_nn()
    k_mod = import_module("genohoption.nn._kernels")
    indptr, indices, tokens = graph_and_tokens(kind, n, b)
    graph = g_mod.induced_batch_graph(torch.as_tensor(tokens), torch.as_tensor(indptr), torch.as_tensor(indices))
    lay = graph.head_layout(HEADS)
    vals = torch.rand(lay.nnz)
    a = import_module("genohoption.nn._backends").csr_tensor(lay.crow, lay.col, vals, lay.n_rows)
    x = torch.randn(lay.n_rows, HEAD_DIM)
    v = torch.randn_like(x)
    total = torch.zeros_like(x)
    out = torch.zeros_like(x)

    def best(f, reps=7):
        f()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    big = torch.randn(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(big)
    t_copy = best(lambda: dst.copy_(big))
    stream = 2 * big.numel() * 4 / t_copy / 1e9
    idx_bytes = lay.col.element_size()
    node = x.numel() * 4
    csr_bytes = lay.nnz * (4 + idx_bytes) + (lay.n_rows + 1) * idx_bytes
    spmm = k_mod.spmm
    variants = [
        ("A@X torch.sparse (MKL)", lambda: torch.addmm(out, a, x, beta=0.0, out=out), 2 * node),
        ("A@X numba", lambda: spmm(lay.crow, lay.col, vals, x, out), 2 * node),
        ("PPR hop numba", lambda: spmm(lay.crow, lay.col, vals, x, out, alpha=0.75, v=v, beta=0.25), 3 * node),
        ("heat hop numba", lambda: spmm(lay.crow, lay.col, vals, x, out, alpha=1.25, total=total), 4 * node),
    ]
    res = []
    for name, fn, dense_bytes in variants:
        t_hop = best(fn)
        hop_bytes = csr_bytes + dense_bytes
        res.append(
            {
                "n": n,
                "B": b,
                "kernel": name,
                "nnz": lay.nnz,
                "hop_s": t_hop,
                "hop_GBps": hop_bytes / t_hop / 1e9,
                "stream_copy_GBps": stream,
                "hop_gather_GBps": (lay.nnz * HEAD_DIM * 4 + hop_bytes) / t_hop / 1e9,
            }
        )
    return res


def builder_bench(n: int, b: int, kind: str = "synthetic") -> dict:
    import torch

    torch.set_num_threads(2)
    g_mod, _ = _load_nn()
    indptr, indices, tokens = graph_and_tokens(kind, n, b)
    tt = torch.as_tensor(tokens)
    ip, ix = torch.as_tensor(indptr), torch.as_tensor(indices)
    g_mod.induced_batch_graph(tt, ip, ix)
    t0 = time.perf_counter()
    g = g_mod.induced_batch_graph(tt, ip, ix)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, _ = loop_builder(tokens, indptr, indices)
    t_loop = time.perf_counter() - t0
    assert rows.size == g.n_edges, (rows.size, g.n_edges)
    return {"n": n, "B": b, "vectorised_s": t_vec, "loop_s": t_loop, "speedup": t_loop / t_vec}


def _estimates(impl: str, n: int, b: int, device: str = "cpu") -> tuple[float, float]:
    """(seconds, bytes) rough upper estimates used to skip configurations (seconds: on 2 CPU cores, 0 on a GPU)."""
    node = b * HEADS * n * HEAD_DIM * 4
    if impl in ("a", "b"):
        sec = DENSE_SECONDS_3000_8 * (n / 3000) ** 2 * b / 8 * (1.1 if impl == "b" else 1.0)
        mem = 10 * node + (b * n * n if impl == "b" else 0)
    elif impl == "c":
        sec = 18.0 * (n / 1200) ** 2 * b / 8
        mem = (2 * HOPS + 6) * b * HEADS * n * n * 4
    else:
        nnz = 25 * n * b * HEADS
        sec = 0.6 * nnz / (25 * 3000 * 8 * 8)
        mem = (HOPS + 10) * node + 6 * nnz * 8
    return (0.0 if device == "cuda" else sec), mem


def _max_mem_bytes(device: str) -> float:
    if device == "cuda":
        import torch

        return 0.8 * torch.cuda.get_device_properties(0).total_memory
    return MAX_MEM_BYTES


def _run_worker(args: list[str], graph: str = "synthetic", device: str = "cpu") -> dict | list:
    cmd = [sys.executable, __file__, "--graph", graph, "--device", device, "--worker", *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--grid", default=None, help="comma list of n:B, e.g. 3000:8,6000:8")
    p.add_argument("--impls", default="a,b,c,d-ppr,d-heat,d-ppr-torch,d-heat-torch")
    p.add_argument("--graph", choices=("synthetic", "pbmc3k"), default="synthetic", help="see the module docstring")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the tensors live (cuda: the first GPU)"
    )
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    check_device(a.device)
    if a.worker:
        kind = a.worker[0]
        n, b = int(a.worker[1]), int(a.worker[2])
        if kind == "hop":
            print(json.dumps(hop_bandwidth(n, b, a.graph)))
        elif kind == "build":
            print(json.dumps(builder_bench(n, b, a.graph)))
        else:
            print(json.dumps(worker(kind, n, b, a.graph, a.device)))
        return
    if a.graph == "pbmc3k":
        _prepare_pbmc3k()
    grid = QUICK_GRID if a.quick else GRID
    if a.grid:
        grid = [tuple(int(x) for x in item.split(":")) for item in a.grid.split(",")]
    impls = a.impls.split(",")
    rows = []
    max_mem = _max_mem_bytes(a.device)
    for n, b in grid:
        for impl in impls:
            sec, mem = _estimates(impl, n, b, a.device)
            if mem > max_mem or (impl in ("a", "b", "c") and sec > MAX_DENSE_EST_S):
                rows.append(
                    {"impl": impl, "n": n, "B": b, "skipped": f"est. {sec:.0f} s, {mem / 2**30:.1f} GiB"}
                )
            else:
                r = _run_worker([impl, str(n), str(b)], a.graph, a.device)
                rows.append({**r, "impl": impl, "n": n, "B": b})
            if not a.json:
                print(_fmt_row(rows[-1], rows), flush=True)
    if a.device == "cuda":  # the hop and builder tables measure the CPU kernels
        if a.json:
            print(json.dumps({"attention": rows, "hop": [], "builder": []}, indent=1))
        return
    hop_grid = [(1200, 8)] if a.quick else [(3000, 8), (6000, 8)] if a.graph == "synthetic" else [(1200, 32), (3000, 8)]
    hops = []
    for n, b in hop_grid:
        r = _run_worker(["hop", str(n), str(b)], a.graph)
        hops += r if isinstance(r, list) else [r]
    build_grid = [(1200, 8)] if a.quick else [(1200, 32), (3000, 8), (6000, 8)]
    builds = [_run_worker(["build", str(n), str(b)], a.graph) for n, b in build_grid]
    if a.json:
        print(json.dumps({"attention": rows, "hop": hops, "builder": builds}, indent=1))
        return
    print()
    print("| n | B | kernel | nnz | hop s | hop GB/s | stream copy GB/s | ratio | incl. gathered rows GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for h in hops:
        if "error" in h:
            print(f"| error: {h['error']} |")
            continue
        print(
            f"| {h['n']} | {h['B']} | {h['kernel']} | {h['nnz']:,} | {h['hop_s']:.4f} | {h['hop_GBps']:.1f} | "
            f"{h['stream_copy_GBps']:.1f} | {h['hop_GBps'] / h['stream_copy_GBps']:.0%} | {h['hop_gather_GBps']:.1f} |"
        )
    print()
    print("| n | B | induced_batch_graph s | per-cell loop s | speed-up |")
    print("|---|---|---|---|---|")
    for r in builds:
        if "error" in r:
            print(f"| error: {r['error']} |")
            continue
        print(f"| {r['n']} | {r['B']} | {r['vectorised_s']:.3f} | {r['loop_s']:.2f} | {r['speedup']:.2f}x |")


_HEADER_PRINTED = False


def _fmt_row(r: dict, rows: list[dict]) -> str:
    global _HEADER_PRINTED
    out = ""
    if not _HEADER_PRINTED:
        _HEADER_PRINTED = True
        out = (
            "| n | B | impl | fwd s | fwd+bwd s | fwd MB | fwd+bwd MB | fwd+bwd time / (a) | fwd+bwd mem / (a) "
            "| L | E/token | graph+layout s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    if "skipped" in r or "error" in r:
        return out + f"| {r['n']} | {r['B']} | {r['impl']} | {r.get('skipped') or 'error: ' + r['error']} |"
    ref = next(
        (x for x in rows if x["impl"] == "a" and x["n"] == r["n"] and x["B"] == r["B"] and "fwd_s" in x), None
    )
    t_ratio = f"{r['fwd_bwd_s'] / ref['fwd_bwd_s']:.2f}" if ref else "-"
    m_ratio = f"{r['fwd_bwd_mem'] / max(ref['fwd_bwd_mem'], 1):.2f}" if ref else "-"
    return out + (
        f"| {r['n']} | {r['B']} | {r['impl']} | {r['fwd_s']:.3f} | {r['fwd_bwd_s']:.3f} | "
        f"{r['fwd_mem'] / 2**20:.0f} | {r['fwd_bwd_mem'] / 2**20:.0f} | {t_ratio} | {m_ratio} | "
        f"{r['L']} | {r['edges_per_cell'] / r['tokens_per_cell']:.1f} | {r['graph_s'] + r['layout_s']:.2f} |"
    )


if __name__ == "__main__":
    main()
