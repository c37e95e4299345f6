"""``genohoption annotate``: train on a labelled reference, predict the cell types of a query."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .._constants import (
    ATTENTIONS,
    BASELINE_PREDICTION_KEY,
    GRAPH_KEY,
    LANE_KEY,
    LATENT_KEY,
    NEIGHBORS_KEY,
    PREDICTION_KEY,
    PROBABILITIES_KEY,
    UMAP_KEY,
    UNCERTAINTY_KEY,
    UNS_KEY,
    UNS_PREDICT,
)
from ._common import (
    METRICS_FILE,
    UserError,
    add_run_options,
    check_input_file,
    check_prior_and_outputs,
    check_writable_dir,
    int_at_least,
    prior_of,
    read_h5ad,
    start_training,
    user_error,
    warn,
    warnings_as_lines,
)

COMMAND = "annotate"

DEFAULT_REFERENCE_LANES = ("1", "2", "3", "4", "5", "6")
"""Lanes of the bundled pbmc68k_reduced used as the reference (the others are the query)."""

MIN_SHARED_FRACTION = 0.5
"""Warn when the query holds fewer than this fraction of the reference genes."""

QUERY_FILE = "query.h5ad"
"""The query with predictions, latent and UMAP, written into ``--out``."""

UMAP_FILE = "umap.png"
"""The UMAP figure written into ``--out``."""


def add_parser(sub) -> None:
    """Add the ``annotate`` command to the subparsers ``sub``."""
    ann = sub.add_parser(
        COMMAND,
        help="train on a labelled reference, predict cell types of a query",
        description=(
            "Build the gene graph on the reference, train a GenoHoption model, predict the query, fit a "
            "logistic-regression baseline on the same data and write query.h5ad, metrics.json and umap.png "
            "to --out. With no files: scanpy's bundled pbmc68k_reduced (700 PBMCs), lanes -1..-6 as "
            "reference and -7, -8 as query. Inputs and options are checked before training; a mistake is "
            "reported in one line and exits with status 2."
        ),
    )
    ann.add_argument("--reference", type=Path, help="labelled reference .h5ad")
    ann.add_argument("--query", type=Path, help="query .h5ad (labels optional: used for metrics)")
    ann.add_argument("--labels-key", default=None, help="obs column with cell types (default: bulk_labels "
                     "for the bundled data, cell_type otherwise)")
    ann.add_argument("--layer", default=None, help="layer with log-normalised expression, in both files "
                     "(default: X)")
    ann.add_argument("--gene-symbols", default=None, metavar="COLUMN",
                     help="var column of the reference with gene symbols to match the prior network on "
                     "(default: var_names)")
    ann.add_argument("--prior", default="default", metavar="FILE|none",
                     help="prior regulatory network (CSV / TSV / parquet with source, target columns) for "
                     "the gene graph; 'none': co-expression only (default: the packaged OmniPath network)")
    ann.add_argument("--attention", default="ppr", choices=ATTENTIONS)
    ann.add_argument("--max-epochs", type=int_at_least(1), default=MAX_EPOCHS, metavar="N")
    ann.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                     help="fraction of the reference held out for early stopping and the best-epoch weights "
                     "(and calibration); 0 (default): no early stopping, --max-epochs epochs")
    ann.add_argument("--calibration-fraction", type=float, default=CALIBRATION_FRACTION, metavar="F",
                     help="with --validation-fraction 0: fraction of the reference held out of training to "
                     "calibrate the probabilities (temperature) and choose the Unknown threshold "
                     f"(default {CALIBRATION_FRACTION}); 0: every reference cell trains, no calibration")
    ann.add_argument("--unknown-threshold", type=threshold_option, default="calibrated",
                     metavar="calibrated|none|U",
                     help="label query cells whose uncertainty exceeds this 'Unknown': 'calibrated' (default) "
                     "the threshold chosen on the held-out reference cells, a number in [0, 1], or 'none'")
    ann.add_argument("--false-unknown-rate", type=float, default=FALSE_UNKNOWN_RATE, metavar="R",
                     help="largest fraction of held-out reference cells the calibrated threshold calls Unknown "
                     f"(default {FALSE_UNKNOWN_RATE})")
    ann.add_argument("--patience", type=int_at_least(1), default=8, metavar="N",
                     help="early-stopping patience (epochs), with --validation-fraction > 0")
    ann.add_argument("--pretrain-epochs", type=int, default=0, metavar="N",
                     help="first pretrain the backbone for N epochs by masked expression modelling on the "
                     "reference and query cells together (no labels used); default 0: none")
    ann.add_argument("--ensemble", type=int_at_least(1), default=ENSEMBLE_MEMBERS, metavar="N",
                     help="train N models from different random starts and average their probabilities "
                     f"(a deep ensemble, gh.model.GenoHoptionEnsemble; default {ENSEMBLE_MEMBERS}); 1: one model, "
                     "N times faster, its accuracy moves more with --seed")
    ann.add_argument("--batch-size", type=int_at_least(1), default=32, metavar="N")
    ann.add_argument("--seed", type=int, default=0, help="seed of torch, numpy, random (scvi-tools), the "
                     "baseline and the UMAP")
    ann.add_argument("--out", type=Path, default=Path("genohoption_output"), metavar="DIR",
                     help="output directory, created if needed (default: genohoption_output)")
    ann.add_argument("--no-plot", action="store_true", help="skip the UMAP figure")
    add_run_options(ann, threads_help="CPU threads for torch and the numba kernels (default: torch's default); "
                    "idle threads sleep (OMP_WAIT_POLICY=PASSIVE unless set), so jobs can share cores")


def threshold_option(text: str) -> float | str | None:
    """``--unknown-threshold``: ``calibrated``, ``none`` or a number in [0, 1]."""
    if text in ("calibrated", "none"):
        return None if text == "none" else text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"give 'calibrated', 'none' or a number in [0, 1], got {text!r}")
    return value


# ---------------------------------------------------------------------------- checks before training
def check_options(args: argparse.Namespace) -> None:
    """Check what needs no data: the option values and the paths of the inputs, the outputs and the prior."""
    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {args.validation_fraction}: give a fraction in [0, 1).")
    if not 0.0 <= args.calibration_fraction < 1.0:
        raise UserError(f"--calibration-fraction {args.calibration_fraction}: give a fraction in [0, 1).")
    if not 0.0 < args.false_unknown_rate < 1.0:
        raise UserError(f"--false-unknown-rate {args.false_unknown_rate}: give a fraction in (0, 1).")
    if args.unknown_threshold == "calibrated" and held_out_fraction(args) == 0:
        raise UserError("--unknown-threshold calibrated needs held-out reference cells: give --calibration-fraction "
                        "(or --validation-fraction) > 0, a number, or --unknown-threshold none.")
    if args.pretrain_epochs < 0:
        raise UserError(f"--pretrain-epochs {args.pretrain_epochs}: give 0 (no pretraining) or more epochs.")
    if (args.reference is None) != (args.query is None):
        given = "--reference" if args.reference is not None else "--query"
        raise UserError(f"only {given} given; give both --reference and --query, or neither for the bundled "
                        "pbmc68k_reduced data.")
    for option, path in (("--reference", args.reference), ("--query", args.query)):
        if path is not None:
            check_input_file(path, option)
    check_prior_and_outputs(args)


def load_inputs(args: argparse.Namespace):
    """Read (or take the bundled) reference and query; return (reference, query, labels key, data source)."""
    from .. import datasets

    if args.reference is None:
        adata = datasets.pbmc68k_reduced()
        lanes = adata.obs[LANE_KEY].astype(str)
        in_ref = lanes.isin(DEFAULT_REFERENCE_LANES).to_numpy()
        return adata[in_ref].copy(), adata[~in_ref].copy(), args.labels_key or "bulk_labels", "pbmc68k_reduced"
    reference = read_h5ad(args.reference, "--reference")
    query = read_h5ad(args.query, "--query")
    return reference, query, args.labels_key or "cell_type", str(args.reference)


def check_data(reference, query, labels_key: str, args: argparse.Namespace) -> None:
    """Check the loaded data: labels, gene symbols, gene names, cells, expression values, shared genes.

    The checks of the package (:mod:`genohoption._validate`) raise typed errors, translated into one-line
    :class:`UserError` exceptions; the rest compares the two files. Warnings go to stderr as one line each.
    """
    from .._validate import (
        check_labels,
        check_unique_var_names,
        check_value_scale,
        check_values,
        get_matrix,
        matrix_name,
        value_scale,
    )

    sides = (("the reference", reference), ("the query", query))
    try:
        check_labels(reference, labels_key)
    except (KeyError, ValueError) as err:
        raise user_error(err, "the reference") from None
    if args.gene_symbols is not None and args.gene_symbols not in reference.var:
        cols = ", ".join(map(str, reference.var.columns)) or "none"
        raise UserError(f"the reference has no var column {args.gene_symbols!r} (columns: {cols}); pass "
                        "--gene-symbols naming the column with gene symbols, or leave it out to use var_names.")
    if query.n_obs == 0:
        raise UserError("the query has no cells; give a query file with at least one cell.")
    matrices = {}
    for name, adata in sides:
        try:
            check_unique_var_names(adata)
            matrices[name] = get_matrix(adata, args.layer)
            check_values(matrices[name], f"{name}'s {matrix_name(args.layer).removeprefix('adata.')}")
        except (KeyError, TypeError, ValueError) as err:
            raise user_error(err, name) from None
    with warnings_as_lines(COMMAND, replace=("the model was trained on", "the reference holds")):
        check_value_scale(value_scale(matrices["the reference"]), value_scale(matrices["the query"]), "the query")
    n_shared = int(reference.var_names.isin(query.var_names).sum())
    if n_shared == 0:
        raise UserError(f"the query shares no gene with the reference (e.g. reference "
                        f"{list(reference.var_names[:3])}, query {list(query.var_names[:3])}); use the same gene "
                        "identifiers in both files.")
    if n_shared < MIN_SHARED_FRACTION * reference.n_vars:
        warn(COMMAND, f"the query holds only {n_shared} of the reference's {reference.n_vars} genes "
             f"({n_shared / reference.n_vars:.0%}); the missing ones count as not expressed, which may hurt "
             "the predictions.")
    if labels_key not in query.obs:
        warn(COMMAND, f"the query has no obs column {labels_key!r}: predictions only, no accuracy.")


# ---------------------------------------------------------------------------- the job
def run(args: argparse.Namespace) -> dict:
    """Run the annotation job described by parsed command-line ``args``; return the metrics.

    Raises :class:`UserError` (before any training) for a mistake in the options or the input files.
    """
    check_options(args)
    start = time.perf_counter()
    reference, query, labels_key, source = load_inputs(args)
    check_data(reference, query, labels_key, args)
    check_writable_dir(args.out, "--out", create=True)
    start_training(args)

    import scanpy as sc
    import torch

    import genohoption as gh

    prior = prior_of(args)
    try:
        gh.pp.build_gene_graph(reference, layer=args.layer, prior=prior, gene_symbols=args.gene_symbols)
        gh.GenoHoptionModel.setup_anndata(reference, layer=args.layer, labels_key=labels_key)
    except (KeyError, ValueError, FileNotFoundError) as err:  # documented input errors, raised before training
        raise user_error(err, "the reference cannot be used") from None
    if args.ensemble == 1:
        model = gh.GenoHoptionModel(reference, attention=args.attention, dropout=DROPOUT)
    else:  # saved with GenoHoptionEnsemble.save (--save-model), read back by GenoHoptionEnsemble.load
        model = gh.model.GenoHoptionEnsemble(reference, n_members=args.ensemble, seed=args.seed,
                                             attention=args.attention, dropout=DROPOUT)
    if args.pretrain_epochs:
        import anndata as ad

        cells = ad.concat([reference, query], join="inner")
        cells.obs_names_make_unique()
        model.pretrain(cells, max_epochs=args.pretrain_epochs, batch_size=args.batch_size)
    calibration = train_recipe(model, max_epochs=args.max_epochs, batch_size=args.batch_size,
                               validation_fraction=args.validation_fraction,
                               calibration_fraction=args.calibration_fraction, patience=args.patience,
                               false_unknown_rate=args.false_unknown_rate)
    model.predict(query, unknown_threshold=args.unknown_threshold)
    seconds = time.perf_counter() - start

    metrics: dict = {"data": source, "labels_key": labels_key, "layer": args.layer, "attention": args.attention,
                     "prior": args.prior if prior is not None else "none", "gene_symbols": args.gene_symbols,
                     "seed": args.seed, "threads": torch.get_num_threads(),
                     "n_reference": int(reference.n_obs), "n_query": int(query.n_obs),
                     "n_vars": int(reference.n_vars),
                     "n_genes_shared": int(reference.var_names.isin(query.var_names).sum()),
                     "graph_edges": int(reference.varp[GRAPH_KEY].nnz),
                     "epochs": len(first_member(model).history_["train_loss"]), "ensemble": args.ensemble,
                     "pretrain_epochs": args.pretrain_epochs,
                     "validation_fraction": args.validation_fraction,
                     "calibration_fraction": 0.0 if args.validation_fraction else args.calibration_fraction,
                     "recipe": RECIPE_NAME + ("-ensemble" if args.ensemble > 1 else "")}
    has_labels = labels_key in query.obs
    if has_labels:  # a reference type for every cell (the probabilities' argmax): the figures beside the baseline's
        metrics.update(gh.tl.annotation_metrics(reference_type_predictions(query, labels_key), labels_key))
        metrics.pop("n_obs")
    metrics["seconds"] = round(seconds, 1)
    metrics["uncertainty"] = uncertainty_summary(query, labels_key if has_labels else None, calibration)

    t0 = time.perf_counter()
    gh.tl.logistic_regression_baseline(reference, query, labels_key, layer=args.layer, key_added=BASELINE_PREDICTION_KEY,
                                       random_state=args.seed)
    baseline: dict = {"method": "scikit-learn LogisticRegression (multinomial, L2, C=1), same expression"}
    if has_labels:
        scores = gh.tl.annotation_metrics(query, labels_key, prediction_key=BASELINE_PREDICTION_KEY)
        baseline.update(accuracy=scores["accuracy"], macro_f1=scores["macro_f1"])
    baseline["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["baseline_logreg"] = baseline

    if args.save_model is not None:
        model.save(args.save_model)
        metrics["saved_model"] = str(args.save_model)

    query.obsm[LATENT_KEY] = model.get_latent_representation(query)
    if not args.no_plot:
        sc.pp.neighbors(query, use_rep=LATENT_KEY, key_added=NEIGHBORS_KEY, random_state=args.seed)
        sc.tl.umap(query, neighbors_key=NEIGHBORS_KEY, key_added=UMAP_KEY, random_state=args.seed)
        color = [PREDICTION_KEY, UNCERTAINTY_KEY, BASELINE_PREDICTION_KEY] + ([labels_key] if has_labels else [])
        fig = sc.pl.embedding(query, basis=UMAP_KEY, color=color, show=False, return_fig=True, wspace=0.6)
        fig.savefig(args.out / UMAP_FILE, dpi=120, bbox_inches="tight")
    query.write_h5ad(args.out / QUERY_FILE)
    (args.out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return metrics


def first_member(model):
    """Return the model itself, or an ensemble's first member."""
    return model.members[0] if hasattr(model, "members") else model


