"""Benchmark of the co-expression part of ``gh.pp.build_gene_graph``.

Each measured run happens in a fresh subprocess (``--worker``), which loads a cached synthetic
matrix, records its resident memory, builds the co-expression top-k and reports the wall time and the
peak resident memory (``ru_maxrss``). Data: ``n_cells x n_genes`` CSR float32, about 7% non-zero,
log-normalised, with gene-module structure (low-rank factors + noise, thresholded per gene).

Reference time: the float32 GEMM work of all gene pairs counted once, ``n_cells * n_genes**2`` flops,
at the machine's measured GEMM peak (a large ``numpy`` float32 matmul). Targets (exact): within 1.2x
of that time and <= 2 GiB peak memory at 50,000 x 20,000; approx: <= 60 s with >= 0.95 edge recall.

Usage::

    python benchmarks/gene_graph.py            # full table (about 10-15 min on 2 cores)
    python benchmarks/gene_graph.py --quick    # small sizes, seconds
    python benchmarks/gene_graph.py --json out.json
    python benchmarks/gene_graph.py --out-of-core                    # 1,000,000 x 5,000 CSR h5ad, backed
    python benchmarks/gene_graph.py --out-of-core --ooc-cells 200000 # a smaller file

The out-of-core table writes the synthetic matrix once to ``--data-dir`` (default
``/tmp/genohoption_bench``, 2.7 GiB at 1,000,000 x 5,000; never the repository), 2,000 cells at a time,
then builds the graph of the backed file with ``gh.pp.build_gene_graph`` in a fresh process (the streamed
exact kernel), and checks its edges against the in-memory exact kernel on the first ``--check-cells``.
Target: <= 2 GiB peak RSS; time reported as a ratio to the GEMM work at the probed rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
CACHE = HERE / "results" / "gene_graph_cache"
N_NEIGHBORS = 20
MIN_CORR = 0.4


# --- data ---------------------------------------------------------------------------------------


def synthesize(n_cells: int, n_genes: int, density: float = 0.07, seed: int = 0) -> sparse.csr_matrix:
    """Log-normalised-looking sparse data with gene modules, built in cell chunks (low memory)."""
    return sparse.vstack(list(synth_chunks(n_cells, n_genes, density, seed)), format="csr").astype(np.float32)


def synth_chunks(n_cells: int, n_genes: int, density: float = 0.07, seed: int = 0, step: int = 2000):
    """The rows of :func:`synthesize`, ``step`` cells at a time (CSR float32), for data larger than memory."""
    rng = np.random.default_rng(seed)
    n_factors = 64
    # each gene loads on one main module (strong) and a couple of weak ones
    loadings = np.zeros((n_factors, n_genes), dtype=np.float32)
    main = rng.integers(0, n_factors, n_genes)
    strength = rng.uniform(1.0, 4.0, n_genes).astype(np.float32)
    loadings[main, np.arange(n_genes)] = strength
    for _ in range(2):
        extra = rng.integers(0, n_factors, n_genes)
        loadings[extra, np.arange(n_genes)] += rng.normal(0, 0.3, n_genes).astype(np.float32)
    scale = np.sqrt((loadings**2).sum(0) + 1.0)
    # per-gene detection rate, log-uniform between ~1% and ~30% (mean ~7%)
    rate = np.exp(rng.uniform(np.log(0.01), np.log(0.3), n_genes))
    rate *= density / rate.mean()
    from scipy.stats import norm

    thr = norm.isf(np.clip(rate, 1e-4, 0.9)).astype(np.float32)
    for start in range(0, n_cells, step):
        m = min(step, n_cells - start)
        f = rng.standard_normal((m, n_factors), dtype=np.float32)
        z = f @ loadings
        z += rng.standard_normal((m, n_genes), dtype=np.float32)
        z /= scale
        z -= thr
        np.maximum(z, 0, out=z)
        np.log1p(4.0 * z, out=z)
        yield sparse.csr_matrix(z, dtype=np.float32)
        del z


def cached_data(n_cells: int, n_genes: int) -> sparse.csr_matrix:
    path = CACHE / f"X_{n_cells}x{n_genes}.npz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        X = synthesize(n_cells, n_genes)
        sparse.save_npz(path, X, compressed=False)
        return X
    return sparse.load_npz(path).tocsr()


def on_disk(n_cells: int, n_genes: int, data_dir: Path, fmt: str = "csr") -> Path:
    """Write the synthetic matrix once as an h5ad (CSR or dense ``X``), chunk by chunk; return its path.

    The file is never held in memory: ``X`` is appended 2,000 cells at a time (CSR through anndata's
    sparse dataset, dense into a pre-sized HDF5 dataset with anndata's ``array`` encoding).
    """
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    path = data_dir / f"genegraph_{n_cells}x{n_genes}_{fmt}.h5ad"
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    obs = pd.DataFrame(index=pd.Index([f"c{i}" for i in range(n_cells)]))
    var = pd.DataFrame(index=pd.Index([f"G{j}" for j in range(n_genes)]))
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        if fmt == "csr":
            chunks = synth_chunks(n_cells, n_genes)
            write_elem(f, "X", next(chunks))
            X = sparse_dataset(f["X"])
            for c in chunks:
                X.append(c)
        else:
            X = f.create_dataset("X", shape=(n_cells, n_genes), dtype=np.float32, chunks=(256, n_genes))
            X.attrs["encoding-type"], X.attrs["encoding-version"] = "array", "0.2.0"
            start = 0
            for c in synth_chunks(n_cells, n_genes):
                X[start : start + c.shape[0]] = c.toarray()
                start += c.shape[0]
    tmp.rename(path)
    return path


# --- measurements -------------------------------------------------------------------------------


def gemm_peak(size: int = 4096, k: int = 16384, repeats: int = 3) -> float:
    """Best float32 GEMM rate (FLOP/s) over a few ``(size x k) @ (k x size)`` products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, k), dtype=np.float32)
    b = rng.standard_normal((k, size), dtype=np.float32)
    a @ b  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * size * size * k / best


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def gemm_probe(size: int = 2048, k: int = 16384) -> tuple[float, float]:
    """Wall and CPU seconds per flop of a float32 GEMM, measured now (the machine may be shared)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, k), dtype=np.float32)
    b = rng.standard_normal((k, size), dtype=np.float32)
    a @ b
    t, c = time.perf_counter(), _cpu()
    a @ b
    flops = 2.0 * size * size * k
    return (time.perf_counter() - t) / flops, (_cpu() - c) / flops


def _light_genohoption() -> None:
    """Import ``genohoption.pp`` without ``genohoption/__init__`` pulling the model (and torch) in."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("genohoption")
    if "genohoption" not in sys.modules:
        pkg = types.ModuleType("genohoption")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["genohoption"] = pkg


