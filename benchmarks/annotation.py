"""Cell-type annotation: GenoHoption beside the tools users pick, several seeds, one table per analysis.

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

Analyses (``--analyses``; default ``peers loto``):

- ``peers``: GenoHoption (the main job's recipe, ``genohoption.cli._annotate.train_recipe``: dropout 0.2,
  20 epochs, 10 % of the reference held out for calibration, weights averaged over the second half of
  the epochs; ``--ensemble 3`` models from different random starts, probabilities averaged, as
  ``genohoption annotate``; ``--ensemble 1``: one model, a row of its own), scANVI
  (scvi-tools, from counts: pbmc68k's are ``rint(expm1(X) * n_counts / 1e4)``, PBMC 3k's the same with
  ``nCount_RNA``; SCVI with scvi-tools' defaults, then SCANVI 20 epochs with 100 cells per label, as
  scvi-tools' tutorial), CellTypist (its own training on the reference, ``celltypist.train``, without
  feature selection; ``annotate`` with and without majority voting) and the logistic regression, trained on
  the same reference cells and scored on the same query; seconds = training + prediction. Stochastic
  methods (GenoHoption, scANVI) run every seed; the others once per split (pbmc68k: once).
- ``loto`` (pbmc3k, split of seed 0): each type with at least 30 cells is removed from the reference in
  turn (the 1,000 genes are then chosen without it); the query keeps it. AUROC of each method's
  uncertainty (``1 -`` its largest class probability) for unseen vs seen query cells, and accuracy / macro
  F1 with "Unknown" the right answer for unseen cells. "Unknown": GenoHoption, scANVI and the logistic
  regression call a cell Unknown above the uncertainty threshold that calls at most 5 % of held-out
  reference cells Unknown (``gh.tl.unknown_threshold``; GenoHoption's and scANVI's held-out cells are
  those their training kept out, the logistic regression's a stratified 10 % of a second fit); CellTypist
  by its own rule (no type with probability >= 0.5, "Unassigned").
- ``table``: attentions × {from scratch, pretrained}: accuracy and macro F1 (mean ± sd over seeds), train
  seconds (pretraining included);
- ``fewshot`` (pbmc3k): 10 / 25 / 50 / 100 % of the reference (stratified), pretrained ppr vs from-scratch
  dense vs the logistic regression (paper Fig. 4a-b);
- ``ksweep`` (pbmc3k): ppr with K = 1, 2, 4, 6, 8 hops (paper Fig. 5c).

"Pretrained" means :meth:`GenoHoptionModel.pretrain` on the reference and query cells together
(transductive, no labels) before fine-tuning.

    python benchmarks/annotation.py [--datasets pbmc68k pbmc3k] [--seeds 0 1 2 3 4] [--jobs 2] [--threads 1]
        [--analyses peers loto table fewshot ksweep] [--methods ...] [--loto-seeds 0] [--fewshot-seeds 0 1 2 3 4]
        [--ksweep-seeds 0 1 2 3 4] [--json benchmarks/results/out.json] [--summarize out.json ...]

The peers need the benchmark extra: ``pip install -e '.[benchmark]'`` (scvi-tools is a dependency already).
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

from genohoption.cli._annotate import ENSEMBLE_MEMBERS

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


# ---------------------------------------------------------------------------- peers and leave-one-type-out
# one method on one split, in a fresh process: prints one JSON line
RUN_PEER = r"""
import json, logging, os, sys, time, warnings
from genohoption.cli._common import yielding_thread_pools
yielding_thread_pools()  # idle OpenMP threads sleep (as the command line): runs share the cores
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
warnings.filterwarnings("ignore")
for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "celltypist"):
    logging.getLogger(name).setLevel(logging.ERROR)
import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scvi
from sklearn.metrics import roc_auc_score
import genohoption as gh
from genohoption.tl._calibration import unknown_threshold

UNKNOWN = "Unknown"
RATE = cfg["false_unknown_rate"]
load_start = os.getloadavg()[0]


def counts_of(adata, totals):
    # counts from log1p(CP10k) and the cells' total counts
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    out = adata.copy()
    out.X = sp.csr_matrix(np.rint(np.expm1(X) * np.asarray(totals, dtype=np.float64)[:, None] / 1e4))
    return out