def held_out_fraction(args: argparse.Namespace) -> float:
    """Fraction of the reference kept out of training (validation cells, else calibration cells)."""
    return args.validation_fraction or args.calibration_fraction


RECIPE_NAME = "swa"
"""Name of the training recipe of :func:`train_recipe`, recorded in ``metrics.json`` (``swa-ensemble`` for several
models)."""

MAX_EPOCHS = 20
"""Default epochs of the main job."""

DROPOUT = 0.2
"""Dropout of the main job's model (``GenoHoptionModel(dropout=...)``)."""

ENSEMBLE_MEMBERS = 3
"""Default number of models of the main job's deep ensemble (``--ensemble``)."""

SWA_EPOCH_START = 0.5
"""Fraction of the epochs after which the weights are averaged (stochastic weight averaging)."""

SWA_LR = 1e-3
"""Learning rate while the weights are averaged (the training rate: a constant schedule)."""

CALIBRATION_FRACTION = 0.1
"""Default fraction of the reference held out of training for calibration."""

FALSE_UNKNOWN_RATE = 0.05
"""Default largest fraction of known-type cells the calibrated threshold calls Unknown."""


def train_recipe(model, *, max_epochs: int, batch_size: int, validation_fraction: float = 0.0,
                 calibration_fraction: float = CALIBRATION_FRACTION, patience: int = 8,
                 false_unknown_rate: float = FALSE_UNKNOWN_RATE, enable_progress_bar: bool | None = None) -> dict | None:
    """Train ``model`` with the main job's recipe, then calibrate it on the held-out reference cells.

    The model (a :class:`~genohoption.GenoHoptionModel` or a :class:`~genohoption.model.GenoHoptionEnsemble`,
    whose members then all train this way) is built by the caller (the command line: an ensemble of
    :data:`ENSEMBLE_MEMBERS`, dropout :data:`DROPOUT`). Without validation cells:
    ``calibration_fraction`` of the reference (scvi-tools' random split, seeded) is kept out of training, the
    weights of the second half of the epochs are averaged (Lightning's
    :class:`~lightning.pytorch.callbacks.StochasticWeightAveraging`, Izmailov et al. 2018), and the
    held-out cells fit the temperature and the Unknown threshold (``model.calibrate()``). With
    ``validation_fraction > 0``: early stopping with ``patience`` and the best epoch's weights instead of the
    averaging; the validation cells calibrate. Returns the calibration record, or ``None`` when no cell was
    held out.
    """
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    held_out = validation_fraction or calibration_fraction
    kwargs = {} if enable_progress_bar is None else {"enable_progress_bar": enable_progress_bar}
    if validation_fraction:
        model.train(max_epochs=max_epochs, batch_size=batch_size, train_size=1.0 - validation_fraction,
                    early_stopping_patience=patience, **kwargs)
    else:
        swa = StochasticWeightAveraging(swa_lrs=SWA_LR, swa_epoch_start=SWA_EPOCH_START, annealing_epochs=1)
        model.train(max_epochs=max_epochs, batch_size=batch_size, train_size=1.0 - held_out, early_stopping=False,
                    restore_best_weights=False, callbacks=[swa], **kwargs)
    return model.calibrate(false_unknown_rate=false_unknown_rate) if held_out else None


