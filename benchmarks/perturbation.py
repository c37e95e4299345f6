"""Perturbation prediction on real CRISPR screens: GenoHoption and its levers against every simple baseline.

Usage (one job = one dataset, one held-out fold, one model seed; each job writes one JSON file)::

    python benchmarks/perturbation.py jobs                      # the job commands of the table, one per line
    python benchmarks/perturbation.py run papalexi --fold 0 --seed 1 --threads 1
    python benchmarks/perturbation.py table                     # assemble benchmarks/results/perturbation/*.json
    python benchmarks/perturbation.py all --threads 1           # every job in this process, then the table
    python benchmarks/perturbation.py run papalexi --fold 0 --seed 1 --quick   # 1 epoch, 20 cells per condition

Run the jobs as separate processes (``jobs`` prints them; e.g. ``... jobs | xargs -P 3 -I{} sh -c {}``), then
``table``. Data: ``../shared/data/perturbation`` (see its README; ``GENOHOPTION_SHARED_DATA`` overrides it):

- ``papalexi``: Papalexi et al. 2021 (THP-1, CRISPR knock-out, 299 genes, 25 targets of which 9 measured);
- ``mcfaline-A172``, ``mcfaline-T98G``, ``mcfaline-U87MG``: McFaline-Figueroa et al. 2023 (glioblastoma lines,
  CRISPRi, 500 genes, 9 targets, none measured), one line at a time with its own control cells.

Evaluation (``gh.tl.evaluate_perturbation``): the perturbed conditions are split into disjoint folds
(``gh.tl.perturbation_folds``, stratified by measured / unmeasured target; 5 folds for Papalexi, 3 per McFaline
line, each line with its own fold seed so that the lines hold out different targets together); a job holds out
one fold. The screen's control cells are cut to ``--max-control`` (drawn once with seed 0, the same in every
job; all of a McFaline line's ~100); these control cells are the training controls, the inputs of every
prediction and the control reference of every metric (the other control cells are not used). Training cells:
those control cells and at most ``--max-cells`` cells of each training perturbation (drawn with the fold number
as seed, so every model seed and every baseline of a fold sees the same cells). Every method predicts the
held-out conditions from the control cells; Systema's perturbed reference is the mean centroid of the training
perturbations; the top-20 DE genes are computed once, against the same control cells. Baselines (``gh.tl.fit_perturbation_baselines``, fitted on the same training cells): no
change, mean, additive, linear, target gene on control / on the mean, prior network, Systema's matching mean.

Model configurations (d_model 32, 2 layers, 2 heads, PPR K = 6 unless named; MSE; lr 1e-3; at most ``--epochs``
epochs of batch 64, McFaline lines twice as many of batch 32; early stopping on 10 % of the training cells,
patience 3), each trained with the job's seed:

- ``genohoption``: the model as it was (direct prediction; an uninformative target gets the generic token);
- ``+fallback``: the same trained model, uninformative targets predicted by the fallback rule (input + mean change);
- ``+residual``: trained to predict on top of the target-gene baseline (``residual=True``), with fallback;
- ``+pretrain``: ``+residual`` after masked-expression pretraining on the control cells (``model.pretrain``).

Per job: every method's per-condition metrics, the shuffle null of the model configurations and the target-gene
baselines (``--permutations`` permutations within the fold), the split-half noise ceiling (first seed), and
Arc Institute's cell-eval (``--cell-eval``, first seed) on the per-cell predictions of two configurations and
three baselines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results" / "perturbation"
PAPALEXI = "perturbation/papalexi2021_thp1_gears.h5ad"
MCFALINE = "perturbation/mcfaline2023_gbm_perturbench_subset_gears.h5ad"
LINES = ("A172", "T98G", "U87MG")
DATASETS = {"papalexi": (PAPALEXI, None, 5, 0), **{f"mcfaline-{line}": (MCFALINE, line, 3, i + 1)
                                                   for i, line in enumerate(LINES)}}
"""name -> (file, cell line or None, number of folds, fold seed)."""
SEEDS = (1, 2, 3)
"""Model seeds of the Papalexi jobs; the McFaline lines (targets without information for the model) run seed 1."""
BASELINES = ["no_change", "mean", "additive", "linear", "target_gene_control", "target_gene_mean", "prior_network",
             "matching_mean"]
CONFIGS = {
    "genohoption": {"residual": False, "pretrain": False},
    "+residual": {"residual": True, "pretrain": False},
    "+pretrain": {"residual": True, "pretrain": True},
}
"""Trained configurations; ``genohoption`` is also scored without fallback (as ``genohoption``) and with it."""
MODEL_ROWS = ["genohoption", "+fallback", "+residual", "+pretrain"]
HEADLINE = ["pearson_delta_pert_excl_target", "centroid_accuracy", "l2_skill", "mse_de_skill", "direction_accuracy_de"]
SHORT = {"pearson_delta_pert_excl_target": "pΔpert excl. target", "centroid_accuracy": "centroid acc.",
         "l2_skill": "L2 skill", "mse_de_skill": "MSE DE20 skill", "direction_accuracy_de": "DE20 direction",
         "pearson_delta_pert_de_excl_target": "pΔpert DE20 excl. target", "pearson_delta_pert_de": "pΔpert DE20",
         "pearson_delta_pert": "pΔpert", "pearson_delta": "pΔ", "pearson_delta_de": "pΔ DE20", "de_recall": "DE20 recall",
         "mse_de": "MSE DE20", "l2_top_expressed": "L2 top1000"}
CELL_EVAL_METHODS = ["+pretrain", "+residual", "target_gene_mean", "target_gene_control", "mean"]
CELL_EVAL_METRICS = ["pearson_delta", "overlap_at_N", "discrimination_score_l1"]
log = logging.getLogger("benchmark")


# ---------------------------------------------------------------- one job
class _Predictor:
    """A trained model's ``predict_perturbation`` with a fixed ``fallback`` (the evaluation calls it)."""

    def __init__(self, model, fallback: bool):
        self.model, self.fallback = model, fallback

    def predict_perturbation(self, adata, conditions, batch_size=256):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the uninformative-target warning, recorded instead
            return self.model.predict_perturbation(adata, conditions, batch_size=batch_size, fallback=self.fallback)