def load():
    if cfg["dataset"] == "pbmc68k":
        adata = gh.datasets.pbmc68k_reduced()
        key, totals = "bulk_labels", "n_counts"
        in_ref = adata.obs["lane"].astype(str).isin(list("123456")).to_numpy()
        ref, query = adata[in_ref].copy(), adata[~in_ref].copy()
    else:
        adata = ad.read_h5ad(cfg["data"])
        key, totals = "cell_type", "nCount_RNA"
        ref, query = gh.tl.stratified_split(adata, key, test_size=0.3, seed=cfg["split_seed"])
        if cfg["heldout"] is not None:  # the type the reference lacks; the query keeps it
            ref = ref[ref.obs[key].astype(str) != cfg["heldout"]].copy()
            ref.obs[key] = ref.obs[key].astype(str).astype("category")
        hvg = sc.pp.highly_variable_genes(ref, n_top_genes=1000, flavor="seurat", inplace=False)["highly_variable"]
        genes = ref.var_names[hvg.to_numpy()]
        ref, query = ref[:, genes].copy(), query[:, genes].copy()
    return ref, query, key, totals


ref, query, key, totals = load()
scvi.settings.seed = cfg["seed"]
truth = query.obs[key].astype(str).to_numpy()
known = set(ref.obs[key].astype(str))
start = time.perf_counter()
extra = {}
method = cfg["method"]
if method == "genohoption":
    from genohoption.cli._annotate import DROPOUT, train_recipe

    gh.pp.build_gene_graph(ref)
    gh.GenoHoptionModel.setup_anndata(ref, labels_key=key)
    if cfg.get("ensemble", 1) == 1:  # as the command line: one model, or an ensemble of several
        model = gh.GenoHoptionModel(ref, attention=cfg["attention"], dropout=DROPOUT)
    else:
        model = gh.model.GenoHoptionEnsemble(ref, n_members=cfg["ensemble"], seed=cfg["seed"],
                                             attention=cfg["attention"], dropout=DROPOUT)
    cal = train_recipe(model, max_epochs=cfg["max_epochs"], batch_size=32, false_unknown_rate=RATE,
                       enable_progress_bar=False)
    model.predict(query)
    pred = query.obs["genohoption_prediction"].astype(str).to_numpy()
    uncertainty = query.obs["genohoption_uncertainty"].to_numpy()
    threshold = cal["threshold"]
    extra = {"temperature": cal["temperature"], "ece_before": cal["ece_before"], "ece_after": cal["ece_after"],
             "n_calibration": cal["n_cells"], "ensemble": cfg.get("ensemble", 1)}
    cfg["method"] = "genohoption" if cfg.get("ensemble", 1) == 1 else "genohoption_ensemble"  # as ours()
elif method == "logreg":
    gh.tl.logistic_regression_baseline(ref, query, key, random_state=cfg["seed"])
    pred = query.obs["logreg_prediction"].astype(str).to_numpy()
    uncertainty = 1 - query.obs["logreg_confidence"].to_numpy()
    # threshold: the same rule on held-out reference cells (a stratified 10 % kept out of a second fit)
    fit, held = gh.tl.stratified_split(ref, key, test_size=0.1, seed=cfg["seed"])
    gh.tl.logistic_regression_baseline(fit, held, key, random_state=cfg["seed"])
    threshold = unknown_threshold(1 - held.obs["logreg_confidence"].to_numpy(), false_unknown_rate=RATE)
elif method == "scanvi":
    ref_c, query_c = counts_of(ref, ref.obs[totals]), counts_of(query, query.obs[totals])
    query_c.obs[key] = UNKNOWN  # unlabelled: scANVI's unlabeled_category
    scvi.model.SCVI.setup_anndata(ref_c, labels_key=key)
    vae = scvi.model.SCVI(ref_c)  # scvi-tools' defaults (n_latent 10, 1 layer, ZINB)
    vae.train(enable_progress_bar=False)  # default epochs (at most 400), 90 % train / 10 % validation
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNKNOWN, labels_key=key)
    lvae.train(max_epochs=20, n_samples_per_label=100, enable_progress_bar=False)  # scvi-tools' tutorial
    soft = lvae.predict(query_c, soft=True)
    pred = soft.columns.to_numpy()[soft.to_numpy().argmax(1)].astype(str)
    uncertainty = 1 - soft.to_numpy().max(1)
    held = ref_c[np.sort(lvae.validation_indices)].copy()  # cells scANVI's classifier did not train on
    threshold = unknown_threshold(1 - lvae.predict(held, soft=True).to_numpy().max(1), false_unknown_rate=RATE)
    extra = {"scvi_epochs": len(vae.history["elbo_train"]), "n_calibration": held.n_obs}