def reference_type_predictions(query, labels_key: str):
    """Return an AnnData (obs only) with the query's labels and the most probable reference type of each cell."""
    import anndata as ad
    import pandas as pd

    probs = query.obsm[PROBABILITIES_KEY]
    classes = query.uns[UNS_KEY][UNS_PREDICT]["classes"]
    forced = pd.Categorical.from_codes(probs.to_numpy().argmax(1), categories=classes)
    return ad.AnnData(obs=pd.DataFrame({labels_key: query.obs[labels_key].to_numpy(), PREDICTION_KEY: forced},
                                       index=query.obs_names))


def uncertainty_summary(query, labels_key: str | None, calibration: dict | None) -> dict:
    """Summarise the uncertainty of the predicted query (``obs``, ``uns`` as :meth:`predict` wrote them).

    The summary holds the calibration record (temperature, threshold, expected calibration errors on the
    held-out reference cells), the threshold used, how many query cells are Unknown, the query's mean
    uncertainty and, with labels and a threshold, accuracy and macro F1 counting Unknown as wrong.
    """
    import genohoption as gh

    record = query.uns[UNS_KEY][UNS_PREDICT]
    summary: dict = {"calibration": calibration, "unknown_threshold": record["unknown_threshold"],
                     "mean_uncertainty": float(query.obs[UNCERTAINTY_KEY].mean())}
    if record["unknown_threshold"] is not None:
        summary["n_unknown"] = record["n_unknown"]
        summary["fraction_unknown"] = round(record["n_unknown"] / query.n_obs, 4)
        if labels_key is not None:
            scores = gh.tl.annotation_metrics(query, labels_key)
            summary["accuracy_with_unknown"] = scores["accuracy"]
            summary["macro_f1_with_unknown"] = scores["macro_f1"]
    return summary