def ooc_worker(args) -> dict:
    """Build the co-expression graph of a backed h5ad (``gh.pp.build_gene_graph``) in this process."""
    import anndata as ad

    _light_genohoption()
    from genohoption.pp import build_gene_graph

    probe_before = gemm_probe()
    adata = ad.read_h5ad(args.path, backed="r")
    mask = None
    if args.n_cells < adata.n_obs:
        mask = np.zeros(adata.n_obs, dtype=bool)
        mask[: args.n_cells] = True
    base = _rss()
    t, c = time.perf_counter(), _cpu()
    build_gene_graph(
        adata, prior=None, edges="coexpression", n_neighbors=N_NEIGHBORS, min_corr=MIN_CORR, cells=mask
    )
    wall, cpu = time.perf_counter() - t, _cpu() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load = os.getloadavg()[0]
    probe_after = gemm_probe()
    g = adata.varp["gene_graph"].tocoo()
    n_cells, n_genes = args.n_cells, adata.n_vars
    work = n_cells * n_genes**2
    wall_per_flop = (probe_before[0] + probe_after[0]) / 2
    cpu_per_flop = (probe_before[1] + probe_after[1]) / 2
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE / f"edges_{args.method}_{n_cells}x{n_genes}.npz", rows=g.row, cols=g.col)
    return {
        "n_cells": n_cells, "n_genes": n_genes, "method": args.method, "file": str(args.path),
        "file_gib": os.path.getsize(args.path) / 2**30, "engine": adata.uns["gene_graph"]["engine"],
        "wall_s": wall, "cpu_s": cpu, "probe_gflops": 1e-9 / wall_per_flop,
        "gemm_ref_wall_s": work * wall_per_flop, "gemm_ref_cpu_s": work * cpu_per_flop,
        "ratio_wall": wall / (work * wall_per_flop), "ratio_cpu": cpu / (work * cpu_per_flop),
        "load_avg_1min": load, "peak_rss_gib": peak / 2**30, "input_rss_gib": base / 2**30,
        "extra_rss_gib": (peak - base) / 2**30, "n_edges": int(g.nnz),
    }  # fmt: skip