elif method in ("celltypist", "celltypist_mv"):
    import celltypist

    ct = celltypist.train(ref, labels=key, check_expression=False, n_jobs=1, feature_selection=False)
    mv = method == "celltypist_mv"
    out = celltypist.annotate(query, model=ct, majority_voting=mv, mode="best match")
    col = "majority_voting" if mv else "predicted_labels"
    pred = out.predicted_labels[col].astype(str).to_numpy()
    probs = out.probability_matrix.to_numpy()
    uncertainty = 1 - probs.max(1)
    # CellTypist's own rule for cells it cannot assign: no type with probability >= p_thres (0.5)
    assigned = celltypist.annotate(query, model=ct, majority_voting=mv, mode="prob match", p_thres=0.5)
    unassigned = assigned.predicted_labels[col].astype(str).to_numpy() == "Unassigned"
    threshold = None
else:
    raise ValueError(method)
seconds = time.perf_counter() - start

forced = pd.DataFrame({"truth": truth, "pred": pred}, index=query.obs_names)
m = gh.tl.annotation_metrics(ad.AnnData(obs=forced), "truth", prediction_key="pred")
if threshold is not None:
    unassigned = uncertainty > threshold
with_unknown = np.where(unassigned, UNKNOWN, pred)
row = {**cfg, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": seconds,
       "threshold": threshold, "n_unknown": int(unassigned.sum()), "n_query": int(query.n_obs),
       "n_reference": int(ref.n_obs), "n_vars": int(ref.n_vars), "load_start": load_start,
       "load_end": os.getloadavg()[0], **extra}
seen = np.isin(truth, list(known))
row["fraction_unknown_seen"] = float(unassigned[seen].mean())
if not seen.all():  # leave-one-type-out: the unseen cells' right answer is Unknown
    row["auroc"] = float(roc_auc_score(~seen, uncertainty))
    scored = pd.DataFrame({"truth": np.where(seen, truth, UNKNOWN), "pred": with_unknown}, index=query.obs_names)
    mu = gh.tl.annotation_metrics(ad.AnnData(obs=scored), "truth", prediction_key="pred")
    row.update(accuracy_unknown=mu["accuracy"], macro_f1_unknown=mu["macro_f1"], n_unseen=int((~seen).sum()),
               fraction_unknown_unseen=float(unassigned[~seen].mean()))
print(json.dumps(row))
"""

PEERS = ("genohoption", "logreg", "scanvi", "celltypist", "celltypist_mv")
STOCHASTIC = ("genohoption", "genohoption_ensemble", "scanvi")
"""Methods whose result depends on the seed; the others run once per split (pbmc68k: once)."""
LOTO_MIN_CELLS = 30
PBMC3K_TYPES = ("Naive CD4 T", "Memory CD4 T", "CD14+ Mono", "B", "CD8 T", "FCGR3A+ Mono", "NK", "DC")
"""PBMC 3k cell types with at least 30 cells (Platelet, 14 cells, is never held out)."""


def _peer_configs(args) -> list[dict]:
    base = {"threads": args.threads, "data": str(DATA / "annotation" / "pbmc3k_seurat_labels.h5ad"),
            "attention": args.attention, "max_epochs": args.max_epochs, "false_unknown_rate": args.false_unknown_rate,
            "heldout": None, "ensemble": args.ensemble}
    cfgs = []
    if "peers" in args.analyses:
        for seed in args.seeds:
            for dataset in args.datasets:
                for method in args.methods:
                    if dataset == "pbmc68k" and method not in STOCHASTIC and seed != 0:
                        continue  # the pbmc68k split is fixed: a deterministic method gives one figure
                    cfgs.append({**base, "analysis": "peers", "dataset": dataset, "seed": seed, "split_seed": seed,
                                 "method": method})
    if "loto" in args.analyses:
        for seed in args.loto_seeds:
            for heldout in args.loto_types:
                for method in args.methods:
                    if method not in STOCHASTIC and seed != 0:
                        continue
                    cfgs.append({**base, "analysis": "loto", "dataset": "pbmc3k", "seed": seed, "split_seed": 0,
                                 "method": method, "heldout": heldout})
    return cfgs


def _run_peer(cfg: dict) -> dict | None:
    out = subprocess.run([sys.executable, "-c", RUN_PEER, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:  # reported, and left out of the tables
        print(f"run {cfg} failed:\n{out.stderr[-3000:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(cfg: dict) -> str:
    """Method name of a GenoHoption run's row: ``genohoption`` (one model) or ``genohoption_ensemble``."""
    return "genohoption" if cfg.get("ensemble", 1) == 1 else "genohoption_ensemble"