def report(metrics: dict, args: argparse.Namespace) -> None:
    """Print the metrics of a finished run on stdout."""
    summary = {k: v for k, v in metrics.items() if k not in ("per_class_f1", "uncertainty")}
    print(json.dumps(summary, indent=1))
    if "per_class_f1" in metrics:
        print("per-class F1:")
        for name, f1 in metrics["per_class_f1"].items():
            print(f"  {name:<32s} {f1:.3f}")
    if "accuracy" in metrics:
        base = metrics["baseline_logreg"]
        print(f"GenoHoption ({metrics['attention']}): accuracy {metrics['accuracy']:.3f}, macro F1 "
              f"{metrics['macro_f1']:.3f} | logistic regression: accuracy {base['accuracy']:.3f}, macro F1 "
              f"{base['macro_f1']:.3f} ({metrics['n_query']} query cells)")
    unc = metrics["uncertainty"]
    cal = unc["calibration"]
    if cal is not None:
        print(f"calibration on {cal['n_cells']} held-out reference cells: temperature {cal['temperature']:.2f}, "
              f"expected calibration error {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, Unknown threshold "
              f"{cal['threshold']:.3f} (at most {cal['false_unknown_rate']:.0%} of known-type cells)")
    line = f"uncertainty: mean {unc['mean_uncertainty']:.3f} over the query"
    if unc["unknown_threshold"] is not None:
        line += (f"; {unc['n_unknown']} of {metrics['n_query']} query cells Unknown (uncertainty > "
                 f"{unc['unknown_threshold']:.3f})")
        if "accuracy_with_unknown" in unc:
            line += (f"; counting Unknown as wrong: accuracy {unc['accuracy_with_unknown']:.3f}, macro F1 "
                     f"{unc['macro_f1_with_unknown']:.3f}")
    print(line)
    print(f"wrote {args.out}/{QUERY_FILE}, {METRICS_FILE}" + ("" if args.no_plot else f", {UMAP_FILE}")
          + (f"; model in {args.save_model}" if args.save_model is not None else ""))
