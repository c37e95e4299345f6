"""Batch-aware models on the Baron pancreas: integration (scib-metrics) and label transfer across donors and species.

Data: ../shared/data/annotation/baron2016_pancreas_cider.h5ad (328 cells, raw counts, 5 cell types in
``Group``, 6 batches in ``Sample``: human1-4, mouse1-2). Preprocessing (scanpy): ``normalize_total`` (1e4),
``log1p``, 1,000 highly variable genes (Seurat flavour, ``batch_key="Sample"``) chosen on the training cells
(all cells for integration; the training batches for label transfer); counts kept for scVI / scANVI.

Analyses (``--analyses``):

- ``integration``: embeddings of every cell by PCA (unintegrated), ComBat (``sc.pp.combat`` then PCA),
  Harmony (harmonypy on that PCA), scVI (``batch_key``), scANVI (``batch_key`` and labels: supervised), and
  GenoHoption: masked-expression pretraining without labels (``labels_key=None``) and annotation training
  with labels (supervised), each without and with ``batch_key`` (``batch_representation="token+dsbn"``, and
  with ``batch_adversarial=1``). All embeddings are scored in one scib-metrics ``Benchmarker`` (bio
  conservation with labels ``Group``, batch correction with batch ``Sample``; unscaled scores).
- ``transfer``: train on some batches, predict the others: ``donor`` (human1-3 → human4) and ``species``
  (human1-4 → mouse1-2): logistic regression on the log expression, logistic regression on expression
  standardised within each batch (the query's batches by their own statistics), scANVI with scArches query
  mapping, and GenoHoption annotation without and with ``batch_key``.

Every run is its own process (``--jobs`` at a time, ``--threads`` torch / BLAS threads each) writing one JSON
(and an embedding ``.npy``) to ``--out``; ``--assemble`` then scores the embeddings and prints the tables.
Stochastic methods run over ``--seeds`` (mean ± sd; paired differences with 95 % t intervals over seeds).

    python benchmarks/integration.py [--analyses integration transfer] [--seeds 0 1 2 3 4] [--jobs 2]
        [--threads 1] [--out benchmarks/results/integration]
    python benchmarks/integration.py --assemble [--out ...]
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
BARON = DATA / "annotation" / "baron2016_pancreas_cider.h5ad"
OUT = Path(__file__).resolve().parent / "results" / "integration"

SPLITS = {"donor": (["human1", "human2", "human3"], ["human4"]),
          "species": (["human1", "human2", "human3", "human4"], ["mouse1", "mouse2"])}
#: GenoHoption settings: the annotation recipe of benchmarks/annotation.py; pretraining 20 epochs
MODEL = {"cell_emb": "cls+expr"}
ANNOTATE = {"max_epochs": 15, "batch_size": 32, "train_size": 1.0, "plan_kwargs": {"class_weight": "balanced"}}
PRETRAIN = {"max_epochs": 20, "batch_size": 32, "train_size": 1.0}
#: GenoHoption variants: name -> (batch_key given, model keywords)
VARIANTS = {
    "none": (False, {}),
    "token+dsbn": (True, {"batch_representation": "token+dsbn"}),
    "token+dsbn+adv": (True, {"batch_representation": "token+dsbn", "batch_adversarial": 1.0}),
}

BATCH, LABELS = "Sample", "Group"


# ---------------------------------------------------------------- one run (in a fresh process: --run)
def _prepare(path: str, train_batches=None):
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(path)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    train = adata if train_batches is None else adata[adata.obs[BATCH].isin(train_batches)]
    hvg = sc.pp.highly_variable_genes(train, n_top_genes=1000, flavor="seurat", batch_key=BATCH, inplace=False)
    adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    for key in (BATCH, LABELS):
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    return adata


def _pca(X, n: int = 30):
    import numpy as np
    import scanpy as sc

    return sc.pp.pca(np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32), n_comps=n,
                     random_state=0)


def _scvi_model(adata):
    import scvi

    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=BATCH)
    model = scvi.model.SCVI(adata)
    model.train(enable_progress_bar=False)
    return model


def _scanvi_model(adata):
    import scvi

    scanvi = scvi.model.SCANVI.from_scvi_model(_scvi_model(adata), unlabeled_category="Unknown", labels_key=LABELS)
    scanvi.train(max_epochs=20, n_samples_per_label=100, enable_progress_bar=False)
    return scanvi


def _genohoption(cfg: dict, adata, labels_key):
    import genohoption as gh

    batch, kwargs = cfg["variants"][cfg["variant"]]
    gh.pp.build_gene_graph(adata)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key=labels_key, batch_key=BATCH if batch else None)
    model = gh.GenoHoptionModel(adata, **cfg["model"], **kwargs)
    model.train(enable_progress_bar=False, **(cfg["annotate"] if labels_key else cfg["pretrain"]))
    return model


def _within_batch_scaled(adata):
    import numpy as np

    out = adata.copy()
    X = np.asarray(out.X.toarray(), dtype=np.float64)
    for b in out.obs[BATCH].unique():
        rows = (out.obs[BATCH] == b).to_numpy()
        mu, sd = X[rows].mean(0), X[rows].std(0)
        X[rows] = (X[rows] - mu) / np.where(sd > 0, sd, 1.0)
    out.X = X
    return out


def _embed(cfg: dict, adata):
    import numpy as np
    import scanpy as sc

    method = cfg["method"]
    if method == "pca":
        return _pca(adata.X)
    if method == "combat":
        corrected = adata.copy()
        sc.pp.combat(corrected, key=BATCH)
        return _pca(corrected.X)
    if method == "harmony":
        import harmonypy

        ho = harmonypy.run_harmony(_pca(adata.X), adata.obs, [BATCH], random_state=cfg["seed"], verbose=False,
                                   ncores=cfg["threads"])
        emb = np.asarray(ho.Z_corr)
        return emb.T if emb.shape[0] != adata.n_obs else emb
    if method == "scvi":
        return _scvi_model(adata).get_latent_representation()
    if method == "scanvi":
        return _scanvi_model(adata).get_latent_representation()
    labels_key = LABELS if method == "genohoption-annotate" else None  # genohoption-pretrain: no labels
    return _genohoption(cfg, adata, labels_key).get_latent_representation(adata)


def _transfer(cfg: dict, adata, ref, query) -> None:
    """Write the predicted cell types of ``query`` (cells of ``adata``) to ``query.obs["pred"]``."""
    import scvi

    import genohoption as gh

    method = cfg["method"]
    if method == "logreg":
        gh.tl.logistic_regression_baseline(ref, query, LABELS, key_added="pred")
    elif method == "logreg-batch-scaled":
        scaled = _within_batch_scaled(adata)
        sref, squery = scaled[ref.obs_names].copy(), scaled[query.obs_names].copy()
        gh.tl.logistic_regression_baseline(sref, squery, LABELS, key_added="pred")
        query.obs["pred"] = squery.obs["pred"]
    elif method == "scanvi":
        model = _scanvi_model(ref)
        query.obs[LABELS + "_true"] = query.obs[LABELS]
        query.obs[LABELS] = "Unknown"
        q = scvi.model.SCANVI.load_query_data(query, model)
        q.train(max_epochs=100, plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
        query.obs["pred"] = q.predict()
        query.obs[LABELS] = query.obs.pop(LABELS + "_true")
    else:
        _genohoption(cfg, ref, LABELS).predict(query, key_added="pred")


def run_one(cfg: dict) -> dict:
    """One configuration: write its JSON row (and the embedding ``.npy``) to ``cfg["out"]``; return the row."""
    import logging
    import warnings

    import numpy as np
    import torch

    torch.set_num_threads(cfg["threads"])
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import scvi

    import genohoption as gh

    scvi.settings.seed = cfg["seed"]
    row = {k: cfg[k] for k in ("name", "analysis", "method", "seed", "variant", "split")}
    start = time.perf_counter()
    if cfg["analysis"] == "integration":
        adata = _prepare(cfg["data"])
        emb = _embed(cfg, adata)
        row["seconds"] = time.perf_counter() - start
        np.save(os.path.join(cfg["out"], cfg["name"] + ".npy"), np.asarray(emb, dtype=np.float32))
    else:
        train_batches, test_batches = cfg["splits"][cfg["split"]]
        adata = _prepare(cfg["data"], train_batches)
        ref = adata[adata.obs[BATCH].isin(train_batches)].copy()
        query = adata[adata.obs[BATCH].isin(test_batches)].copy()
        _transfer(cfg, adata, ref, query)
        row["seconds"] = time.perf_counter() - start
        m = gh.tl.annotation_metrics(query, LABELS, prediction_key="pred")
        row.update({"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n_reference": int(ref.n_obs),
                    "n_query": int(query.n_obs)})
    with open(os.path.join(cfg["out"], cfg["name"] + ".json"), "w") as f:
        json.dump(row, f)
    return row


def score(out: Path) -> None:
    """Score every embedding of the integration analysis in one scib-metrics Benchmarker (``out/scib_metrics.csv``)."""
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")
    from scib_metrics.benchmark import Benchmarker

    adata = _prepare(str(BARON))
    names = sorted(p.stem for p in out.glob("integration_*.npy"))
    for name in names:
        adata.obsm[name] = np.load(out / f"{name}.npy")
    adata.obsm["X_pca_unintegrated"] = _pca(adata.X)
    bm = Benchmarker(adata, batch_key=BATCH, label_key=LABELS, embedding_obsm_keys=names,
                     pre_integrated_embedding_obsm_key="X_pca_unintegrated", n_jobs=1, progress_bar=False)
    bm.benchmark()
    table = bm.get_results(min_max_scale=False, clean_names=False)
    table.drop(index="Metric Type", errors="ignore").astype(float).to_csv(out / "scib_metrics.csv")


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--run", json.dumps(cfg)], capture_output=True, text=True,
                         env=_env(cfg["threads"]))
    if out.returncode != 0:
        raise RuntimeError(f"run {cfg['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _configs(args) -> list[dict]:
    base = {"threads": args.threads, "data": str(BARON), "out": str(args.out), "splits": SPLITS,
            "variants": VARIANTS, "model": MODEL, "annotate": ANNOTATE, "pretrain": PRETRAIN, "variant": None,
            "split": None}
    cfgs = []
    for seed in args.seeds:
        if "integration" in args.analyses:
            methods = ["scvi", "scanvi", "harmony"] + (["pca", "combat"] if seed == args.seeds[0] else [])
            for method in methods:
                cfgs.append({**base, "analysis": "integration", "method": method, "seed": seed})
            for method in ("genohoption-pretrain", "genohoption-annotate"):
                for variant in args.variants:
                    cfgs.append({**base, "analysis": "integration", "method": method, "seed": seed,
                                 "variant": variant})
        if "transfer" in args.analyses:
            for split in SPLITS:
                methods = ["scanvi"] + (["logreg", "logreg-batch-scaled"] if seed == args.seeds[0] else [])
                for method in methods:
                    cfgs.append({**base, "analysis": "transfer", "method": method, "seed": seed, "split": split})
                for variant in args.variants:
                    cfgs.append({**base, "analysis": "transfer", "method": "genohoption", "seed": seed,
                                 "split": split, "variant": variant})
    for cfg in cfgs:
        parts = [cfg["analysis"], cfg["split"], cfg["method"], cfg["variant"], f"seed{cfg['seed']}"]
        cfg["name"] = "_".join(str(p) for p in parts if p is not None).replace("+", "-")
    return cfgs


# ---------------------------------------------------------------- tables
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _label(r: dict) -> str:
    if r["method"].startswith("genohoption"):
        kind = {"genohoption-pretrain": "GenoHoption pretrained", "genohoption-annotate": "GenoHoption annotation",
                "genohoption": "GenoHoption"}[r["method"]]
        variant = "no batch_key" if r["variant"] == "none" else f"batch_key, {r['variant']}"
        return f"{kind} ({variant})"
    return {"pca": "PCA (unintegrated)", "combat": "ComBat + PCA", "harmony": "Harmony", "scvi": "scVI",
            "scanvi": "scANVI (labels)", "logreg": "logistic regression",
            "logreg-batch-scaled": "logistic regression, per-batch standardised"}[r["method"]]


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _paired(a: dict[int, float], b: dict[int, float]) -> str:
    """Mean difference a - b over shared seeds (b deterministic: one value for all) with a 95 % t interval."""
    seeds = sorted(a) if len(b) == 1 else sorted(set(a) & set(b))
    d = [a[s] - (b[s] if len(b) > 1 else next(iter(b.values()))) for s in seeds]
    if len(d) < 2:
        return "n/a"
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = T95.get(len(d) - 1, 2.0) * sd / len(d) ** 0.5
    mark = "**" if mean - half > 0 or mean + half < 0 else ""
    return f"{mark}{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]{mark}"


def _integration_tables(out: Path) -> None:
    import pandas as pd

    scores = pd.read_csv(out / "scib_metrics.csv", index_col=0)
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("integration_*.json"))]
    by_label: dict[str, dict[int, dict]] = {}
    for r in rows:
        name = r["name"]
        if name not in scores.index:
            continue
        by_label.setdefault(_label(r), {})[r["seed"]] = {**scores.loc[name].to_dict(), "seconds": r["seconds"]}
    metrics = ["Bio conservation", "Batch correction", "Total"]
    detail = [c for c in scores.columns if c not in metrics]
    print("\n### Integration (scib-metrics, unscaled; mean ± sd over seeds)\n")
    print("| method | seeds | bio conservation | batch correction | total | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, per_seed in by_label.items():
        v = list(per_seed.values())
        print(f"| {label} | {len(v)} | " + " | ".join(_ms([x[m] for x in v]) for m in metrics)
              + f" | {statistics.mean(x['seconds'] for x in v):.0f} |")
    print("\n### Integration, every metric (mean over seeds)\n")
    print("| method | " + " | ".join(detail) + " |")
    print("|---|" + "---:|" * len(detail))
    for label, per_seed in by_label.items():
        v = list(per_seed.values())
        print(f"| {label} | " + " | ".join(f"{statistics.mean(x[m] for x in v):.3f}" for m in detail) + " |")
    print("\n### Integration, paired differences (95 % t interval over seeds; ** excludes 0)\n")
    print("| method | against | bio conservation | batch correction | total |")
    print("|---|---|---:|---:|---:|")
    for label, per_seed in by_label.items():
        if not label.startswith("GenoHoption") or "no batch_key" in label:
            continue
        own = label.split(" (")[0] + " (no batch_key)"
        for against in (own, "PCA (unintegrated)", "Harmony", "scVI"):
            if against not in by_label:
                continue
            cells = [_paired({s: x[m] for s, x in per_seed.items()}, {s: x[m] for s, x in by_label[against].items()})
                     for m in metrics]
            print(f"| {label} | {against} | " + " | ".join(cells) + " |")


def _transfer_tables(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("transfer_*.json"))]
    for split in SPLITS:
        sel: dict[str, dict[int, dict]] = {}
        for r in rows:
            if r["split"] == split:
                sel.setdefault(_label(r), {})[r["seed"]] = r
        if not sel:
            continue
        train, test = SPLITS[split]
        print(f"\n### Label transfer, {split}: train {', '.join(train)} → predict {', '.join(test)}\n")
        print("| method | seeds | accuracy | macro F1 | seconds |")
        print("|---|---:|---:|---:|---:|")
        for label, per_seed in sel.items():
            v = list(per_seed.values())
            print(f"| {label} | {len(v)} | {_ms([x['accuracy'] for x in v])} | {_ms([x['macro_f1'] for x in v])} | "
                  f"{statistics.mean(x['seconds'] for x in v):.0f} |")
        print(f"\nPaired differences ({split}; 95 % t interval over seeds; ** excludes 0)\n")
        print("| method | against | accuracy | macro F1 |")
        print("|---|---|---:|---:|")
        for label, per_seed in sel.items():
            if not label.startswith("GenoHoption") or "no batch_key" in label:
                continue
            for against in ("GenoHoption (no batch_key)", "logistic regression",
                            "logistic regression, per-batch standardised", "scANVI (labels)"):
                if against in sel:
                    cells = [_paired({s: x[m] for s, x in per_seed.items()}, {s: x[m] for s, x in sel[against].items()})
                             for m in ("accuracy", "macro_f1")]
                    print(f"| {label} | {against} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analyses", nargs="+", default=["integration", "transfer"],
                        choices=["integration", "transfer"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--out", type=Path, default=OUT, help="directory of the runs' JSON and embeddings")
    parser.add_argument("--assemble", action="store_true", help="score the embeddings and print the tables")
    parser.add_argument("--skip-existing", action="store_true", help="do not rerun configurations with a JSON")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one configuration (JSON), in the fresh process
    parser.add_argument("--score", action="store_true", help=argparse.SUPPRESS)  # scib-metrics, fresh process
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))))
        return
    if args.score:
        score(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    print(f"torch threads per run {args.threads}, jobs {args.jobs}; torch {torch.__version__}; "
          f"load {os.getloadavg()}", flush=True)
    if not args.assemble:
        cfgs = _configs(args)
        if args.skip_existing:
            cfgs = [c for c in cfgs if not (args.out / f"{c['name']}.json").exists()]
        start = time.time()
        print(f"{len(cfgs)} runs", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for i, row in enumerate(pool.map(_run, cfgs)):
                extra = (f"accuracy {row['accuracy']:.3f} macro F1 {row['macro_f1']:.3f} "
                         if "accuracy" in row else "")
                print(f"[{i + 1}/{len(cfgs)}] {cfgs[i]['name']}: {extra}({row['seconds']:.0f} s)", flush=True)
        print(f"wall {(time.time() - start) / 60:.0f} min; load at the end {os.getloadavg()}", flush=True)
        return
    if any(args.out.glob("integration_*.npy")):
        start = time.time()
        out = subprocess.run([sys.executable, __file__, "--score", "--out", str(args.out)], capture_output=True,
                             text=True, env=_env(args.threads))
        if out.returncode != 0:
            raise RuntimeError(f"scib-metrics failed:\n{out.stderr[-3000:]}")
        print(f"scib-metrics: {time.time() - start:.0f} s; load {os.getloadavg()}")
        _integration_tables(args.out)
    _transfer_tables(args.out)


if __name__ == "__main__":
    main()