def worker(args) -> dict:
    if args.path is not None:
        return ooc_worker(args)
    probe_before = gemm_probe()
    X = cached_data(args.n_cells, args.n_genes)
    if args.method == "naive":
        base = _rss()
        t, c = time.perf_counter(), _cpu()
        D = X.toarray()
        with np.errstate(all="ignore"):
            R = np.corrcoef(D.T)
        del D
        R = np.abs(np.nan_to_num(R))
        np.fill_diagonal(R, 0)
        idx = np.argpartition(-R, N_NEIGHBORS, axis=1)[:, :N_NEIGHBORS]
        rows = np.repeat(np.arange(R.shape[0]), N_NEIGHBORS)
        cols = idx.ravel()
        keep = R[rows, cols] > MIN_CORR
        rows, cols = rows[keep], cols[keep]
        del R
    else:
        _light_genohoption()  # the kernels without genohoption/__init__ (which imports the model and torch)
        from genohoption.pp._coexpression import coexpression_topk_approx, coexpression_topk_exact

        base = _rss()
        kernel = coexpression_topk_exact if args.method == "exact" else coexpression_topk_approx
        t, c = time.perf_counter(), _cpu()
        rows, cols, _ = kernel(X, N_NEIGHBORS, MIN_CORR)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load = os.getloadavg()[0]
    probe_after = gemm_probe()
    work = args.n_cells * args.n_genes**2  # float32 flops of all gene pairs counted once
    wall_per_flop = (probe_before[0] + probe_after[0]) / 2
    cpu_per_flop = (probe_before[1] + probe_after[1]) / 2
    out = {
        "n_cells": args.n_cells,
        "n_genes": args.n_genes,
        "method": args.method,
        "nnz_fraction": X.nnz / (X.shape[0] * X.shape[1]),
        "wall_s": wall,
        "cpu_s": cpu,
        "probe_gflops": 1e-9 / wall_per_flop,
        "gemm_ref_wall_s": work * wall_per_flop,
        "gemm_ref_cpu_s": work * cpu_per_flop,
        "ratio_wall": wall / (work * wall_per_flop),
        "ratio_cpu": cpu / (work * cpu_per_flop),
        "load_avg_1min": load,
        "peak_rss_gib": peak / 2**30,
        "input_rss_gib": base / 2**30,
        "extra_rss_gib": (peak - base) / 2**30,
        "n_edges": int(rows.size),
    }
    np.savez(CACHE / f"edges_{args.method}_{args.n_cells}x{args.n_genes}.npz", rows=rows, cols=cols)
    return out


def recall(n_cells: int, n_genes: int, method: str, ref: str = "exact") -> float | None:
    a, b = (CACHE / f"edges_{m}_{n_cells}x{n_genes}.npz" for m in (method, ref))
    if not (a.exists() and b.exists()):
        return None
    ea, eb = np.load(a), np.load(b)
    ka = set(zip(ea["rows"].tolist(), ea["cols"].tolist(), strict=True))
    kb = set(zip(eb["rows"].tolist(), eb["cols"].tolist(), strict=True))
    return len(ka & kb) / max(len(kb), 1)


