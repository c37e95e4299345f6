"""Perturbation prediction on real CRISPR screens: GenoHoption (ppr, heat, mask, dense) against four baselines.

Usage::

    python benchmarks/perturbation.py --threads 1            # the table of benchmarks/README.md (~1 h, 1 core)
    python benchmarks/perturbation.py --quick --threads 1    # 1 seed, Papalexi only, few epochs
    python benchmarks/perturbation.py --json results.json    # also write every per-condition figure

Data (``../shared/data/perturbation``, see its README; ``GENOHOPTION_SHARED_DATA`` overrides the path):

- Papalexi et al. 2021 (THP-1, CRISPR knock-out, 299 genes, 25 targets of which 9 measured): GEARS'
  simulation split over the targets (``gh.tl.perturbation_split``, 75 % of the targets seen), seeds 1, 2, 3;
- McFaline-Figueroa et al. 2023 (glioblastoma lines, CRISPRi, 500 genes, 9 targets, none measured): one run
  per cell line (A172, T98G, U87MG), each split the same way with seed 1, its own control cells.

Each run builds the gene graph on its training cells (co-expression + the packaged OmniPath prior), sets up
the training cells with every target of the screen in the gene universe (``extra_genes``), trains one small
model per attention (``d_model=32``, 2 layers, 2 heads, at most ``--epochs`` epochs, early stopping on
10 % of the training cells) on at most ``--max-cells`` cells per training perturbation and ``--max-control``
control cells, and predicts every test condition from those training control cells. The four baselines
(``gh.tl.fit_perturbation_baselines``) are fitted on the same training cells and predict from the same
control cells. Metrics (``gh.tl.perturbation_metrics``, all cells of the run observed; Systema's reference =
the centroid of the training perturbations' centroids in the training cells, so the mean baseline scores 0
on it; centroid-accuracy candidates = the test conditions) are averaged over the test conditions whose
targets are measured, over those whose targets are not, and (Systema's two) over all test conditions, then
mean ± sd over runs (sd with ddof 0). Runs with fewer than 2,000 training cells (the McFaline lines) train with
batch 32 and twice the epochs, for a comparable number of optimisation steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAPALEXI = "perturbation/papalexi2021_thp1_gears.h5ad"
MCFALINE = "perturbation/mcfaline2023_gbm_perturbench_subset_gears.h5ad"
ATTENTIONS = ["ppr", "heat", "mask", "dense"]
SMALL_RUN = 2000
"""Runs with fewer training cells (the McFaline lines, ~600) train with batch 32 and twice the epochs."""
BASELINES = ["no_change", "mean", "additive", "linear"]
METRICS = ["pearson_delta", "pearson_delta_de", "mse_de", "pearson_delta_pert", "pearson_delta_pert_de",
           "centroid_accuracy", "l2_top_expressed"]
TARGET_METRICS = ["pearson_delta_pert_de", "centroid_accuracy"]
"""Also reported over all test conditions (the issue's targets)."""
SHORT = {"pearson_delta": "pΔ", "pearson_delta_de": "pΔ DE20", "mse_de": "MSE DE20", "pearson_delta_pert": "pΔpert",
         "pearson_delta_pert_de": "pΔpert DE20", "centroid_accuracy": "centroid acc", "l2_top_expressed": "L2 top1000"}
log = logging.getLogger("benchmark")


def run(adata, seed: int, epochs: int, max_cells: int, max_control: int, attentions: list[str]
        ) -> dict[str, pd.DataFrame]:
    """One split of one screen: per-condition metrics of every method (with a ``target`` column), train seconds."""
    import scvi
    import torch

    import genohoption as gh
    from genohoption._conditions import parse_condition

    adata = adata.copy()
    groups = gh.tl.perturbation_split(adata, seed=seed)
    values = adata.obs["condition"].astype(str)
    test = sorted(c for g in groups.values() for c in g)
    rng = np.random.default_rng(seed)
    train_mask = np.zeros(adata.n_obs, dtype=bool)
    seen = (adata.obs["split"] != "test").to_numpy()
    for c in sorted(set(values[seen])):
        rows = np.flatnonzero(seen & (values == c).to_numpy())
        cap = max_control if c == "ctrl" else max_cells
        train_mask[rng.choice(rows, min(rows.size, cap), replace=False)] = True
    train = adata[train_mask].copy()
    gh.pp.build_gene_graph(train, gene_symbols="gene_name", allow_empty_prior=True)
    targets = sorted({g for c in set(values) for g in parse_condition(c)})
    ctrl = train[(train.obs["condition"] == "ctrl").to_numpy()].copy()  # inputs: the training control cells
    train_values = train.obs["condition"].astype(str).to_numpy()
    X = train.X
    reference = np.mean([np.asarray(X[train_values == c].mean(0)).ravel()
                         for c in sorted(set(train_values) - {"ctrl"})], axis=0)  # Systema: training centroid
    measured = set(adata.var["gene_name"].astype(str))
    kind = {c: "measured" if all(g in measured for g in parse_condition(c)) else "unmeasured" for c in test}
    de = gh.tl.top_de_genes(adata, conditions=test)
    profiles, seconds = {}, {}
    for name, baseline in gh.tl.fit_perturbation_baselines(train, gene_symbols="gene_name").items():
        profiles[name] = baseline.predict_perturbation(ctrl, test)
    small = train.n_obs < SMALL_RUN  # McFaline lines: more, smaller steps
    batch_size, max_epochs = (32, 2 * epochs) if small else (64, epochs)
    for attention in attentions:
        data = train.copy()
        gh.GenoHoptionModel.setup_anndata(data, perturbation_key="condition", gene_symbols="gene_name",
                                          extra_genes=targets)
        scvi.settings.seed = seed
        torch.manual_seed(seed)
        model = gh.GenoHoptionModel(data, attention=attention, d_model=32, n_heads=2, n_layers=2, d_hid=64)
        t0 = time.perf_counter()
        model.train(max_epochs=max_epochs, batch_size=batch_size, lr=1e-3, early_stopping_patience=3,
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        seconds[attention] = time.perf_counter() - t0
        profiles[attention] = model.predict_perturbation(ctrl, test, batch_size=256)
        log.info("  seed %d %-5s %3d epochs %6.0f s", seed, attention, len(model.history_["train_loss"]),
                 seconds[attention])
    out = {}
    for name, prof in profiles.items():
        table = gh.tl.perturbation_metrics(adata, prof, de_genes=de, perturbed_reference=reference)
        table["target"] = [kind[c] for c in table.index]
        table.attrs["train_seconds"] = seconds.get(name, 0.0)
        out[name] = table
    return out


def screens(quick: bool, seeds: list[int]):
    """(dataset label, AnnData, seed) of every run."""
    import genohoption as gh

    papalexi = gh.datasets.read_gears(SHARED / PAPALEXI)
    for seed in seeds:
        yield f"Papalexi seed {seed}", papalexi, seed
    if quick:
        return
    mcfaline = gh.datasets.read_gears(SHARED / MCFALINE)
    for line in sorted(set(mcfaline.obs["cell_type"].astype(str))):
        yield f"McFaline {line} seed 1", mcfaline[(mcfaline.obs["cell_type"] == line).to_numpy()].copy(), 1


def summarise(results: list[tuple[str, dict[str, pd.DataFrame]]]) -> pd.DataFrame:
    """Mean ± sd over runs of the per-run means, by dataset (McFaline lines pooled), method and target kind."""
    rows = []
    for label, per_method in results:
        dataset = label.split()[0]
        for method, table in per_method.items():
            for kind in ("measured", "unmeasured", "all"):
                sub = table if kind == "all" else table[table["target"] == kind]
                if len(sub):
                    rows.append({"dataset": dataset, "method": method, "target": kind, "run": label,
                                 "n_conditions": len(sub), "train_seconds": table.attrs["train_seconds"],
                                 **sub[METRICS].mean().to_dict()})
    return pd.DataFrame(rows)


def table(long: pd.DataFrame) -> str:
    """Markdown: one row per dataset × method; metric columns for measured, unmeasured and all test targets."""
    order = [*ATTENTIONS, *BASELINES]
    lines = []
    columns = [(k, m) for k in ("measured", "unmeasured") for m in METRICS] + [("all", m) for m in TARGET_METRICS]
    header = ["dataset", "method"] + [f"{SHORT[m]} ({k[:5]}{'.' if k != 'all' else ''})" for k, m in columns]
    header.append("train s")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for dataset in dict.fromkeys(long["dataset"]):
        for method in [m for m in order if m in set(long["method"])]:
            sub = long[(long["dataset"] == dataset) & (long["method"] == method)]
            cells = [dataset, method]
            for kind, m in columns:
                part = sub[sub["target"] == kind]
                cells.append(f"{part[m].mean():.3f} ± {part[m].std(ddof=0):.3f}" if len(part) else "—")
            secs = sub.drop_duplicates("run")["train_seconds"]
            cells.append(f"{secs.mean():.0f}" if method in ATTENTIONS else "—")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Papalexi, 1 seed, 3 epochs")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="Papalexi split seeds (default 1 2 3)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 15; quick: 3)")
    parser.add_argument("--max-cells", type=int, default=150, help="training cells per perturbation (default 150)")
    parser.add_argument("--max-control", type=int, default=500, help="training control cells (default 500)")
    parser.add_argument("--attentions", nargs="*", default=ATTENTIONS, choices=ATTENTIONS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's per-condition metrics here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's few-batches / num_workers hints
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "genohoption"):
        logging.getLogger(name).setLevel(logging.ERROR)
    seeds = args.seeds if args.seeds is not None else ([1] if args.quick else [1, 2, 3])
    epochs = args.epochs or (3 if args.quick else 12)
    start = time.time()
    results = []
    for label, adata, seed in screens(args.quick, seeds):
        log.info("%s, seed %d (%d cells)", label, seed, adata.n_obs)
        results.append((label, run(adata, seed, epochs, args.max_cells, args.max_control, args.attentions)))
    long = summarise(results)
    print(table(long))
    print(f"\nPapalexi seeds {seeds}; {epochs} epochs at most; at most {args.max_cells} training cells per perturbation "
          f"and {args.max_control} control cells; threads {args.threads}; total {time.time() - start:.0f} s")
    if args.json is not None:
        per_condition = {label: {m: t.round(6).to_dict(orient="index") for m, t in res.items()}
                         for label, res in results}
        args.json.write_text(json.dumps({"summary": long.to_dict(orient="records"), "per_condition": per_condition,
                                         "seeds": seeds, "epochs": epochs, "max_cells": args.max_cells,
                                         "threads": args.threads, "seconds": time.time() - start}, indent=1))


if __name__ == "__main__":
    main()
