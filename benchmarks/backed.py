"""Peak memory and time of training and prediction on a backed AnnData (data larger than memory).

The script writes synthetic h5ad files of ``--n-genes`` genes (default 2,000) to a temporary directory
(``--data-dir``, default a fresh folder under the system's temp dir, deleted at the end unless ``--keep``),
2,000 cells at a time so that the writer never holds the matrix: CSR float32, about 10 % non-zero,
log-normalised-like values (``log1p`` of Poisson counts), ``--n-types`` cell types whose genes differ in
detection rate and level, and a random symmetric gene graph of about 10 neighbours per gene in
``varp["gene_graph"]`` (the benchmark measures the model's data path, not the graph builder).

Each measurement runs in a fresh subprocess, which reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: Python, torch, the model, the obs table),
wall times, its torch thread count and the machine's 1-minute load average at its start and end:

``train``    on a file of ``--train-cells`` cells (default 20,000), read into memory and opened backed:
             ``setup_anndata``, ``GenoHoptionModel(adata)`` (default model: scGPT-style, d_model 64,
             2 layers, ppr), ``train(max_epochs=1)`` (90 % of the cells for training, 10 % validation,
             64 cells per minibatch), then ``save`` (the in-memory model is the one that predicts below);
``predict``  for each size of ``--n-cells`` (default 200,000), ``GenoHoptionModel.load`` of that model and
             ``predict`` (128 cells per forward pass; writes ``obs`` / ``obsm`` in memory) on the file opened
             with ``backed="r"`` and on the file read into memory (``--modes``), one after the other.

Peak memory of ``predict`` should not grow with the number of cells beyond its results (the
``(n_cells, n_classes)`` probabilities and the ``(n_cells, d)`` embeddings it computes with them) and, in
memory, the matrix itself; ``--n-cells 20000 50000 200000`` shows the curve.
``--malloc-mmap-threshold 65536`` sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the measured processes, for
comparison only (no setting is needed).

Usage::

    python benchmarks/backed.py                                   # 200,000 x 2,000 (slow on 2 cores)
    python benchmarks/backed.py --n-cells 20000 50000 200000 --threads 1
    python benchmarks/backed.py --n-cells 20000 --train-cells 5000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 2000
LABELS = "cell_type"


# --- data -------------------------------------------------------------------------------------------
def synth_chunks(n_cells: int, n_genes: int, n_types: int, density: float = 0.1, seed: int = 0):
    """Yield ``(X chunk (CSR float32), type codes)`` of ``CHUNK`` cells: log1p(Poisson) values, ~``density`` non-zero."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    # per type and gene: detection probability (mean ``density``) and mean level of the detected values
    detect = rng.gamma(1.0, density, (n_types, n_genes)).clip(0, 0.9).astype(np.float32)
    detect *= density / detect.mean()
    level = rng.gamma(2.0, 2.0, (n_types, n_genes)).astype(np.float32)
    for start in range(0, n_cells, CHUNK):
        m = min(CHUNK, n_cells - start)
        types = rng.integers(0, n_types, m)
        on = rng.random((m, n_genes), dtype=np.float32) < detect[types]
        values = np.log1p(1.0 + rng.poisson(level[types])).astype(np.float32)
        yield sparse.csr_matrix(np.where(on, values, np.float32(0))), types


def random_graph(n_genes: int, degree: int = 10, seed: int = 1):
    """Symmetric random gene graph, about ``degree`` neighbours per gene (CSR float32, no self-loops)."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_genes), degree // 2)
    cols = rng.integers(0, n_genes, rows.size)
    keep = rows != cols
    g = sparse.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])), shape=(n_genes, n_genes))
    g = ((g + g.T) > 0).astype(np.float32).tocsr()
    g.sort_indices()
    return g


def write_h5ad(path: Path, n_cells: int, n_genes: int, n_types: int) -> Path:
    """Write the synthetic data as an h5ad, ``CHUNK`` cells at a time (the matrix is never held whole)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    if path.exists():
        return path
    chunks = synth_chunks(n_cells, n_genes, n_types)
    X0, t0 = next(chunks)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        write_elem(f, "X", X0)
        X = sparse_dataset(f["X"])
        types = [t0]
        for c, t in chunks:
            X.append(c)
            types.append(t)
    types = np.concatenate(types)
    obs = pd.DataFrame({LABELS: pd.Categorical([f"type_{t}" for t in types])},
                       index=pd.Index([f"c{i}" for i in range(n_cells)]))
    var = pd.DataFrame(index=pd.Index([f"G{j}" for j in range(n_genes)]))
    rest = ad.AnnData(obs=obs, var=var, varp={"gene_graph": random_graph(n_genes)})
    with h5py.File(tmp, "a") as f:  # obs, var, varp and the file-level encoding, around the X written above
        for key in ("obs", "var", "varp"):
            write_elem(f, key, getattr(rest, key) if key != "varp" else dict(rest.varp))
        for key in ("obsm", "obsp", "varm", "layers", "uns"):
            write_elem(f, key, {})
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
    tmp.rename(path)
    return path


