"""``genohoption perturb``: train on the seen perturbations of a screen, predict the unseen ones, score baselines."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .._constants import ATTENTIONS, GRAPH_KEY, PERTURBATION_LAYER_PREFIX, SPLIT_KEY
from ._common import (
    METRICS_FILE,
    UserError,
    add_run_options,
    check_input_file,
    check_prior_and_outputs,
    check_writable_dir,
    int_at_least,
    prior_of,
    start_training,
    unreadable,
    user_error,
    warnings_as_lines,
)

COMMAND = "perturb"

MODEL_NAME = PERTURBATION_LAYER_PREFIX.rstrip("_")
"""Name of the model's predictions (layer, ``metrics.json`` entry), beside the baselines'."""

SUMMARY_METRICS = ("pearson_delta", "pearson_delta_de", "mse_de", "pearson_delta_pert", "pearson_delta_pert_de",
                   "pearson_delta_pert_excl_target", "pearson_delta_pert_de_excl_target", "centroid_accuracy",
                   "l2_top_expressed", "direction_accuracy_de", "de_recall", "l2_skill", "mse_de_skill")
"""Metrics summarised over the test conditions in ``metrics.json`` (the skills against the mean baseline last)."""

REPORTED = ("pearson_delta_pert_excl_target", "centroid_accuracy", "l2_skill", "direction_accuracy_de")
"""Metrics printed by the command (with the paired difference from the best baseline)."""

PREDICTIONS_FILE = "predictions.h5ad"
"""Observed and predicted mean profiles of the test conditions (a layer per method), written into ``--out``."""

RESPONSE_FILE = "perturbation_response.png"
"""The response figure written into ``--out``."""

CELL_TYPE_KEY = "cell_type"
"""``obs`` column that ``--cell-type`` selects on."""

NOT_PARAMETERS = ("verbose",)
"""Options left out of the parameters recorded in the predictions (they change no result)."""


def add_parser(sub) -> None:
    """Add the ``perturb`` command to the subparsers ``sub``."""
    per = sub.add_parser(
        COMMAND,
        help="train on the seen perturbations of a screen, predict the unseen ones, score against baselines",
        description=(
            "Read a GEARS-format screen (--data), split its perturbations (--split), build the gene graph on the "
            "training cells, train a GenoHoption perturbation model on the seen perturbations, predict the unseen "
            "ones from all control cells, fit the baselines (no change, mean, additive, linear, target gene on "
            "control and on the mean, prior network, matching mean) on the same cells, score every method alike "
            "(gh.tl.evaluate_perturbation) with 95 % bootstrap intervals over the test conditions and the model's "
            "paired difference from the best baseline, and write predictions.h5ad, metrics.json and "
            "perturbation_response.png to --out. Every gene perturbed in --data can be predicted, measured or not. "
            "Inputs and options are checked before training; a mistake is reported in one line and exits with "
            "status 2."
        ),
    )
    per.add_argument("--data", type=Path, required=True, help="GEARS-format .h5ad (obs condition, var gene_name)")
    per.add_argument("--split", default="simulation", metavar="simulation|kfold|COLUMN",
                     help="'simulation': GEARS' simulation split over the perturbed genes (--seed, "
                     "--train-gene-fraction); 'kfold': hold out fold --fold of --n-folds disjoint folds over the "
                     "perturbed conditions (--seed); or an obs column holding train / val / test per cell "
                     "(default: simulation)")
    per.add_argument("--n-folds", type=int_at_least(2), default=5, metavar="K",
                     help="number of folds of --split kfold (default 5)")
    per.add_argument("--fold", type=int_at_least(0), default=0, metavar="k",
                     help="the fold held out by --split kfold, 0 ... K-1 (default 0)")
    per.add_argument("--train-gene-fraction", type=float, default=0.75, metavar="F",
                     help="fraction of perturbed genes seen in training by the simulation split (default 0.75)")
    per.add_argument("--cell-type", default=None, metavar="NAME",
                     help="keep only cells with obs['cell_type'] == NAME (screens of several cell lines)")
    per.add_argument("--perturbation-key", default="condition", metavar="COLUMN")
    per.add_argument("--control-value", default="ctrl", metavar="VALUE")
    per.add_argument("--gene-symbols", default="gene_name", metavar="COLUMN",
                     help="var column with the symbols the conditions use (default gene_name)")
    per.add_argument("--layer", default=None, help="layer with log-normalised expression (default: X)")
    per.add_argument("--prior", default="default", metavar="FILE|none",
                     help="prior regulatory network for the gene graph and the unmeasured genes' edges "
                     "(default: the packaged OmniPath network)")
    per.add_argument("--attention", default="ppr", choices=ATTENTIONS)
    per.add_argument("--residual", action="store_true",
                     help="train the model on top of the target-gene baseline (GenoHoptionModel(residual=True))")
    per.add_argument("--pretrain-epochs", type=int_at_least(0), default=0, metavar="N",
                     help="masked-expression pretraining on the control cells before training (default 0: none)")
    per.add_argument("--n-boot", type=int_at_least(1), default=2000, metavar="N",
                     help="bootstrap resamples of the test conditions for the intervals (default 2000)")
    per.add_argument("--permutations", type=int_at_least(1), default=200, metavar="N",
                     help="permutations of the model's shuffle null (default 200)")
    per.add_argument("--max-epochs", type=int_at_least(1), default=20, metavar="N")
    per.add_argument("--patience", type=int_at_least(1), default=5, metavar="N",
                     help="early-stopping patience (epochs)")
    per.add_argument("--batch-size", type=int_at_least(1), default=64, metavar="N")
    per.add_argument("--max-cells-per-condition", type=int_at_least(2), default=None, metavar="N",
                     help="train on at most N cells of each perturbation (default: all; every control cell is "
                     "kept: the control cells are the inputs and the reference of every prediction)")
    per.add_argument("--seed", type=int, default=1, help="seed of the split, the cell subsample and training")
    per.add_argument("--out", type=Path, default=Path("genohoption_perturb"), metavar="DIR",
                     help="output directory, created if needed (default: genohoption_perturb)")
    per.add_argument("--no-plot", action="store_true", help="skip the response figure")
    add_run_options(per, threads_help="CPU threads for torch and the numba kernels (default: torch's default)")


def check_options(args: argparse.Namespace) -> None:
    """Check what needs no data: the option values and the paths of the screen, the outputs and the prior."""
    check_input_file(args.data, "--data", "a GEARS-format .h5ad file")
    if not 0 < args.train_gene_fraction < 1:
        raise UserError(f"--train-gene-fraction must be in (0, 1), got {args.train_gene_fraction}.")
    if args.fold >= args.n_folds:
        raise UserError(f"--fold must be below --n-folds ({args.n_folds}), got {args.fold}.")
    check_prior_and_outputs(args)


def load_screen(args: argparse.Namespace):
    """Read, subset and split the screen; return (adata, training-cell mask, test conditions, subgroups).

    The split and the cell subsample are :func:`genohoption.tl.screen_split` and
    :func:`genohoption.tl.subsample_conditions`, both seeded with ``--seed``.
    """
    from .. import datasets, tl
    from .._validate import check_values, get_matrix

    try:
        adata = datasets.read_gears(args.data, perturbation_key=args.perturbation_key,
                                    control_value=args.control_value)
    except (KeyError, ValueError, TypeError) as err:
        raise user_error(err, f"--data {args.data}") from None
    except OSError as err:
        raise unreadable(args.data, "--data", err) from None
    if args.gene_symbols not in adata.var:
        raise UserError(f"--data has no var column {args.gene_symbols!r} (columns: {list(adata.var.columns)}); pass "
                        "--gene-symbols naming the column with the symbols the conditions use.")
    if args.layer is not None:
        try:
            check_values(get_matrix(adata, args.layer), f"--data's layers[{args.layer!r}]")
        except (KeyError, TypeError, ValueError) as err:
            raise user_error(err, "--data") from None
    if args.cell_type is not None:
        if CELL_TYPE_KEY not in adata.obs:
            raise UserError(f"--cell-type given but --data has no obs column {CELL_TYPE_KEY!r}.")
        types = adata.obs[CELL_TYPE_KEY].astype(str)
        if not (types == args.cell_type).any():
            raise UserError(f"--cell-type {args.cell_type!r}: no such cell type (available: {sorted(set(types))}).")
        adata = adata[(types == args.cell_type).to_numpy()].copy()
    if not (adata.obs[args.perturbation_key].astype(str) == args.control_value).any():
        raise UserError(f"no control cells (obs[{args.perturbation_key!r}] == {args.control_value!r}) in the data "
                        "kept; pass --control-value.")
    try:
        with warnings_as_lines(COMMAND):
            train_mask, test, groups = tl.screen_split(
                adata, args.split, seed=args.seed, train_gene_fraction=args.train_gene_fraction,
                perturbation_key=args.perturbation_key, control_value=args.control_value, n_folds=args.n_folds,
                fold=args.fold, gene_symbols=args.gene_symbols, key_added=SPLIT_KEY)
    except (KeyError, ValueError) as err:
        raise user_error(err, "cannot split the perturbations") from None
    if args.max_cells_per_condition is not None:
        is_ctrl = (adata.obs[args.perturbation_key].astype(str) == args.control_value).to_numpy()
        train_mask = is_ctrl | tl.subsample_conditions(adata, args.max_cells_per_condition, mask=train_mask,
                                                       perturbation_key=args.perturbation_key, seed=args.seed)
    return adata, train_mask, test, groups


def run(args: argparse.Namespace) -> dict:
    """Run the perturbation job described by parsed command-line ``args``; return the metrics.

    Raises :class:`UserError` (before any training) for a mistake in the options or the input files.
    """
    check_options(args)
    start = time.perf_counter()
    adata, train_mask, test, groups = load_screen(args)
    check_writable_dir(args.out, "--out", create=True)
    start_training(args)

    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch

    import genohoption as gh
    from genohoption._conditions import parse_condition

    prior = prior_of(args)
    key, ctrl_value, symbols = args.perturbation_key, args.control_value, args.gene_symbols
    values = adata.obs[key].astype(str)
    perturbed_genes = sorted({g for c in set(values) for g in parse_condition(c, ctrl_value)})
    train = adata[train_mask].copy()
    try:
        gh.pp.build_gene_graph(train, layer=args.layer, prior=prior, gene_symbols=symbols, allow_empty_prior=True)
        gh.GenoHoptionModel.setup_anndata(train, layer=args.layer, perturbation_key=key, control_value=ctrl_value,
                                          gene_symbols=symbols, prior=prior, extra_genes=perturbed_genes)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise user_error(err, "the training data cannot be used") from None
    model = gh.GenoHoptionModel(train, attention=args.attention, residual=args.residual)
    t0 = time.perf_counter()
    if args.pretrain_epochs:
        controls = train[(train.obs[key].astype(str) == ctrl_value).to_numpy()].copy()
        model.pretrain(controls, max_epochs=args.pretrain_epochs, batch_size=args.batch_size)
    model.train(max_epochs=args.max_epochs, batch_size=args.batch_size, early_stopping_patience=args.patience)
    train_seconds = time.perf_counter() - t0
    baselines = gh.tl.fit_perturbation_baselines(train, perturbation_key=key, control_value=ctrl_value,
                                                 gene_symbols=symbols, layer=args.layer, prior=prior,
                                                 extra_genes=perturbed_genes)
    train_conditions = sorted(set(train.obs[key].astype(str)) - {ctrl_value})
    with warnings_as_lines(COMMAND):
        evaluation = gh.tl.evaluate_perturbation(
            adata, {MODEL_NAME: model, **baselines}, test, train_conditions=train_conditions, perturbation_key=key,
            control_value=ctrl_value, gene_symbols=symbols, layer=args.layer, shuffle_null=[MODEL_NAME],
            n_permutations=args.permutations, noise_ceiling=min(values.value_counts()[test]) >= 4, seed=args.seed)
    scores = evaluation.scores
    summary = gh.tl.summarize_perturbation_scores(scores, baselines=list(baselines), n_boot=args.n_boot,
                                                  seed=args.seed)
    seconds = time.perf_counter() - start

    profiles = evaluation.profiles
    kind = dict(zip(scores["condition"], scores["target"], strict=False))
    out = ad.AnnData(
        X=np.stack([np.asarray(adata[(values == c).to_numpy()].X.mean(0)).ravel() for c in test]).astype(np.float32),
        obs=pd.DataFrame({"n_cells": [int((values == c).sum()) for c in test],
                          "target": pd.Categorical([kind[c] for c in test], categories=["measured", "unmeasured"])},
                         index=pd.Index(test, name="condition")),
        var=adata.var.copy(),
    )
    for name, prof in profiles.items():
        out.layers[name] = np.asarray(prof[test].X, dtype=np.float32)
    out.uns[MODEL_NAME] = {"params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                      if k not in NOT_PARAMETERS}}
    out.write_h5ad(args.out / PREDICTIONS_FILE)
    metrics: dict = {
        "data": str(args.data), "split": args.split, "seed": args.seed, "cell_type": args.cell_type,
        "attention": args.attention, "residual": args.residual, "pretrain_epochs": args.pretrain_epochs,
        "threads": torch.get_num_threads(), "n_cells": int(adata.n_obs), "n_train_cells": int(train.n_obs),
        "n_control_cells": evaluation.n_control, "n_vars": int(adata.n_vars),
        "train_conditions": train_conditions, "test_conditions": test,
        "test_targets": {c: kind[c] for c in test}, "graph_edges": int(train.varp[GRAPH_KEY].nnz),
        "epochs": len(model.history_["train_loss"]), "train_seconds": round(train_seconds, 1),
        "fallback_conditions": _fallback_conditions(model, test, ctrl_value),
        "baselines": list(baselines),
        "summary": _point_summary(scores, list(baselines)),
        "intervals": _intervals(summary),
        "versus_best_baseline": _versus(summary, MODEL_NAME),
        "shuffle_null": _null(evaluation, scores),
        "noise_ceiling": (None if evaluation.ceiling is None else
                          {m: float(evaluation.ceiling[m].mean()) for m in SUMMARY_METRICS if m in evaluation.ceiling}),
        "bootstrap": {"n_boot": args.n_boot, "level": 0.95, "unit": "test condition"},
        "per_condition": {name: t.drop(columns=["method", "target"]).set_index("condition").round(6)
                          .to_dict(orient="index") for name, t in scores.groupby("method", sort=False)},
        "seconds": round(seconds, 1),
    }
    if args.split == "kfold":
        metrics["folds"] = adata.uns[SPLIT_KEY]["folds"]
    if groups is not None:
        metrics["test_subgroups"] = {g: list(v) for g, v in groups.items() if v}
    if args.save_model is not None:
        model.save(args.save_model)
        metrics["saved_model"] = str(args.save_model)
    if not args.no_plot:
        ax = gh.pl.perturbation_response(adata, profiles, test[:3], perturbation_key=key, control_value=ctrl_value,
                                         layer=args.layer, gene_symbols=symbols, show=False)
        ax.figure.savefig(args.out / RESPONSE_FILE, dpi=120, bbox_inches="tight")
    (args.out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return metrics


def _fallback_conditions(model, conditions: list[str], control_value: str) -> list[str]:
    """Return the conditions the model knows nothing about, predicted by its fallback rule (``predict_perturbation``)."""
    import torch

    from .._conditions import condition_gene_indices

    table = condition_gene_indices(conditions, model._task.universe, control_value)
    known = model.module.informative(torch.as_tensor(table)).numpy() | (table < 0)
    return [c for c, row in zip(conditions, known, strict=True) if not row.any()]


def _point_summary(scores, baselines: list[str]) -> dict:
    """Means over the test conditions (all, measured and unmeasured targets), skills against the mean baseline."""
    import genohoption as gh

    out: dict = {}
    for group in ("all", "measured", "unmeasured"):
        part = scores if group == "all" else scores[scores["target"] == group]
        if part.empty:
            continue
        table = gh.tl.summarize_perturbation_scores(part, baselines=baselines, n_boot=1)
        for row in table.itertuples():
            if row.metric in SUMMARY_METRICS:
                out.setdefault(row.method, {}).setdefault(group, {})[row.metric] = _num(row.estimate)
    return out


def _num(value) -> float | None:
    """Return a float for JSON (``None`` for NaN)."""
    value = float(value)
    return None if value != value else value


def _intervals(summary) -> dict:
    """Return ``{method: {metric: {estimate, low, high, n_conditions, degenerate}}}``."""
    out: dict = {}
    for row in summary.itertuples():
        if row.metric in SUMMARY_METRICS:
            out.setdefault(row.method, {})[row.metric] = {
                "estimate": _num(row.estimate), "low": _num(row.low), "high": _num(row.high),
                "n_conditions": int(row.n_conditions), "degenerate": bool(row.degenerate)}
    return out


def _versus(summary, method: str) -> dict:
    """Return ``{metric: {best_baseline, difference, low, high}}`` of ``method`` (positive = better)."""
    out = {}
    for row in summary[summary["method"] == method].itertuples():
        if row.metric in SUMMARY_METRICS and row.best_baseline is not None:
            out[row.metric] = {"best_baseline": row.best_baseline, "difference": _num(row.difference),
                               "low": _num(row.difference_low), "high": _num(row.difference_high)}
    return out


def _null(evaluation, scores) -> dict | None:
    """Return the model's shuffle null: ``{metric: {null_mean, null_low, null_high, observed, p_value}}``."""
    import genohoption as gh

    if evaluation.null is None:
        return None
    null = evaluation.null.drop(columns="method")
    plain = [m for m in SUMMARY_METRICS if m in null]
    observed = scores[scores["method"] == MODEL_NAME][plain].mean().to_dict()
    table = gh.tl.shuffle_null_summary(null[["permutation", "condition", *plain]], observed)
    return {m: {k: _num(v) for k, v in table.loc[m].items()} for m in table.index}


