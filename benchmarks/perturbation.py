"""Perturbation prediction on simulated CRISPRi Perturb-seq: GenoHoption (ppr, heat) vs mask and dense.

Usage::

    python benchmarks/perturbation.py            # 3 seeds, 20 epochs (~12 min on 2 cores)
    python benchmarks/perturbation.py --quick    # 1 seed, small data, few epochs
    python benchmarks/perturbation.py --json     # machine-readable output

Data: ``gh.datasets.simulate_perturbation`` (Hill-function steady-state model on a real regulatory
subnetwork of the packaged OmniPath prior, single and double knock-downs, Poisson counts, log-normalised).
Each seed simulates a new dataset, splits it with ``gh.tl.perturbation_split`` (GEARS simulation split,
75 % of perturbed genes seen) and trains one small model per attention on the training cells (control
cells included). The gene graph is built from the training cells' co-expression plus the packaged prior
(the simulated network is a subnetwork of it, as a real prior would hold the true regulators of a
well-studied system). Predictions: mean profiles of 200 control cells under each test condition.

Metrics (``gh.tl.perturbation_metrics``, GEARS): pearson_delta on all genes and on each condition's
top-20 DE genes, averaged over the conditions of each test subgroup, then mean ± sd over seeds.
Baselines: no change (control mean: pearson_delta = 0 by GEARS' convention) and, for combinations, the
additive baseline ``ctrl + Σ (mean single_g - ctrl)`` over the combination's genes whose single
perturbation is in the training set (an unseen gene contributes no change).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import numpy as np
import pandas as pd
import torch

SUBGROUPS = ["unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"]
METRICS = ["pearson_delta", "pearson_delta_de"]
ATTENTIONS = ["ppr", "heat", "mask", "dense"]


def _baselines(adata, train_mask, conditions):
    from genohoption._conditions import parse_condition

    X = adata.X.toarray().astype(np.float64)
    cond = adata.obs["condition"].astype(str).to_numpy()
    ctrl = X[cond == "ctrl"].mean(0)
    single = {c.split("+")[0]: X[(cond == c) & train_mask].mean(0) - ctrl
              for c in np.unique(cond[train_mask]) if c.endswith("+ctrl")}
    no_change = pd.DataFrame(np.tile(ctrl, (len(conditions), 1)), index=conditions, columns=adata.var_names)
    additive = pd.DataFrame(
        [ctrl + sum((single.get(g, 0.0) for g in parse_condition(c)), np.zeros_like(ctrl)) for c in conditions],
        index=conditions, columns=adata.var_names,
    )
    return no_change, additive


def run_seed(seed: int, quick: bool, epochs: int) -> dict[str, pd.DataFrame]:
    import scvi

    import genohoption as gh

    scvi.settings.seed = seed
    sim = dict(n_genes=60, n_regulators=20, n_perturbed=16, n_combos=16, n_control=200, cells_per_condition=15) \
        if quick else dict(n_genes=100, n_regulators=30, n_perturbed=30, n_combos=30, n_control=300,
                           cells_per_condition=20)
    adata = gh.datasets.simulate_perturbation(**sim, library_size=1500, seed=seed)
    groups = gh.tl.perturbation_split(adata, seed=seed)
    train_mask = (adata.obs["split"] == "train").to_numpy()
    gh.pp.build_gene_graph(adata, cells=train_mask)
    train = adata[train_mask].copy()
    test = adata[(adata.obs["split"] == "test").to_numpy() | (adata.obs["condition"] == "ctrl").to_numpy()].copy()
    conditions = sorted(c for g in groups.values() for c in g)
    rng = np.random.default_rng(seed)
    ctrl_idx = np.flatnonzero((adata.obs["condition"] == "ctrl").to_numpy())
    ctrl_cells = adata[rng.choice(ctrl_idx, min(200, ctrl_idx.size), replace=False)].copy()

    results = {}
    no_change, additive = _baselines(adata, train_mask, conditions)
    for name, pred in [("no change", no_change), ("additive", additive)]:
        results[name] = gh.tl.perturbation_metrics(test, pred, subgroups=groups, by="subgroup")
    for attention in ATTENTIONS:
        t0 = time.time()
        data = train.copy()
        gh.GenoHoptionModel.setup_anndata(data, perturbation_key="condition", gene_symbols="gene_name")
        torch.manual_seed(seed)
        model = gh.GenoHoptionModel(data, attention=attention, d_model=32, n_heads=2, n_layers=2, d_hid=64,
                                    dropout=0.0)
        model.train(max_epochs=epochs, batch_size=32, lr=3e-3, train_size=1.0, enable_progress_bar=False,
                    enable_model_summary=False, logger=False, enable_checkpointing=False)
        profiles = model.predict_perturbation(ctrl_cells, conditions, batch_size=200)
        results[attention] = gh.tl.perturbation_metrics(test, profiles, subgroups=groups, by="subgroup")
        results[attention].attrs["seconds"] = time.time() - t0
        logging.getLogger("benchmark").info("seed %d %s %.0f s", seed, attention, time.time() - t0)
    return results, {k: len(v) for k, v in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, small data, few epochs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "scvi", "genohoption"):
        logging.getLogger(name).setLevel(logging.ERROR)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (6 if args.quick else 20)
    t0 = time.time()
    per_seed, sizes, seconds = [], [], {a: [] for a in ATTENTIONS}
    for s in seeds:
        res, size = run_seed(s, args.quick, epochs)
        per_seed.append(res)
        sizes.append(size)
        for a in ATTENTIONS:
            seconds[a].append(res[a].attrs["seconds"])
    methods = list(per_seed[0])
    rows = []
    for m in methods:
        row = {"method": m}
        for g in SUBGROUPS:
            for metric in METRICS:
                vals = [r[m].loc[g, metric] for r in per_seed if g in r[m].index]
                if m == "additive" and g == "unseen_single":
                    vals = []  # the same as no change for singles
                row[f"{g}/{metric}"] = (float(np.mean(vals)), float(np.std(vals))) if vals else None
        rows.append(row)
    out = {"seeds": seeds, "epochs": epochs, "quick": args.quick, "test_conditions_per_seed": sizes,
           "train_seconds_mean": {a: float(np.mean(v)) for a, v in seconds.items()},
           "total_seconds": time.time() - t0, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    cols = [f"{g}/{m}" for g in SUBGROUPS for m in METRICS]
    header = ["method", *[c.replace("pearson_delta_de", "pΔ top20 DE").replace("pearson_delta", "pΔ") for c in cols]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = ["—" if row[c] is None else f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in cols]
        print(f"| {row['method']} | " + " | ".join(cells) + " |")
    print(f"\nseeds {seeds}, {epochs} epochs; test conditions per seed {sizes}; "
          f"train+predict s per model {({a: round(v, 1) for a, v in out['train_seconds_mean'].items()})}; "
          f"total {out['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