# --- workers (one per subprocess) -----------------------------------------------------------------
def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def worker(args) -> dict:
    """Run one measurement in this process and return its figures."""
    import anndata as ad
    import scvi
    import torch

    import genohoption as gh

    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    backed = args.mode == "backed"
    t0 = time.perf_counter()
    adata = ad.read_h5ad(args.path, backed="r") if backed else ad.read_h5ad(args.path)
    open_s = time.perf_counter() - t0
    out = {"stage": args.stage, "mode": args.mode, "n_cells": adata.n_obs, "n_genes": adata.n_vars,
           "threads": torch.get_num_threads(), "load_start": load_start, "open_s": open_s,
           "rss_after_open_gib": _rss_gib()}
    if args.stage == "train":
        t = time.perf_counter()
        gh.GenoHoptionModel.setup_anndata(adata, labels_key=LABELS)
        model = gh.GenoHoptionModel(adata)
        out["setup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
        out["wall_s"] = time.perf_counter() - t
        out["cells_per_s"] = adata.n_obs / out["wall_s"]
        model.save(args.model_dir, overwrite=True)
    else:
        model = gh.GenoHoptionModel.load(args.model_dir)
        t = time.perf_counter()
        pred = model.predict(adata, batch_size=128)
        out["wall_s"] = time.perf_counter() - t
        out["cells_per_s"] = adata.n_obs / out["wall_s"]
        out["accuracy"] = float((pred.astype(str).to_numpy() == adata.obs[LABELS].astype(str).to_numpy()).mean())
    out["peak_rss_gib"] = _peak_gib()
    out["load_end"] = os.getloadavg()[0]
    return out


def run(path: Path, stage: str, mode: str, model_dir: Path, threads: int, timeout: int,
        mmap_threshold: int | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads)}
    if mmap_threshold:  # glibc: allocations above this size are mmapped and returned to the system when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    cmd = [sys.executable, __file__, "--worker", "--path", str(path), "--stage", stage, "--mode", mode,
           "--model-dir", str(model_dir), "--threads", str(threads)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} {mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


def table(rows: list[dict]) -> str:
    head = ("| stage | data | cells | genes | threads | wall s | cells/s | process s | peak RSS GiB | "
            "RSS after open GiB | load start / end |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['mode']} | {r['n_cells']:,} | {r['n_genes']:,} | {r['threads']} | "
            f"{r['wall_s']:.1f} | {r['cells_per_s']:.0f} | {r['process_s']:.1f} | {r['peak_rss_gib']:.2f} | "
            f"{r['rss_after_open_gib']:.2f} | {r['load_start']:.1f} / {r['load_end']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-cells", type=int, nargs="+", default=[200_000], help="cells of the predicted files")
    p.add_argument("--n-genes", type=int, default=2_000)
    p.add_argument("--n-types", type=int, default=5)
    p.add_argument("--train-cells", type=int, default=20_000, help="cells of the file the model is trained on")
    p.add_argument("--no-train", action="store_true",
                   help="reuse the model that an earlier run saved in --data-dir (no train rows)")
    p.add_argument("--modes", nargs="+", choices=("backed", "memory"), default=["backed", "memory"],
                   help="how predict reads each file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--timeout", type=int, default=6 * 3600)
    p.add_argument("--malloc-mmap-threshold", type=int, default=None,
                   help="set MALLOC_MMAP_THRESHOLD_ (bytes) in the measured processes, e.g. 65536")
    p.add_argument("--json", type=Path, default=None)
    # worker mode
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=("train", "predict"), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("backed", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="genohoption_backed_"))
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = []

    def measure(path: Path, stage: str, mode: str, model_dir: Path) -> None:
        r = run(path, stage, mode, model_dir, args.threads, args.timeout, args.malloc_mmap_threshold)
        r["file_gib"] = path.stat().st_size / 2**30
        rows.append(r)
        print(f"# {stage} {mode} {r['n_cells']}: {r['wall_s']:.1f} s, peak {r['peak_rss_gib']:.2f} GiB, "
              f"load {r['load_start']:.1f} / {r['load_end']:.1f}", flush=True)
        if args.json is not None:  # written as the rows come, for long runs
            args.json.write_text(json.dumps(rows, indent=1))

    def data(n: int) -> Path:
        t = time.perf_counter()
        path = write_h5ad(data_dir / f"synthetic_{n}x{args.n_genes}.h5ad", n, args.n_genes, args.n_types)
        print(f"# {path.name}: {path.stat().st_size / 2**30:.2f} GiB, ready in {time.perf_counter() - t:.0f} s",
              flush=True)
        return path

    try:
        model_dir = data_dir / f"model_{args.train_cells}"
        if not args.no_train:
            path = data(args.train_cells)
            measure(path, "train", "backed", data_dir / f"model_{args.train_cells}_backed")
            measure(path, "train", "memory", model_dir)  # the model that predicts
        elif not model_dir.exists():
            raise SystemExit(f"--no-train: no model in {model_dir}; run once without --no-train (and --data-dir).")
        for n in sorted(args.n_cells):
            path = data(n)
            for mode in args.modes:
                measure(path, "predict", mode, model_dir)
    finally:
        if not args.keep and args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