def load_dataset(name: str):
    import genohoption as gh

    path, line, _, _ = DATASETS[name]
    adata = gh.datasets.read_gears(SHARED / path)
    if line is not None:
        adata = adata[(adata.obs["cell_type"].astype(str) == line).to_numpy()].copy()
    return adata


def control_subset(adata, max_control: int) -> np.ndarray:
    """Every perturbed cell and at most ``max_control`` control cells (drawn with seed 0)."""
    values = adata.obs["condition"].astype(str).to_numpy()
    keep = values != "ctrl"
    rows = np.flatnonzero(~keep)
    keep[np.random.default_rng(0).choice(rows, min(rows.size, max_control), replace=False)] = True
    return keep


def training_cells(adata, test: list[str], max_cells: int, seed: int) -> np.ndarray:
    """Every control cell and at most ``max_cells`` cells of each training perturbation (seeded)."""
    values = adata.obs["condition"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    keep = values == "ctrl"
    for c in sorted(set(values) - {"ctrl", *test}):
        rows = np.flatnonzero(values == c)
        keep[rng.choice(rows, min(rows.size, max_cells), replace=False)] = True
    return keep


def cell_eval_scores(adata, test: list[str], per_cell: dict[str, dict[str, np.ndarray]], ctrl) -> pd.DataFrame:
    """Arc Institute's cell-eval ("minimal" profile) on per-cell predictions (clipped at 0, as it requires)."""
    import anndata as ad
    import scipy.sparse as sp
    from cell_eval import MetricsEvaluator

    values = adata.obs["condition"].astype(str).to_numpy()
    keep = np.isin(values, [*test, "ctrl"])
    real = ad.AnnData(X=sp.csr_matrix(adata.X[keep]), obs=pd.DataFrame({"target": values[keep]},
                                                                        index=adata.obs_names[keep].astype(str)),
                      var=pd.DataFrame(index=adata.var_names.astype(str)))
    base = ctrl.X.toarray() if sp.issparse(ctrl.X) else np.asarray(ctrl.X)
    tables = []
    for method, cells in per_cell.items():
        blocks, labels = [base], ["ctrl"] * base.shape[0]
        for c in test:
            blocks.append(cells[c])
            labels += [c] * base.shape[0]
        pred = ad.AnnData(X=np.clip(np.vstack(blocks), 0, None).astype(np.float32),
                          obs=pd.DataFrame({"target": labels}, index=[f"p{i}" for i in range(len(labels))]),
                          var=pd.DataFrame(index=adata.var_names.astype(str)))
        evaluator = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert="ctrl", pert_col="target",
                                     num_threads=1, outdir=str(RESULTS / "cell_eval_tmp"))
        res, _ = evaluator.compute(profile="minimal", write_csv=False)
        table = res.to_pandas().rename(columns={"perturbation": "condition"})
        table.insert(0, "method", method)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def run_job(dataset: str, fold: int, seed: int, args) -> dict:
    """Train, predict and score one held-out fold with one model seed; return the JSON record."""
    import scvi
    import torch

    import genohoption as gh
    from genohoption._conditions import parse_condition

    t_start, load_start = time.time(), os.getloadavg()
    adata = load_dataset(dataset)
    adata = adata[control_subset(adata, args.max_control)].copy()
    _, line, n_folds, fold_seed = DATASETS[dataset]
    folds = gh.tl.perturbation_folds(adata, n_folds, seed=fold_seed, gene_symbols="gene_name")
    test = folds[fold]
    values = adata.obs["condition"].astype(str).to_numpy()
    train_conditions = sorted(set(values) - {"ctrl", *test})
    targets = sorted({g for c in set(values) for g in parse_condition(c)})
    train = adata[training_cells(adata, test, args.max_cells, fold)].copy()
    gh.pp.build_gene_graph(train, gene_symbols="gene_name", allow_empty_prior=True)
    baselines = gh.tl.fit_perturbation_baselines(train, gene_symbols="gene_name", extra_genes=targets)
    predictors: dict = dict(baselines)
    small = line is not None  # a McFaline line (~600 training cells): more, smaller steps
    batch_size, max_epochs = (32, 2 * args.epochs) if small else (64, args.epochs)
    models, meta = {}, {}
    for config, opts in CONFIGS.items():
        if config not in args.configs:
            continue
        data = train.copy()
        gh.GenoHoptionModel.setup_anndata(data, perturbation_key="condition", gene_symbols="gene_name",
                                          extra_genes=targets)
        scvi.settings.seed = seed
        torch.manual_seed(seed)
        model = gh.GenoHoptionModel(data, attention=args.attention, d_model=32, n_heads=2, n_layers=2, d_hid=64,
                                    residual=opts["residual"])
        quiet = {"enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}
        t0 = time.perf_counter()
        if opts["pretrain"]:
            ctrl_train = data[(data.obs["condition"] == "ctrl").to_numpy()].copy()
            model.pretrain(ctrl_train, max_epochs=args.pretrain_epochs, batch_size=batch_size, **quiet)
        model.train(max_epochs=max_epochs, batch_size=batch_size, lr=1e-3, early_stopping_patience=3, **quiet)
        seconds = time.perf_counter() - t0
        meta[config] = {"train_seconds": round(seconds, 1), "epochs": len(model.history_["train_loss"]),
                        "pretrain_epochs": (len(model.pretrain_history_["train_loss"]) if opts["pretrain"] else 0)}
        log.info("  %s fold %d seed %d %-12s %3d epochs %6.0f s", dataset, fold, seed, config,
                 meta[config]["epochs"], seconds)
        models[config] = model
        if config == "genohoption":
            predictors["genohoption"] = _Predictor(model, fallback=False)
            predictors["+fallback"] = _Predictor(model, fallback=True)
        else:
            predictors[config] = _Predictor(model, fallback=True)
    models_scored = [m for m in MODEL_ROWS if m in predictors]
    evaluation = gh.tl.evaluate_perturbation(
        adata, predictors, test, train_conditions=train_conditions, gene_symbols="gene_name", batch_size=256,
        shuffle_null=[*models_scored, "target_gene_control", "target_gene_mean"], n_permutations=args.permutations,
        noise_ceiling=seed == SEEDS[0], seed=fold,
    )
    ctrl = adata[values == "ctrl"].copy()
    record = {
        "dataset": dataset, "line": line, "fold": fold, "seed": seed, "test": test, "folds": folds,
        "n_cells": int(adata.n_obs), "n_train_cells": int(train.n_obs), "n_control": evaluation.n_control,
        "graph_edges": int(train.varp["gene_graph"].nnz), "models": meta,
        "target_ratio": baselines["target_gene_mean"].ratio,
        "scores": evaluation.scores.to_dict(orient="records"),
        "null": evaluation.null.to_dict(orient="records") if evaluation.null is not None else None,
        "ceiling": evaluation.ceiling.to_dict(orient="records") if evaluation.ceiling is not None else None,
        "threads": torch.get_num_threads(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "seconds": round(time.time() - t_start, 1), "args": {k: v for k, v in vars(args).items() if k != "func"},
        "version": gh.__version__,
    }
    if models:  # the held-out conditions the model knows nothing about (predicted by the fallback rule)
        model = next(iter(models.values()))
        universe = model._task.universe
        record["uninformative"] = {
            c: not bool(model.module.informative(torch.as_tensor([universe.find(g) for g in parse_condition(c)]))
                        .any()) for c in test}
    if args.cell_eval and seed == SEEDS[0]:
        per_cell: dict[str, dict[str, np.ndarray]] = {}
        for method in CELL_EVAL_METHODS:
            if method not in predictors:
                continue
            per_cell[method] = {}
            for c in test:
                per_cell[method][c] = np.asarray(predictors[method].predict_perturbation(ctrl.copy(), c))
        record["cell_eval"] = cell_eval_scores(adata, test, per_cell, ctrl).to_dict(orient="records")
    return record


def job_path(out: Path, dataset: str, fold: int, seed: int) -> Path:
    return out / f"{dataset}_fold{fold}_seed{seed}.json"


# ---------------------------------------------------------------- the table
def _fmt(est: float, low: float, high: float) -> str:
    if not np.isfinite(est):
        return "—"
    return f"{est:.3f} [{low:.3f}, {high:.3f}]"


def assemble(records: list[dict]) -> dict[str, dict]:
    """Per dataset (Papalexi; McFaline lines pooled): scores, null, ceiling and cell-eval tables."""
    out: dict[str, dict] = {}
    for rec in records:
        group = "Papalexi" if rec["dataset"] == "papalexi" else "McFaline"
        prefix = "" if rec["line"] is None else f"{rec['line']}:"
        entry = out.setdefault(group, {"scores": [], "null": [], "ceiling": [], "cell_eval": [], "records": []})
        entry["records"].append(rec)
        for key in ("scores", "null", "ceiling", "cell_eval"):
            if not rec.get(key):
                continue
            table = pd.DataFrame(rec[key])
            table["condition"] = prefix + table["condition"]
            table["seed"] = rec["seed"]
            table["fold"] = f"{prefix}{rec['fold']}"
            if key == "ceiling":
                table["method"] = "noise_ceiling"
            entry[key].append(table)
    for entry in out.values():
        for key in ("scores", "null", "ceiling", "cell_eval"):
            entry[key] = pd.concat(entry[key], ignore_index=True) if entry[key] else None
    return out


def _baseline_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """Baselines are the same for every model seed of a fold: keep the first seed's rows."""
    first = scores.groupby("fold")["seed"].transform("min")
    is_base = scores["method"].isin(BASELINES)
    return scores[~is_base | (scores["seed"] == first)]


def tables(group: str, entry: dict, n_boot: int) -> str:
    import genohoption as gh

    scores = _baseline_rows(entry["scores"])
    if entry["ceiling"] is not None:
        scores = pd.concat([scores, entry["ceiling"]], ignore_index=True)
    summary = gh.tl.summarize_perturbation_scores(scores, baselines=BASELINES, n_boot=n_boot)
    methods = [m for m in [*MODEL_ROWS, *BASELINES, "noise_ceiling"] if m in set(summary["method"])]
    n_cond = scores[scores["method"] == methods[0]]["condition"].nunique()
    lines = [f"**{group}** ({n_cond} held-out conditions; mean [95 % bootstrap interval over conditions])", "",
             "| method | " + " | ".join(SHORT[m] for m in HEADLINE) + " |", "|---|" + "---|" * len(HEADLINE)]
    for method in methods:
        cells = []
        for metric in HEADLINE:
            row = summary[(summary["method"] == method) & (summary["metric"] == metric)].iloc[0]
            cells.append("0 by construction" if row["degenerate"] else _fmt(row["estimate"], row["low"], row["high"]))
        label = "noise ceiling (split-half)" if method == "noise_ceiling" else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Paired difference from the best baseline of each column (positive = better; the baseline named):",
              "", "| method | " + " | ".join(SHORT[m] for m in HEADLINE) + " |", "|---|" + "---|" * len(HEADLINE)]
    for method in [m for m in MODEL_ROWS if m in methods]:
        cells = []
        for metric in HEADLINE:
            row = summary[(summary["method"] == method) & (summary["metric"] == metric)].iloc[0]
            mark = " **↑**" if row["difference_low"] > 0 else (" ↓" if row["difference_high"] < 0 else "")
            cells.append(f"{_fmt(row['difference'], row['difference_low'], row['difference_high'])} vs "
                         f"{row['best_baseline']}{mark}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    best = {m: summary[(summary["metric"] == m) & ~summary["degenerate"] & (summary["method"] != "noise_ceiling")]
            .sort_values("estimate", ascending=False).iloc[0]["method"] for m in HEADLINE}
    lines += ["", "Best method per column: " + "; ".join(f"{SHORT[m]}: {best[m]}" for m in HEADLINE) + "."]
    if entry["null"] is not None:
        null = entry["null"]
        lines += ["", "Shuffle null (predictions permuted across the held-out conditions of each fold; mean over "
                  "conditions, 95 % of permutations) and the method's own mean:", "",
                  "| method | " + " | ".join(SHORT[m] for m in HEADLINE if m in gh.tl._perturbation.METRICS) + " |",
                  "|---|" + "---|" * sum(m in gh.tl._perturbation.METRICS for m in HEADLINE)]
        plain = [m for m in HEADLINE if m in gh.tl._perturbation.METRICS]
        for method in dict.fromkeys(null["method"]):
            sub = null[null["method"] == method]
            sub = sub.groupby(["permutation", "condition"])[plain].mean().reset_index()  # mean over seeds
            own = scores[scores["method"] == method].groupby("condition")[plain].mean().mean()
            s = gh.tl.shuffle_null_summary(sub, own.to_dict())
            cells = [f"{s.loc[m, 'observed']:.3f} vs null {s.loc[m, 'null_mean']:.3f} [{s.loc[m, 'null_low']:.3f}, "
                     f"{s.loc[m, 'null_high']:.3f}], p = {s.loc[m, 'p_value']:.3f}" for m in plain]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if entry["cell_eval"] is not None:
        ce = entry["cell_eval"].groupby(["method", "condition"]).mean(numeric_only=True).reset_index()
        ours = scores.groupby(["method", "condition"])[["pearson_delta", "de_recall", "centroid_accuracy"]].mean()
        lines += ["", "cell-eval 0.8.2 (Arc Institute, profile \"minimal\", 1 thread) on the per-cell predictions "
                  "(clipped at 0, as it requires) beside ours, mean over the conditions it scores (n): its pΔ is "
                  "undefined (NaN, left out) where a prediction does not change, ours 0 there; its DE overlap "
                  "(Wilcoxon, FDR 0.05) needs a significant DE gene in the real cells:", "",
                  "| method | pΔ cell-eval (n) | pΔ ours | DE overlap_at_N cell-eval (n) | DE20 recall ours | "
                  "discrimination L1 cell-eval | centroid acc. ours |", "|---|---|---|---|---|---|---|"]
        for method in dict.fromkeys(ce["method"]):
            sub = ce[ce["method"] == method]
            defined = sub[sub["pearson_delta"].notna()]
            with_de = sub[sub["de_nsig_counts_real"] > 0]
            mine = ours.loc[method]
            lines.append(
                f"| {method} | {defined['pearson_delta'].mean():.3f} ({len(defined)}) | "
                f"{mine.loc[defined['condition'], 'pearson_delta'].mean():.3f} | "
                f"{with_de['overlap_at_N'].mean():.3f} ({len(with_de)}) | "
                f"{mine.loc[with_de['condition'], 'de_recall'].mean():.3f} | "
                f"{sub['discrimination_score_l1'].mean():.3f} | {mine.loc[sub['condition'], 'centroid_accuracy'].mean():.3f} |")
    return "\n".join(lines), summary


def table(args) -> None:
    records = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))]
    if not records:
        sys.exit(f"no job results in {args.out}: run the jobs first (python benchmarks/perturbation.py jobs)")
    texts, summaries = [], {}
    for group, entry in assemble(records).items():
        text, summary = tables(group, entry, args.n_boot)
        texts.append(text)
        summaries[group] = summary
        recs = entry["records"]
        secs = {c: np.mean([r["models"][c]["train_seconds"] for r in recs if c in r["models"]])
                for c in CONFIGS if any(c in r["models"] for r in recs)}
        loads = [r["loadavg_start"][0] for r in recs] + [r["loadavg_end"][0] for r in recs]
        texts.append(f"\n{len(recs)} jobs (folds x seeds {sorted({r['seed'] for r in recs})}); threads "
                     f"{sorted({r['threads'] for r in recs})}; load average (1 min) at job start / end "
                     f"{min(loads):.1f}-{max(loads):.1f}; train seconds per model: "
                     + ", ".join(f"{c} {s:.0f}" for c, s in secs.items()) + "\n")
    print("\n\n".join(texts))
    print(f"\ntable assembled (no training) at load average {tuple(round(x, 1) for x in os.getloadavg())}")
    if args.json is not None:
        args.json.write_text(json.dumps({g: s.to_dict(orient="records") for g, s in summaries.items()}, indent=1))