def run_case(n_cells: int, n_genes: int, method: str, timeout: int = 3600, path: Path | None = None) -> dict:
    if path is None:
        cached_data(n_cells, n_genes)  # generate once, outside the measured process
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--method",
        method,
        "--n-cells",
        str(n_cells),
        "--n-genes",
        str(n_genes),
    ] + ([] if path is None else ["--path", str(path)])
    env = dict(
        os.environ, PYTHONPATH=str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="gene graph co-expression benchmark")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="exact")
    parser.add_argument("--n-cells", type=int, default=0)
    parser.add_argument("--n-genes", type=int, default=0)
    parser.add_argument("--path", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out-of-core",
        action="store_true",
        help="the out-of-core table: a backed h5ad of --ooc-cells x 5,000 genes written to --data-dir",
    )
    parser.add_argument("--ooc-cells", type=int, default=1_000_000, help="cells of the on-disk matrix")
    parser.add_argument("--ooc-genes", type=int, default=5_000, help="genes of the on-disk matrix")
    parser.add_argument("--ooc-format", choices=("csr", "dense"), default="csr", help="X on disk")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("/tmp/genohoption_bench"), help="where the h5ad goes"
    )
    parser.add_argument(
        "--check-cells",
        type=int,
        default=20_000,
        help="out of core: also build the graph of the first N cells in memory and compare (0: skip)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.out_of_core:
        out_of_core(args)
        return

    peak = gemm_peak(size=2048, k=8192) if args.quick else gemm_peak()
    print(
        f"float32 GEMM peak: {peak / 1e9:.1f} GFLOP/s on {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f}); ref = n_cells * n_genes**2 flops at the GEMM rate "
        "probed inside each run (before and after); cpu/ref uses process CPU seconds",
        flush=True,
    )
    if args.quick:
        cases = [(5_000, 2_000, "naive"), (5_000, 2_000, "exact"), (5_000, 2_000, "approx")]
    else:
        cases = [
            (20_000, 5_000, "naive"),
            (20_000, 5_000, "exact"),
            (20_000, 5_000, "approx"),
            (50_000, 20_000, "exact"),
            (50_000, 20_000, "approx"),
        ]
    results = []
    header = (
        f"{'cells':>7} {'genes':>6} {'method':>7} {'nnz%':>5} {'wall s':>7} {'ref s':>6} {'wall/ref':>8} "
        f"{'cpu s':>7} {'cpu/ref':>7} {'probe GF':>8} {'load':>5} {'peak GiB':>8} {'extra GiB':>9} "
        f"{'edges':>9} {'recall':>6}"
    )
    print(header, flush=True)
    for n_cells, n_genes, method in cases:
        r = run_case(n_cells, n_genes, method)
        r["gemm_peak_gflops"] = peak / 1e9
        r["gemm_ref_at_peak_s"] = n_cells * n_genes**2 / peak
        r["recall_vs_exact"] = recall(n_cells, n_genes, method) if method != "exact" else 1.0
        results.append(r)
        rec = "" if r["recall_vs_exact"] is None else f"{r['recall_vs_exact']:.4f}"
        print(
            f"{n_cells:>7} {n_genes:>6} {method:>7} {100 * r['nnz_fraction']:>5.1f} {r['wall_s']:>7.1f} "
            f"{r['gemm_ref_wall_s']:>6.1f} {r['ratio_wall']:>8.2f} {r['cpu_s']:>7.1f} {r['ratio_cpu']:>7.2f} "
            f"{r['probe_gflops']:>8.1f} {r['load_avg_1min']:>5.1f} {r['peak_rss_gib']:>8.2f} "
            f"{r['extra_rss_gib']:>9.2f} {r['n_edges']:>9} {rec:>6}",
            flush=True,
        )
    # recall of the naive run is computed before exact exists: recompute now
    for r in results:
        if r["method"] == "naive":
            r["recall_vs_exact"] = recall(r["n_cells"], r["n_genes"], "naive")
            print(
                f"naive {r['n_cells']}x{r['n_genes']}: edge agreement with exact {r['recall_vs_exact']:.4f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def out_of_core(args) -> None:
    """A backed h5ad larger than the RAM budget: streamed exact kernel through ``build_gene_graph``."""
    n, g = args.ooc_cells, args.ooc_genes
    t = time.perf_counter()
    path = on_disk(n, g, args.data_dir, args.ooc_format)
    print(f"data: {path} ({os.path.getsize(path) / 2**30:.2f} GiB; ready in {time.perf_counter() - t:.0f} s)")
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; ref = n_cells * n_genes**2 flops at the "
        "GEMM rate probed in the measuring process"
    )
    header = (
        f"{'cells':>9} {'genes':>6} {'engine':>9} {'wall s':>7} {'ref s':>6} {'wall/ref':>8} {'cpu/ref':>7} "
        f"{'probe GF':>8} {'load':>5} {'peak GiB':>8} {'edges':>9} {'agree':>6}"
    )
    print(header, flush=True)
    results = []
    cases = (
        [(args.check_cells, "streamed_check"), (n, "streamed")]
        if 0 < args.check_cells < n
        else [(n, "streamed")]
    )
    for n_cells, label in cases:
        r = run_case(n_cells, g, label, timeout=6 * 3600, path=path)
        agree = None
        if label == "streamed_check":
            # the in-memory exact kernel on the same first cells (read from the same file)
            mem = _in_memory_edges(path, n_cells)
            ooc = np.load(CACHE / f"edges_{label}_{n_cells}x{g}.npz")
            a = set(zip(ooc["rows"].tolist(), ooc["cols"].tolist(), strict=True))
            agree = len(a & mem) / max(len(a | mem), 1)
            r["edges_only_in_memory"], r["edges_only_streamed"] = len(mem - a), len(a - mem)
        r["edge_agreement_with_in_memory"] = agree  # Jaccard; differences are float32 near-ties
        results.append(r)
        print(
            f"{n_cells:>9} {g:>6} {r['engine']:>9} {r['wall_s']:>7.1f} {r['gemm_ref_wall_s']:>6.1f} "
            f"{r['ratio_wall']:>8.2f} {r['ratio_cpu']:>7.2f} {r['probe_gflops']:>8.1f} {r['load_avg_1min']:>5.1f} "
            f"{r['peak_rss_gib']:>8.2f} {r['n_edges']:>9} {'' if agree is None else f'{agree:.4f}':>6}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _in_memory_edges(path: Path, n_cells: int) -> set[tuple[int, int]]:
    import anndata as ad

    _light_genohoption()
    from genohoption.pp._coexpression import coexpression_topk_exact

    backed = ad.read_h5ad(path, backed="r")
    X = backed.X[:n_cells]
    backed.file.close()
    rows, cols, _ = coexpression_topk_exact(X, N_NEIGHBORS, MIN_CORR)
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


if __name__ == "__main__":
    main()
