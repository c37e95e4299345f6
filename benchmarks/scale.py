"""End-to-end training throughput of the default model on PBMC 3k: dense vs ppr attention, short to whole cells.

Model: ``gh.GenoHoptionModel`` with its defaults (scGPT-style backbone, d_model 64, 4 heads, 2 layers,
feed-forward 128, K = 6 hops for ppr, classifier on CLS + expression), annotation of the Seurat labels of
10x PBMC 3k (``annotation/pbmc3k_seurat_labels.h5ad`` of the shared data: 2,638 cells x 13,714 genes,
log-normalised) with the real Seq2Graph gene graph (``gh.pp.build_gene_graph`` with the packaged prior, built
once and cached in ``benchmarks/results/``). Token lengths:

``512``        ``max_seq_len=512``: CLS + each cell's 511 genes (random subset in training);
``expressed``  ``max_seq_len=None``: every expressed gene (median 819, at most 2,413 per cell);
``all``        ``gene_tokens="all"``: all 13,714 genes of the panel, expressed or not (13,715 tokens).

Every (attention, length) runs in a fresh process with ``--threads`` torch threads: ``model.train`` for one
epoch over ``(steps + 1) * B`` cells drawn with a fixed seed (``train_size=1``, minibatches of ``B = 8``); the
first minibatch is a warm-up (numba compilation, allocator), throughput = cells of the other minibatches /
wall time between the end of the first and the end of the last (data loading, tokenization, graph induction,
forward, backward and optimiser step: end to end). Peak memory = the process's peak resident set size during
``train`` (``VmHWM``, reset just before), data and model included; ``train extra`` = peak minus the resident size
before ``train``.

Usage::

    python benchmarks/scale.py                     # the full table (dense at 13,714 tokens takes minutes a step)
    python benchmarks/scale.py --quick             # 512 tokens and all expressed genes, 2 steps
    python benchmarks/scale.py --lengths all --attentions ppr --steps 3 --json out.json
    python benchmarks/scale.py --ddp-accuracy --threads 1 --seeds 0 1 2   # main job: 1 vs 2 DDP processes

``--ddp-accuracy`` trains the main job of ``benchmarks/annotation.py`` (pbmc68k_reduced, lanes 1-6 reference,
lanes 7-8 query, default model with ``cell_emb="cls+expr"``, 15 epochs, 32 cells per step, balanced class
weights) once in one process and once on 2 CPU processes with ``strategy="ddp"`` (16 cells per process and
step, so the same 32 per step and the same number of steps), for each seed, and reports the query accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENOHOPTION_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED_DATA / "annotation" / "pbmc3k_seurat_labels.h5ad"
CACHE = ROOT / "benchmarks" / "results" / "scale_pbmc3k_graph.h5ad"
LABELS = "cell_type"
LENGTHS = ("512", "expressed", "all")
BATCH = 8


def prepare() -> Path:
    """PBMC 3k with its gene graph (co-expression over all cells + packaged prior), cached."""
    if CACHE.exists():
        return CACHE
    import anndata as ad

    import genohoption as gh

    if not DATA.exists():
        raise SystemExit(f"needs {DATA} (set GENOHOPTION_SHARED_DATA)")
    adata = ad.read_h5ad(DATA)
    gh.pp.build_gene_graph(adata)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(CACHE)
    return CACHE


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(attention: str, length: str, steps: int, threads: int, batch: int = BATCH) -> dict:
    import anndata as ad
    import numpy as np
    import scvi
    import torch
    from lightning.pytorch.callbacks import Callback

    import genohoption as gh
    from genohoption.data import tokenize

    torch.set_num_threads(threads)
    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    adata = ad.read_h5ad(CACHE)
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, size=(steps + 1) * batch, replace=False))
    adata = adata[cells].copy()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key=LABELS)
    kwargs = {"max_seq_len": 512} if length == "512" else {"gene_tokens": "all"} if length == "all" else {}
    model = gh.GenoHoptionModel(adata, attention=attention, **kwargs)

    class Clock(Callback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    clock = Clock()
    x0 = adata.X[:batch].toarray()
    with torch.no_grad():
        tok = tokenize(torch.as_tensor(x0), 512 if length == "512" else None, include_zero=length == "all")
    rss_before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    t0 = time.perf_counter()
    model.train(
        max_epochs=1,
        batch_size=batch,
        train_size=1.0,
        early_stopping=False,
        enable_progress_bar=False,
        callbacks=[clock],
        plan_kwargs={"class_weight": None},
    )
    total = time.perf_counter() - t0
    peak = _status("VmHWM")
    timed = clock.ends[-1] - clock.ends[0]
    n_timed = batch * (len(clock.ends) - 1)
    return {
        "attention": attention, "length": length, "B": batch, "steps_timed": len(clock.ends) - 1,
        "tokens_per_cell_first_batch": float(tok.lengths.float().mean()), "L_first_batch": int(tok.genes.shape[1]),
        "cells_per_s": n_timed / timed if timed > 0 else float("nan"), "s_per_step": timed / max(len(clock.ends) - 1, 1),
        "first_step_s": clock.ends[0] - t0, "train_wall_s": total, "peak_rss_gib": peak / 2**30,
        "rss_before_gib": rss_before / 2**30, "train_extra_gib": (peak - rss_before) / 2**30, "threads": threads,
        "load_avg_1min": os.getloadavg()[0],
    }  # fmt: skip


# --- DDP: the main job on 1 and 2 processes --------------------------------------------------------------

#: the main job's recipe (benchmarks/annotation.py): pbmc68k_reduced, lanes 1-6 reference, lanes 7-8 query
DDP_TRAIN = {"max_epochs": 15, "train_size": 1.0, "plan_kwargs": {"class_weight": "balanced"}}
DDP_BATCH = 32


def ddp_worker(seed: int, processes: int, threads: int) -> dict | None:
    """The main job with ``processes`` DDP processes (``DDP_BATCH / processes`` cells each per step); rank 0 reports."""
    import scvi
    import torch

    import genohoption as gh
    from genohoption.model._distributed import is_global_zero

    torch.set_num_threads(threads)
    adata = gh.datasets.pbmc68k_reduced()
    key = "bulk_labels"
    in_ref = adata.obs["lane"].astype(str).isin(list("123456")).to_numpy()
    ref, query = adata[in_ref].copy(), adata[~in_ref].copy()
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    gh.pp.build_gene_graph(ref)
    gh.GenoHoptionModel.setup_anndata(ref, labels_key=key)
    model = gh.GenoHoptionModel(ref, cell_emb="cls+expr")
    kwargs = {**DDP_TRAIN, "batch_size": DDP_BATCH // processes, "enable_progress_bar": False}
    if processes > 1:
        kwargs.update(accelerator="cpu", devices=processes, strategy="ddp")
    t0 = time.perf_counter()
    model.train(**kwargs)
    seconds = time.perf_counter() - t0
    if not is_global_zero():
        return None
    model.predict(query)
    m = gh.tl.annotation_metrics(query, key)
    return {"seed": seed, "processes": processes, "threads_per_process": threads, "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "train_s": seconds}  # fmt: skip


def ddp_accuracy(seeds: list[int], threads: int, timeout: int) -> list[dict]:
    """Run the main job with 1 and 2 processes for every seed (each in a fresh process tree)."""
    import statistics

    rows = []
    for seed in seeds:
        for processes in (1, 2):
            cmd = [
                sys.executable,
                __file__,
                "--ddp-worker",
                str(seed),
                str(processes),
                "--threads",
                str(threads),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"seed {seed}, {processes} process(es): accuracy {r['accuracy']:.4f}, macro F1 {r['macro_f1']:.4f}, "
                  f"train {r['train_s']:.0f} s", flush=True)  # fmt: skip
    for processes in (1, 2):
        acc = [r["accuracy"] for r in rows if r["processes"] == processes]
        f1 = [r["macro_f1"] for r in rows if r["processes"] == processes]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"{processes} process(es): accuracy {statistics.mean(acc):.4f} ± {sd(acc):.4f}, "
              f"macro F1 {statistics.mean(f1):.4f} ± {sd(f1):.4f} over {len(acc)} seeds")  # fmt: skip
    return rows


def run(attention: str, length: str, steps: int, threads: int, timeout: int, batch: int = BATCH) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        attention,
        length,
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--batch",
        str(batch),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"attention": attention, "length": length, "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"
        return {"attention": attention, "length": length, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="512 tokens and all expressed genes, 2 steps")
    p.add_argument("--attentions", default="dense,ppr")
    p.add_argument("--lengths", default=",".join(LENGTHS))
    p.add_argument(
        "--steps", type=int, default=None, help="timed minibatches per run (default 4; 2 for dense at 'all')"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=BATCH, help="cells per minibatch (default 8)")
    p.add_argument("--timeout", type=int, default=3 * 3600, help="seconds per run")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--ddp-accuracy",
        action="store_true",
        help="instead of the throughput table: the main job's accuracy with 1 and 2 DDP processes (CPU, gloo)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of --ddp-accuracy")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--ddp-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ddp_worker:
        r = ddp_worker(a.ddp_worker[0], a.ddp_worker[1], a.threads)
        if r is not None:
            print(json.dumps(r))
        return
    if a.ddp_accuracy:
        rows = ddp_accuracy(a.seeds, a.threads, a.timeout)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=2))
        return
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1], a.steps or 4, a.threads, a.batch)))
        return
    prepare()
    lengths = ["512", "expressed"] if a.quick else a.lengths.split(",")
    rows = []
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {a.threads} torch threads, B = {a.batch}"
    )
    print("| attention | tokens | L (1st batch) | cells/s | s / step | peak GiB | train extra GiB | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for length in lengths:
        for attention in a.attentions.split(","):
            steps = a.steps or (2 if a.quick else 1 if (attention == "dense" and length == "all") else 4)
            r = run(attention, length, steps, a.threads, a.timeout, a.batch)
            rows.append(r)
            if "error" in r:
                print(f"| {attention} | {length} | error: {r['error']} |", flush=True)
                continue
            print(
                f"| {attention} | {length} | {r['L_first_batch']} | {r['cells_per_s']:.3g} | {r['s_per_step']:.2f} | "
                f"{r['peak_rss_gib']:.2f} | {r['train_extra_gib']:.2f} | {r['load_avg_1min']:.1f} |",
                flush=True,
            )
    print()
    for length in lengths:
        d = next(
            (r for r in rows if r.get("length") == length and r["attention"] == "dense" and "error" not in r),
            None,
        )
        s = next(
            (r for r in rows if r.get("length") == length and r["attention"] == "ppr" and "error" not in r),
            None,
        )
        if d and s:
            print(f"{length}: ppr / dense throughput = {s['cells_per_s'] / d['cells_per_s']:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
