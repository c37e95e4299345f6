"""Cell-type annotation: GenoHoption against a logistic regression, several seeds, one table per analysis.

Datasets (real, offline):

- ``pbmc68k``: scanpy's bundled pbmc68k_reduced (700 cells × 765 genes, ``bulk_labels``), the main job's
  split: lanes 1-6 reference (519 cells), lanes 7-8 query (181 cells); the same split for every seed
  (seeds change the initialisation, the validation cells and the minibatches).
- ``pbmc3k``: ../shared/data/annotation/pbmc3k_seurat_labels.h5ad (2,638 cells, Seurat labels, 9 types),
  stratified 70/30 split per seed, restricted to the 1,000 most variable genes of the reference
  (``sc.pp.highly_variable_genes``, Seurat flavour) so that 5 seeds of every configuration fit on 2 CPU
  cores; every expressed gene of a cell is a token.

For each dataset and seed the gene graph is built on the reference cells, and a scikit-learn logistic
regression (:func:`genohoption.tl.logistic_regression_baseline`) is fitted on the same expression in the
same run. Each GenoHoption run is its own process (``--jobs`` at a time).

Analyses (``--analyses``):

- ``table``: attentions × {from scratch, pretrained}: accuracy and macro F1 (mean ± sd over seeds), train
  seconds (pretraining included);
- ``fewshot`` (pbmc3k): 10 / 25 / 50 / 100 % of the reference (stratified), pretrained ppr vs from-scratch
  dense vs the logistic regression (paper Fig. 4a-b);
- ``ksweep`` (pbmc3k): ppr with K = 1, 2, 4, 6, 8 hops (paper Fig. 5c).

"Pretrained" means :meth:`GenoHoptionModel.pretrain` on the reference and query cells together
(transductive, no labels) before fine-tuning.

    python benchmarks/annotation.py [--datasets pbmc68k pbmc3k] [--seeds 0 1 2 3 4] [--jobs 2] [--threads 1]
        [--analyses table fewshot ksweep] [--fewshot-seeds 0 1 2 3 4] [--ksweep-seeds 0 1 2 3 4] [--json out.json]
        [--summarize out.json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATA = Path(os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ATTENTIONS = ("dense", "mask", "ppr", "heat")

# one run, in a fresh process: prints one JSON line
RUN = r"""
import json, logging, sys, time, warnings
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
warnings.filterwarnings("ignore")
for name in ("lightning", "lightning.pytorch", "scvi"):
    logging.getLogger(name).setLevel(logging.ERROR)
import anndata as ad
import scanpy as sc
import scvi
import genohoption as gh

def load(name, seed, fraction):
    if name == "pbmc68k":
        adata = gh.datasets.pbmc68k_reduced()
        key = "bulk_labels"
        in_ref = adata.obs["lane"].astype(str).isin(list("123456")).to_numpy()
        ref, query = adata[in_ref].copy(), adata[~in_ref].copy()
    else:
        adata = ad.read_h5ad(cfg["data"])
        key = "cell_type"
        ref, query = gh.tl.stratified_split(adata, key, test_size=0.3, seed=seed)
        hvg = sc.pp.highly_variable_genes(ref, n_top_genes=1000, flavor="seurat", inplace=False)["highly_variable"]
        genes = ref.var_names[hvg.to_numpy()]
        ref, query = ref[:, genes].copy(), query[:, genes].copy()
    if fraction < 1.0:
        ref, _ = gh.tl.stratified_split(ref, key, test_size=1.0 - fraction, seed=seed)
    return ref, query, key

ref, query, key = load(cfg["dataset"], cfg["seed"], cfg["fraction"])
scvi.settings.seed = cfg["seed"]
if cfg["kind"] == "logreg":
    start = time.perf_counter()
    gh.tl.logistic_regression_baseline(ref, query, key, key_added="pred")
    seconds = time.perf_counter() - start
    m = gh.tl.annotation_metrics(query, key, prediction_key="pred")
else:
    start = time.perf_counter()
    gh.pp.build_gene_graph(ref)
    gh.GenoHoptionModel.setup_anndata(ref, labels_key=key)
    model = gh.GenoHoptionModel(ref, attention=cfg["attention"], n_hops=cfg["n_hops"], **cfg["model"])
    if cfg["pretrain"]:
        cells = ad.concat([ref, query])
        cells.obs_names_make_unique()
        model.pretrain(cells, max_epochs=cfg["pretrain"], enable_progress_bar=False)
    model.train(enable_progress_bar=False, **cfg["train"])
    seconds = time.perf_counter() - start
    model.predict(query)
    m = gh.tl.annotation_metrics(query, key)
print(json.dumps({**cfg, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": seconds,
                  "n_reference": int(ref.n_obs), "n_query": int(query.n_obs), "n_vars": int(ref.n_vars)}))