# ---------------------------------------------------------------- command line
def _todo(datasets: list[str], seeds: list[int] | None) -> list[tuple[str, int, int]]:
    """(dataset, fold, seed) of every job: the first seed of every dataset first, then the other seeds."""
    todo = []
    for dataset in datasets:
        own = seeds if seeds is not None else (list(SEEDS) if dataset == "papalexi" else [SEEDS[0]])
        todo += [(dataset, fold, seed) for seed in own for fold in range(DATASETS[dataset][2])]
    return sorted(todo, key=lambda job: job[2] != SEEDS[0])


def jobs(args) -> list[list[str]]:
    return [[sys.executable, str(Path(__file__).resolve()), "run", dataset, "--fold", str(fold), "--seed", str(seed),
             "--threads", str(args.threads), "--out", str(args.out), "--cell-eval"]
            for dataset, fold, seed in _todo(args.datasets, args.seeds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=RESULTS, help="directory of the job JSON files")
    common.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument("--epochs", type=int, default=8, help="maximum epochs (default 8; McFaline: twice)")
    run_opts.add_argument("--pretrain-epochs", type=int, default=5, help="pretraining epochs (default 5)")
    run_opts.add_argument("--max-cells", type=int, default=60, help="training cells per perturbation (default 60)")
    run_opts.add_argument("--max-control", type=int, default=400,
                          help="control cells: training controls, inputs and reference (default 400)")
    run_opts.add_argument("--permutations", type=int, default=200, help="shuffle-null permutations (default 200)")
    run_opts.add_argument("--attention", default="ppr", help="attention of every configuration (default ppr)")
    run_opts.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    run_opts.add_argument("--cell-eval", action="store_true",
                          help="also score with Arc Institute's cell-eval (jobs of the first seed)")
    run_opts.add_argument("--quick", action="store_true",
                          help="1 epoch, 20 cells per perturbation, 200 controls, 20 permutations")
    r = sub.add_parser("run", parents=[common, run_opts], help="one job")
    r.add_argument("dataset", choices=list(DATASETS))
    r.add_argument("--fold", type=int, required=True)
    r.add_argument("--seed", type=int, required=True)
    j = sub.add_parser("jobs", parents=[common], help="print the job commands")
    j.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    j.add_argument("--seeds", type=int, nargs="*", default=None, help="default: 1 2 3 (Papalexi), 1 (McFaline)")
    t = sub.add_parser("table", parents=[common], help="assemble the table from the job files")
    t.add_argument("--n-boot", type=int, default=2000)
    t.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    a = sub.add_parser("all", parents=[common, run_opts], help="every job, then the table")
    a.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    a.add_argument("--seeds", type=int, nargs="*", default=None, help="default: 1 2 3 (Papalexi), 1 (McFaline)")
    a.add_argument("--n-boot", type=int, default=2000)
    a.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "jobs":
        print("\n".join(shlex.join(cmd) for cmd in jobs(args)))
        return
    if args.command == "table":
        table(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's few-batches / num_workers hints
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "genohoption", "cell_eval", "pdex"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if getattr(args, "quick", False):
        args.epochs, args.max_cells, args.permutations, args.pretrain_epochs, args.max_control = 1, 20, 20, 1, 200
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [(args.dataset, args.fold, args.seed)] if args.command == "run" else _todo(args.datasets, args.seeds)
    for dataset, fold, seed in todo:
        log.info("%s fold %d seed %d (threads %d, load %s)", dataset, fold, seed, torch.get_num_threads(),
                 os.getloadavg())
        record = run_job(dataset, fold, seed, args)
        job_path(args.out, dataset, fold, seed).write_text(json.dumps(record, default=str))
    if args.command == "all":
        table(args)


if __name__ == "__main__":
    main()