def _reference_method(rows: list[dict]) -> str:
    """GenoHoption's row the others are paired with: the ensemble where it ran, else the one model."""
    return "genohoption_ensemble" if any(r["method"] == "genohoption_ensemble" for r in rows) else "genohoption"


METHOD_NAMES = {"genohoption": "GenoHoption (one model)", "genohoption_ensemble": "GenoHoption", "logreg": "logistic regression", "scanvi": "scANVI",
                "celltypist": "CellTypist", "celltypist_mv": "CellTypist (majority voting)"}


def _ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _paired(diffs: list[float]) -> str:
    """Mean paired difference with its 95 % t-interval."""
    from scipy import stats

    if len(diffs) < 2:
        return f"{diffs[0]:+.3f}" if diffs else "–"
    mean, sem = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
    half = stats.t.ppf(0.975, len(diffs) - 1) * sem
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def _peer_tables(rows: list[dict]) -> None:
    peers = [r for r in rows if r["analysis"] == "peers"]
    if peers:
        print("\n### peers\n")
        print("| data | method | accuracy | macro F1 | macro F1 − GenoHoption's (paired, 95 % CI) | query cells "
              "Unknown | seconds | runs |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for dataset in dict.fromkeys(r["dataset"] for r in peers):
            sel = [r for r in peers if r["dataset"] == dataset]
            ref_method = _reference_method(sel)
            ours = {r["seed"]: r["macro_f1"] for r in sel if r["method"] == ref_method}
            for method in dict.fromkeys(r["method"] for r in sel):
                rs = [r for r in sel if r["method"] == method]
                by_seed = {r["seed"]: r["macro_f1"] for r in rs}
                if method == ref_method:
                    diff = ""
                else:  # a method run once on a fixed split is paired with every seed of ours
                    diff = _paired([by_seed.get(s, by_seed.get(0)) - f for s, f in ours.items()
                                    if s in by_seed or len(by_seed) == 1])
                print(f"| {dataset} | {METHOD_NAMES[method]} | {_ms(r['accuracy'] for r in rs)} | "
                      f"{_ms(r['macro_f1'] for r in rs)} | {diff} | {_ms(r['fraction_unknown_seen'] for r in rs)} | "
                      f"{statistics.mean(r['seconds'] for r in rs):.0f} | {len(rs)} |")
    loto = [r for r in rows if r["analysis"] == "loto"]
    if loto:
        print("\n### leave-one-type-out (pbmc3k)\n")
        print("| method | AUROC unseen vs seen | AUROC − GenoHoption's (paired) | accuracy with Unknown | "
              "macro F1 with Unknown | macro F1 with Unknown − GenoHoption's (paired) | unseen cells Unknown | "
              "seen cells Unknown | runs |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        ref_method = _reference_method(loto)
        ours = {(r["heldout"], r["seed"]): r for r in loto if r["method"] == ref_method}
        for method in dict.fromkeys(r["method"] for r in loto):
            rs = [r for r in loto if r["method"] == method]
            pairs = [(r, o) for (h, s), o in ours.items() for r in rs
                     if r["heldout"] == h and (r["seed"] == s or r["method"] not in STOCHASTIC)]
            diff_auc = "" if method == ref_method else _paired([r["auroc"] - o["auroc"] for r, o in pairs])
            diff_f1 = "" if method == ref_method else _paired(
                [r["macro_f1_unknown"] - o["macro_f1_unknown"] for r, o in pairs])
            print(f"| {METHOD_NAMES[method]} | {_ms(r['auroc'] for r in rs)} | {diff_auc} | "
                  f"{_ms(r['accuracy_unknown'] for r in rs)} | {_ms(r['macro_f1_unknown'] for r in rs)} | {diff_f1} | "
                  f"{_ms(r['fraction_unknown_unseen'] for r in rs)} | {_ms(r['fraction_unknown_seen'] for r in rs)} | "
                  f"{len(rs)} |")
        print("\nAUROC per held-out type:\n")
        types = list(dict.fromkeys(r["heldout"] for r in loto))
        print("| method | " + " | ".join(f"{t} ({next(r['n_unseen'] for r in loto if r['heldout'] == t)})"
                                         for t in types) + " |")
        print("|---|" + "---:|" * len(types))
        for method in dict.fromkeys(r["method"] for r in loto):
            cells = [_ms(r["auroc"] for r in loto if r["method"] == method and r["heldout"] == t) for t in types]
            print(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    cal = [r for r in rows if r["method"] in ("genohoption", "genohoption_ensemble") and "ece_after" in r]
    if cal:
        print("\n### GenoHoption calibration on the held-out reference cells\n")
        print("| analysis | data | method | temperature | ECE before | ECE after (in-sample) | held-out cells | runs |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for group in dict.fromkeys((r["analysis"], r["dataset"], r["method"]) for r in cal):
            rs = [r for r in cal if (r["analysis"], r["dataset"], r["method"]) == group]
            print(f"| {group[0]} | {group[1]} | {METHOD_NAMES[group[2]]} | {_ms(r['temperature'] for r in rs)} | "
                  f"{_ms(r['ece_before'] for r in rs)} | "
                  f"{_ms(r['ece_after'] for r in rs)} | {statistics.mean(r['n_calibration'] for r in rs):.0f} | {len(rs)} |")
    if rows:
        print(f"\nload average (1 min) at the runs' starts {min(r['load_start'] for r in rows):.1f}–"
              f"{max(r['load_start'] for r in rows):.1f}; threads per run {sorted({r['threads'] for r in rows})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["pbmc68k", "pbmc3k"], choices=["pbmc68k", "pbmc3k"])
    parser.add_argument("--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    parser.add_argument("--analyses", nargs="+", default=["peers", "loto"],
                        choices=["peers", "loto", "table", "fewshot", "ksweep"])
    parser.add_argument("--methods", nargs="+", default=list(PEERS), choices=PEERS, help="peers and loto")
    parser.add_argument("--attention", default="ppr", choices=ATTENTIONS, help="GenoHoption in peers and loto")
    parser.add_argument("--max-epochs", type=int, default=20, help="GenoHoption in peers and loto")
    parser.add_argument("--ensemble", type=int, default=ENSEMBLE_MEMBERS,
                        help="GenoHoption in peers and loto: models averaged (1: one model)")
    parser.add_argument("--false-unknown-rate", type=float, default=0.05)
    parser.add_argument("--loto-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--loto-types", nargs="+", default=list(PBMC3K_TYPES), choices=PBMC3K_TYPES,
                        help="types left out in turn (default: every type with >= 30 cells)")
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
    if args.summarize:  # a run repeated in another file (same analysis, data, split, seed, method) counts once
        rows = {}
        for row in (row for path in args.summarize for row in json.loads(path.read_text())):
            key = tuple(str(row.get(k)) for k in ("analysis", "dataset", "fraction", "split_seed", "seed", "kind",
                                                  "attention", "n_hops", "pretrain", "method", "heldout"))
            rows.setdefault(key, row)
        _tables(list(rows.values()))
        return
    cfgs = _peer_configs(args) + _configs(args)
    start = time.time()
    print(f"{len(cfgs)} runs, {args.jobs} at a time, {args.threads} thread(s) each; load {os.getloadavg()[0]:.1f}",
          flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = []
        for i, row in enumerate(pool.map(lambda c: _run_peer(c) if c["analysis"] in ("peers", "loto") else _run(c),
                                         cfgs)):
            if row is None:
                continue
            rows.append(row)
            what = (f"{row['method']}" + (f" without {row['heldout']}" if row["heldout"] else "")
                    if "method" in row else f"{_label(row)} frac {row['fraction']}")
            print(f"[{i + 1}/{len(cfgs)}] {row['analysis']} {row['dataset']} seed {row['seed']} {what}: accuracy "
                  f"{row['accuracy']:.3f} macro F1 {row['macro_f1']:.3f} ({row['seconds']:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print(f"\nwall {(time.time() - start) / 60:.0f} min; load at the end {os.getloadavg()[0]:.1f}")
    _tables(rows)


def _tables(rows: list[dict]) -> None:
    _peer_tables(rows)
    for analysis, keys, head in (("table", ("dataset",), ("data", "model")),
                                 ("fewshot", ("fraction",), ("reference fraction", "model")),
                                 ("ksweep", (), ("model",))):
        sel = [r for r in rows if r["analysis"] == analysis]
        if sel:
            _print(analysis, _summary(sel, keys), head)


if __name__ == "__main__":
    main()