"""

#: the model and training recipe of every GenoHoption run (see benchmarks/README.md, section annotation)
MODEL = {"cell_emb": "cls+expr"}
TRAIN = {"max_epochs": 15, "batch_size": 32, "train_size": 1.0, "plan_kwargs": {"class_weight": "balanced"}}


def _run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"run {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _configs(args) -> list[dict]:
    base = {"threads": args.threads, "data": str(DATA / "annotation" / "pbmc3k_seurat_labels.h5ad"),
            "fraction": 1.0, "attention": "ppr", "n_hops": 6, "pretrain": 0, "model": MODEL, "train": TRAIN}
    cfgs = []
    for seed in args.seeds:
        if "table" in args.analyses:
            for dataset in args.datasets:
                cfgs.append({**base, "analysis": "table", "dataset": dataset, "seed": seed, "kind": "logreg"})
                for attention in args.attentions:
                    for pretrain in (0, args.pretrain_epochs):
                        cfgs.append({**base, "analysis": "table", "dataset": dataset, "seed": seed, "kind": "model",
                                     "attention": attention, "pretrain": pretrain})
        if "fewshot" in args.analyses and seed in args.fewshot_seeds:
            for fraction in (0.1, 0.25, 0.5, 1.0):
                common = {**base, "analysis": "fewshot", "dataset": "pbmc3k", "seed": seed, "fraction": fraction}
                cfgs.append({**common, "kind": "logreg"})
                cfgs.append({**common, "kind": "model", "attention": "ppr", "pretrain": args.pretrain_epochs})
                cfgs.append({**common, "kind": "model", "attention": "dense"})
        if "ksweep" in args.analyses and seed in args.ksweep_seeds:
            for k in (1, 2, 4, 6, 8):
                cfgs.append({**base, "analysis": "ksweep", "dataset": "pbmc3k", "seed": seed, "kind": "model",
                             "n_hops": k})
    return cfgs


def _label(r: dict) -> str:
    if r["kind"] == "logreg":
        return "logistic regression"
    name = r["attention"] + (" (pretrained)" if r["pretrain"] else "")
    if r["analysis"] == "ksweep":
        name = f"ppr K={r['n_hops']}"
    return name


def _summary(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*(r[k] for k in keys), _label(r)), []).append(r)
    out = []
    for group, rs in groups.items():
        def stat(name, rs=rs):
            v = [r[name] for r in rs]
            return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0
        out.append({"group": group, "n": len(rs), "accuracy": stat("accuracy"), "macro_f1": stat("macro_f1"),
                    "seconds": statistics.mean(r["seconds"] for r in rs)})
    return out


def _print(title: str, summary: list[dict], head: tuple[str, ...]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(head) + " | accuracy | macro F1 | seconds | seeds |")
    print("|" + "---|" * (len(head) + 4))
    for s in summary:
        acc, f1 = s["accuracy"], s["macro_f1"]
        print("| " + " | ".join(str(g) for g in s["group"]) + f" | {acc[0]:.3f} ± {acc[1]:.3f} | "
              f"{f1[0]:.3f} ± {f1[1]:.3f} | {s['seconds']:.0f} | {s['n']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["pbmc68k", "pbmc3k"], choices=["pbmc68k", "pbmc3k"])
    parser.add_argument("--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    parser.add_argument("--analyses", nargs="+", default=["table", "fewshot", "ksweep"],
                        choices=["table", "fewshot", "ksweep"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--fewshot-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--ksweep-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--json", type=Path, help="write every run's row here")
    parser.add_argument("--summarize", type=Path, nargs="+",
                        help="print the tables of --json files written before (rows pooled); run nothing")
    args = parser.parse_args()
    if args.summarize:
        _tables([row for path in args.summarize for row in json.loads(path.read_text())])
        return
    cfgs = _configs(args)
    start = time.time()
    print(f"{len(cfgs)} runs, {args.jobs} at a time, {args.threads} thread(s) each; load {os.getloadavg()[0]:.1f}",
          flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = []
        for i, row in enumerate(pool.map(_run, cfgs)):
            rows.append(row)
            print(f"[{i + 1}/{len(cfgs)}] {row['analysis']} {row['dataset']} seed {row['seed']} {_label(row)} "
                  f"frac {row['fraction']}: accuracy {row['accuracy']:.3f} macro F1 {row['macro_f1']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print(f"\nwall {(time.time() - start) / 60:.0f} min; load at the end {os.getloadavg()[0]:.1f}")
    _tables(rows)


def _tables(rows: list[dict]) -> None:
    for analysis, keys, head in (("table", ("dataset",), ("data", "model")),
                                 ("fewshot", ("fraction",), ("reference fraction", "model")),
                                 ("ksweep", (), ("model",))):
        sel = [r for r in rows if r["analysis"] == analysis]
        if sel:
            _print(analysis, _summary(sel, keys), head)


if __name__ == "__main__":
    main()