def report(metrics: dict, args: argparse.Namespace) -> None:
    """Print the summary of a finished run on stdout: every method's scores, the model against the best baseline."""
    short = {"pearson_delta_pert_excl_target": "pDpert excl.target", "centroid_accuracy": "centroid acc",
             "l2_skill": "L2 skill", "direction_accuracy_de": "DE20 direction"}
    n_unmeasured = sum(v == "unmeasured" for v in metrics["test_targets"].values())
    print(f"{len(metrics['test_conditions'])} test conditions ({n_unmeasured} with unmeasured targets); "
          f"{metrics['epochs']} epochs, {metrics['train_seconds']} s of training")
    print(f"{'method':<20s}" + "".join(f"{short[c]:>20s}" for c in REPORTED))
    for name, entry in metrics["intervals"].items():
        cells = ["0 (by constr.)" if entry[c]["degenerate"] else
                 "nan" if entry[c]["estimate"] is None else f"{entry[c]['estimate']:.3f}" for c in REPORTED]
        print(f"{name:<20s}" + "".join(f"{cell:>20s}" for cell in cells))
    print(f"{MODEL_NAME} - best baseline, mean [95 % bootstrap interval over test conditions]:")
    for c in REPORTED:
        v = metrics["versus_best_baseline"].get(c)
        if v is not None and v["difference"] is not None:
            print(f"  {short[c]:<20s} {v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}] vs {v['best_baseline']}")
    print(f"wrote {args.out}/{PREDICTIONS_FILE}, {METRICS_FILE}" + ("" if args.no_plot else f", {RESPONSE_FILE}")
          + (f"; model in {args.save_model}" if args.save_model is not None else ""))
