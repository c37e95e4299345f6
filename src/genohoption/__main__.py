"""Command line: ``genohoption annotate`` and ``genohoption perturb`` (also ``python -m genohoption ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from ._constants import (
    ADDITIVE_LAYER_PREFIX,
    ATTENTIONS,
    BASELINE_PREDICTION_KEY,
    GRAPH_KEY,
    LANE_KEY,
    LATENT_KEY,
    LINEAR_LAYER_PREFIX,
    MEAN_LAYER_PREFIX,
    NEIGHBORS_KEY,
    NO_CHANGE_LAYER_PREFIX,
    PERTURBATION_LAYER_PREFIX,
    PREDICTION_KEY,
    SPLIT_KEY,
    UMAP_KEY,
)

logger = logging.getLogger("genohoption")

DEFAULT_REFERENCE_LANES = ("1", "2", "3", "4", "5", "6")
MIN_SHARED_FRACTION = 0.5
"""Warn when the query holds fewer than this fraction of the reference genes."""
WEIGHTS_FILE = "model.safetensors"
"""File that ``GenoHoptionModel.save`` refuses to overwrite."""


class UserError(Exception):
    """A mistake in the command line or the input files: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one line on stderr (``prog: error: message``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genohoption", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ann = sub.add_parser(
        "annotate",
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
    ann.add_argument("--max-epochs", type=_int_at_least(1), default=15, metavar="N")
    ann.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                     help="fraction of the reference held out for early stopping and the best-epoch weights; "
                     "0 (default) trains on every reference cell for --max-epochs epochs")
    ann.add_argument("--patience", type=_int_at_least(1), default=8, metavar="N",
                     help="early-stopping patience (epochs), with --validation-fraction > 0")
    ann.add_argument("--pretrain-epochs", type=int, default=0, metavar="N",
                     help="first pretrain the backbone for N epochs by masked expression modelling on the "
                     "reference and query cells together (no labels used); default 0: none")
    ann.add_argument("--batch-size", type=_int_at_least(1), default=32, metavar="N")
    ann.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N",
                     help="CPU threads for torch and the numba kernels (default: torch's default); idle threads "
                     "sleep (OMP_WAIT_POLICY=PASSIVE unless set), so jobs can share cores")
    ann.add_argument("--seed", type=int, default=0, help="seed of torch, numpy, random (scvi-tools), the "
                     "baseline and the UMAP")
    ann.add_argument("--out", type=Path, default=Path("genohoption_output"), metavar="DIR",
                     help="output directory, created if needed (default: genohoption_output)")
    ann.add_argument("--save-model", type=Path, default=None, metavar="DIR",
                     help="also save the trained model there (GenoHoptionModel.load reads it)")
    ann.add_argument("--no-plot", action="store_true", help="skip the UMAP figure")
    _add_perturb_parser(sub)
    return parser


def _add_perturb_parser(sub) -> None:
    per = sub.add_parser(
        "perturb",
        help="train on the seen perturbations of a screen, predict the unseen ones, score against baselines",
        description=(
            "Read a GEARS-format screen (--data), split its perturbations (--split), build the gene graph on the "
            "training cells, train a GenoHoption perturbation model on the seen perturbations, predict the unseen "
            "ones from the control cells, fit the four baselines (no change, mean, additive, linear) on the same "
            "cells and write predictions.h5ad, metrics.json and perturbation_response.png to --out. Every gene "
            "perturbed in --data can be predicted, measured or not. Inputs and options are checked before "
            "training; a mistake is reported in one line and exits with status 2."
        ),
    )
    per.add_argument("--data", type=Path, required=True, help="GEARS-format .h5ad (obs condition, var gene_name)")
    per.add_argument("--split", default="simulation", metavar="simulation|COLUMN",
                     help="'simulation': GEARS' simulation split over the perturbed genes (--seed, "
                     "--train-gene-fraction); or an obs column holding train / val / test per cell "
                     "(default: simulation)")
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
    per.add_argument("--max-epochs", type=_int_at_least(1), default=20, metavar="N")
    per.add_argument("--patience", type=_int_at_least(1), default=5, metavar="N",
                     help="early-stopping patience (epochs)")
    per.add_argument("--batch-size", type=_int_at_least(1), default=64, metavar="N")
    per.add_argument("--max-cells-per-condition", type=_int_at_least(2), default=None, metavar="N",
                     help="train on at most N cells of each condition (default: all)")
    per.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N",
                     help="CPU threads for torch and the numba kernels (default: torch's default)")
    per.add_argument("--seed", type=int, default=1, help="seed of the split, the cell subsample and training")
    per.add_argument("--out", type=Path, default=Path("genohoption_perturb"), metavar="DIR",
                     help="output directory, created if needed (default: genohoption_perturb)")
    per.add_argument("--save-model", type=Path, default=None, metavar="DIR",
                     help="also save the trained model there (GenoHoptionModel.load reads it)")
    per.add_argument("--no-plot", action="store_true", help="skip the response figure")


# ---------------------------------------------------------------------------- checks before training
def _check_writable_dir(path: Path, option: str, *, create: bool) -> None:
    """``path`` must be a directory or creatable as one; create it when ``create``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a directory; give a directory path (it is created if "
                        "missing).")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{option} {path}: cannot create the directory ({err.strerror or err}); choose "
                            "another path.") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: directory is not writable; choose another path.")
        return
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create it under {parent} (not a writable directory); choose "
                        "another path.")


def _check_options(args: argparse.Namespace) -> None:
    """Check what needs no data: paths of the inputs, the outputs and the prior."""
    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {args.validation_fraction}: give a fraction in [0, 1).")
    if args.pretrain_epochs < 0:
        raise UserError(f"--pretrain-epochs {args.pretrain_epochs}: give 0 (no pretraining) or more epochs.")
    if (args.reference is None) != (args.query is None):
        given = "--reference" if args.reference is not None else "--query"
        raise UserError(f"only {given} given; give both --reference and --query, or neither for the bundled "
                        "pbmc68k_reduced data.")
    for option, path in (("--reference", args.reference), ("--query", args.query)):
        if path is None:
            continue
        if not path.exists():
            raise UserError(f"{option} {path}: no such file; give the path of an .h5ad file.")
        if not path.is_file():
            raise UserError(f"{option} {path} is not a file; give the path of an .h5ad file.")
        if not os.access(path, os.R_OK):
            raise UserError(f"{option} {path}: file is not readable (permissions).")
    _check_prior_and_outputs(args)


def _check_prior_and_outputs(args: argparse.Namespace) -> None:
    """Check ``--prior``, ``--out`` and ``--save-model`` (both jobs have them) before any work is done."""
    if args.prior.lower() not in ("default", "none") and not Path(args.prior).is_file():
        raise UserError(f"--prior {args.prior}: no such file; give a CSV / TSV / parquet network file, 'none' "
                        "(co-expression only) or leave it out (packaged network).")
    _check_writable_dir(args.out, "--out", create=False)
    if args.save_model is not None:
        _check_writable_dir(args.save_model, "--save-model", create=False)
        if (args.save_model / WEIGHTS_FILE).exists():
            raise UserError(f"--save-model {args.save_model} already holds a saved model; choose an empty "
                            "directory or delete that one.")


def _read_h5ad(path: Path, option: str):
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{option} {path}: cannot read it as .h5ad ({type(err).__name__}: {first}); give an "
                        "AnnData file written by anndata / scanpy.") from None


def _load_inputs(args):
    from . import datasets

    if args.reference is None:
        adata = datasets.pbmc68k_reduced()
        lanes = adata.obs[LANE_KEY].astype(str)
        in_ref = lanes.isin(DEFAULT_REFERENCE_LANES).to_numpy()
        return adata[in_ref].copy(), adata[~in_ref].copy(), args.labels_key or "bulk_labels", "pbmc68k_reduced"
    reference = _read_h5ad(args.reference, "--reference")
    query = _read_h5ad(args.query, "--query")
    return reference, query, args.labels_key or "cell_type", str(args.reference)


def _warn(message: str) -> None:
    print(f"genohoption annotate: warning: {message}", file=sys.stderr)


def _check_data(reference, query, labels_key: str, args: argparse.Namespace) -> None:
    """Check the loaded data: labels, layer, gene symbols, shared genes."""
    if labels_key not in reference.obs:
        cols = ", ".join(map(str, reference.obs.columns)) or "none"
        raise UserError(f"the reference has no obs column {labels_key!r} (columns: {cols}); pass --labels-key "
                        "naming its cell-type column.")
    n_types = reference.obs[labels_key].dropna().nunique()
    if n_types < 2:
        raise UserError(f"reference obs[{labels_key!r}] holds {n_types} cell type(s); at least two needed.")
    if args.layer is not None:
        for name, adata in (("reference", reference), ("query", query)):
            if args.layer not in adata.layers:
                layers = ", ".join(adata.layers.keys()) or "none"
                raise UserError(f"the {name} has no layer {args.layer!r} (layers: {layers}); pass --layer "
                                "naming a layer present in both files, or leave it out to use X.")
    if args.gene_symbols is not None and args.gene_symbols not in reference.var:
        cols = ", ".join(map(str, reference.var.columns)) or "none"
        raise UserError(f"the reference has no var column {args.gene_symbols!r} (columns: {cols}); pass "
                        "--gene-symbols naming the column with gene symbols, or leave it out to use var_names.")
    for name, adata in (("reference", reference), ("query", query)):
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()[:3].tolist()
            raise UserError(f"the {name}'s var_names are not unique (e.g. {dup}); call "
                            "adata.var_names_make_unique() and write the file again.")
    from ._validate import check_value_scale, check_values, get_matrix, matrix_name, value_scale

    if query.n_obs == 0:
        raise UserError("the query has no cells; give a query file with at least one cell.")
    matrices = {}
    for name, adata in (("reference", reference), ("query", query)):
        try:
            matrices[name] = get_matrix(adata, args.layer)
            check_values(matrices[name], f"the {name}'s {matrix_name(args.layer).removeprefix('adata.')}")
        except (KeyError, TypeError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise UserError(message if message.startswith("the ") else f"the {name}: {message}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_value_scale(value_scale(matrices["reference"]), value_scale(matrices["query"]), "the query")
    for warning in caught:
        _warn(str(warning.message).replace("the model was trained on", "the reference holds"))
    n_shared = int(reference.var_names.isin(query.var_names).sum())
    if n_shared == 0:
        raise UserError(f"the query shares no gene with the reference (e.g. reference "
                        f"{list(reference.var_names[:3])}, query {list(query.var_names[:3])}); use the same gene "
                        "identifiers in both files.")
    if n_shared < MIN_SHARED_FRACTION * reference.n_vars:
        _warn(f"the query holds only {n_shared} of the reference's {reference.n_vars} genes "
              f"({n_shared / reference.n_vars:.0%}); the missing ones count as not expressed, which may hurt "
              "the predictions.")
    if labels_key not in query.obs:
        _warn(f"the query has no obs column {labels_key!r}: predictions only, no accuracy.")


# ---------------------------------------------------------------------------- the job
def annotate(args: argparse.Namespace) -> dict:
    """Run the annotation job described by parsed command-line ``args``; return the metrics.

    Raises :class:`UserError` (before any training) for a mistake in the options or the input files.
    """
    _check_options(args)
    start = time.perf_counter()
    reference, query, labels_key, source = _load_inputs(args)
    _check_data(reference, query, labels_key, args)
    _check_writable_dir(args.out, "--out", create=True)

    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    import scvi
    import torch

    import genohoption as gh

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed  # seeds random, numpy and torch
    prior = {"default": "default", "none": None}.get(args.prior.lower(), args.prior)
    try:
        gh.pp.build_gene_graph(reference, layer=args.layer, prior=prior, gene_symbols=args.gene_symbols)
        gh.GenoHoptionModel.setup_anndata(reference, layer=args.layer, labels_key=labels_key)
    except (KeyError, ValueError, FileNotFoundError) as err:  # documented input errors, raised before training
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise UserError(f"the reference cannot be used: {message}") from None
    model = gh.GenoHoptionModel(reference, attention=args.attention)
    if args.pretrain_epochs:
        import anndata as ad

        cells = ad.concat([reference, query], join="inner")
        cells.obs_names_make_unique()
        model.pretrain(cells, max_epochs=args.pretrain_epochs, batch_size=args.batch_size)
    model.train(max_epochs=args.max_epochs, batch_size=args.batch_size, train_size=1.0 - args.validation_fraction,
                early_stopping_patience=args.patience)
    model.predict(query)
    seconds = time.perf_counter() - start

    metrics: dict = {"data": source, "labels_key": labels_key, "layer": args.layer, "attention": args.attention,
                     "prior": args.prior if prior is not None else "none", "gene_symbols": args.gene_symbols,
                     "seed": args.seed, "threads": torch.get_num_threads(),
                     "n_reference": int(reference.n_obs), "n_query": int(query.n_obs),
                     "n_vars": int(reference.n_vars),
                     "n_genes_shared": int(reference.var_names.isin(query.var_names).sum()),
                     "graph_edges": int(reference.varp[GRAPH_KEY].nnz),
                     "epochs": len(model.history_["train_loss"]), "pretrain_epochs": args.pretrain_epochs,
                     "validation_fraction": args.validation_fraction}
    has_labels = labels_key in query.obs
    if has_labels:
        metrics.update(gh.tl.annotation_metrics(query, labels_key))
        metrics.pop("n_obs")
    metrics["seconds"] = round(seconds, 1)

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
        color = [PREDICTION_KEY, BASELINE_PREDICTION_KEY] + ([labels_key] if has_labels else [])
        fig = sc.pl.embedding(query, basis=UMAP_KEY, color=color, show=False, return_fig=True, wspace=0.6)
        fig.savefig(args.out / "umap.png", dpi=120, bbox_inches="tight")
    query.write_h5ad(args.out / "query.h5ad")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


# ---------------------------------------------------------------------------- perturb
BASELINE_NAMES = {"no_change": NO_CHANGE_LAYER_PREFIX, "mean": MEAN_LAYER_PREFIX, "additive": ADDITIVE_LAYER_PREFIX,
                  "linear": LINEAR_LAYER_PREFIX}
MODEL_NAME = PERTURBATION_LAYER_PREFIX.rstrip("_")
SUMMARY_METRICS = ("pearson_delta", "pearson_delta_de", "mse_de", "pearson_delta_pert", "pearson_delta_pert_de",
                   "centroid_accuracy", "l2_top_expressed")


def _check_perturb_options(args: argparse.Namespace) -> None:
    if not args.data.exists():
        raise UserError(f"--data {args.data}: no such file; give the path of a GEARS-format .h5ad file.")
    if not args.data.is_file() or not os.access(args.data, os.R_OK):
        raise UserError(f"--data {args.data} is not a readable file; give the path of a GEARS-format .h5ad file.")
    if not 0 < args.train_gene_fraction < 1:
        raise UserError(f"--train-gene-fraction must be in (0, 1), got {args.train_gene_fraction}.")
    _check_prior_and_outputs(args)


def _load_screen(args: argparse.Namespace):
    """Read, subset and split the screen; return (adata, training-cell mask, test conditions, subgroups)."""
    import numpy as np

    from . import datasets, tl

    try:
        adata = datasets.read_gears(args.data, perturbation_key=args.perturbation_key,
                                    control_value=args.control_value)
    except (KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise UserError(f"--data {args.data}: {message}") from None
    except OSError as err:
        raise UserError(f"--data {args.data}: cannot read it as .h5ad ({err}).") from None
    if args.gene_symbols not in adata.var:
        raise UserError(f"--data has no var column {args.gene_symbols!r} (columns: {list(adata.var.columns)}); pass "
                        "--gene-symbols naming the column with the symbols the conditions use.")
    if args.layer is not None and args.layer not in adata.layers:
        raise UserError(f"--data has no layer {args.layer!r} (layers: {list(adata.layers)}); pass --layer or leave it "
                        "out to use X.")
    if args.cell_type is not None:
        if "cell_type" not in adata.obs:
            raise UserError("--cell-type given but --data has no obs column 'cell_type'.")
        types = adata.obs["cell_type"].astype(str)
        if not (types == args.cell_type).any():
            raise UserError(f"--cell-type {args.cell_type!r}: no such cell type (available: {sorted(set(types))}).")
        adata = adata[(types == args.cell_type).to_numpy()].copy()
    values = adata.obs[args.perturbation_key].astype(str)
    if not (values == args.control_value).any():
        raise UserError(f"no control cells (obs[{args.perturbation_key!r}] == {args.control_value!r}) in the data "
                        "kept; pass --control-value.")
    if args.split == "simulation":
        try:
            groups = tl.perturbation_split(adata, seed=args.seed, train_gene_fraction=args.train_gene_fraction,
                                           perturbation_key=args.perturbation_key, control_value=args.control_value,
                                           key_added=SPLIT_KEY)
        except ValueError as err:
            raise UserError(f"cannot split the perturbations: {err}") from None
        split = adata.obs[SPLIT_KEY].astype(str)
    else:
        if args.split not in adata.obs:
            raise UserError(f"--split {args.split!r} is neither 'simulation' nor an obs column of --data "
                            f"(columns: {list(adata.obs.columns)}).")
        split = adata.obs[args.split].astype(str)
        unknown = sorted(set(split) - {"train", "val", "test"})
        if unknown:
            raise UserError(f"obs[{args.split!r}] holds {unknown[:5]!r}; it must hold train, val or test per cell.")
        groups = None
    is_ctrl = (values == args.control_value).to_numpy()
    test = sorted(set(values[(split == "test").to_numpy() & ~is_ctrl]))
    train_mask = (split != "test").to_numpy() | is_ctrl
    if not test:
        raise UserError("the split leaves no perturbed condition to test; use another --split or --seed.")
    if not (train_mask & ~is_ctrl).any():
        raise UserError("the split leaves no perturbed condition to train on; use another --split or --seed.")
    small = [c for c in test if (values == c).sum() < 2]
    if small and len(small) == len(test):
        raise UserError(f"no test condition has 2 cells or more ({len(test)} with 1 cell); the metrics need 2 per "
                        "condition.")
    if small:
        test = [c for c in test if c not in small]
        print(f"genohoption perturb: warning: {len(small)} test conditions have fewer than 2 cells and are not "
              f"scored (the metrics need 2 per condition): {small[:5]!r}{' …' if len(small) > 5 else ''}",
              file=sys.stderr)
    if args.max_cells_per_condition is not None:
        rng = np.random.default_rng(args.seed)
        keep = np.zeros(adata.n_obs, dtype=bool)
        for c in sorted(set(values[train_mask])):
            rows = np.flatnonzero(train_mask & (values == c).to_numpy())
            keep[rng.choice(rows, min(rows.size, args.max_cells_per_condition), replace=False)] = True
        train_mask = keep
    return adata, train_mask, test, groups


def perturb(args: argparse.Namespace) -> dict:
    """Run the perturbation job described by parsed command-line ``args``; return the metrics.

    Raises :class:`UserError` (before any training) for a mistake in the options or the input files.
    """
    _check_perturb_options(args)
    start = time.perf_counter()
    adata, train_mask, test, groups = _load_screen(args)
    _check_writable_dir(args.out, "--out", create=True)

    import matplotlib

    matplotlib.use("Agg")
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scvi
    import torch

    import genohoption as gh
    from genohoption._conditions import parse_condition

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    prior = {"default": "default", "none": None}.get(args.prior.lower(), args.prior)
    key, ctrl_value, symbols = args.perturbation_key, args.control_value, args.gene_symbols
    values = adata.obs[key].astype(str)
    perturbed_genes = sorted({g for c in set(values) for g in parse_condition(c, ctrl_value)})
    train = adata[train_mask].copy()
    try:
        gh.pp.build_gene_graph(train, layer=args.layer, prior=prior, gene_symbols=symbols, allow_empty_prior=True)
        gh.GenoHoptionModel.setup_anndata(train, layer=args.layer, perturbation_key=key, control_value=ctrl_value,
                                          gene_symbols=symbols, prior=prior, extra_genes=perturbed_genes)
    except (KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise UserError(f"the training data cannot be used: {message}") from None
    model = gh.GenoHoptionModel(train, attention=args.attention)
    t0 = time.perf_counter()
    model.train(max_epochs=args.max_epochs, batch_size=args.batch_size, early_stopping_patience=args.patience)
    train_seconds = time.perf_counter() - t0
    ctrl = adata[(values == ctrl_value).to_numpy()].copy()
    profiles = {MODEL_NAME: model.predict_perturbation(ctrl, test)}
    baselines = gh.tl.fit_perturbation_baselines(train, perturbation_key=key, control_value=ctrl_value,
                                                 gene_symbols=symbols, layer=args.layer, prior=prior)
    for name, baseline in baselines.items():
        profiles[name] = baseline.predict_perturbation(ctrl, test)

    measured = set(adata.var[symbols].astype(str))
    kind = {c: "measured" if all(g in measured for g in parse_condition(c, ctrl_value)) else "unmeasured"
            for c in test}
    de = gh.tl.top_de_genes(adata, key, ctrl_value, conditions=test, layer=args.layer)
    per_condition, summary = {}, {}
    for name, prof in profiles.items():
        table = gh.tl.perturbation_metrics(adata, prof, perturbation_key=key, control_value=ctrl_value,
                                           layer=args.layer, de_genes=de)
        table["target"] = [kind[c] for c in table.index]
        per_condition[name] = table
        entry = {"all": {m: float(table[m].mean()) for m in SUMMARY_METRICS}}
        for group in ("measured", "unmeasured"):
            sub = table[table["target"] == group]
            if len(sub):
                entry[group] = {m: float(sub[m].mean()) for m in SUMMARY_METRICS}
        summary[name] = entry
    seconds = time.perf_counter() - start

    out = ad.AnnData(
        X=np.stack([np.asarray(adata[(values == c).to_numpy()].X.mean(0)).ravel() for c in test]).astype(np.float32),
        obs=pd.DataFrame({"n_cells": [int((values == c).sum()) for c in test],
                          "target": pd.Categorical([kind[c] for c in test], categories=["measured", "unmeasured"])},
                         index=pd.Index(test, name="condition")),
        var=adata.var.copy(),
    )
    for name, prof in profiles.items():
        out.layers[name] = np.asarray(prof[test].X, dtype=np.float32)
    out.uns[MODEL_NAME] = {"params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    out.write_h5ad(args.out / "predictions.h5ad")
    metrics: dict = {
        "data": str(args.data), "split": args.split, "seed": args.seed, "cell_type": args.cell_type,
        "attention": args.attention, "threads": torch.get_num_threads(), "n_cells": int(adata.n_obs),
        "n_train_cells": int(train.n_obs), "n_vars": int(adata.n_vars),
        "train_conditions": sorted(set(train.obs[key].astype(str)) - {ctrl_value}), "test_conditions": test,
        "test_targets": kind, "graph_edges": int(train.varp[GRAPH_KEY].nnz),
        "epochs": len(model.history_["train_loss"]), "train_seconds": round(train_seconds, 1),
        "summary": summary,
        "per_condition": {name: t.drop(columns="target").round(6).to_dict(orient="index")
                          for name, t in per_condition.items()},
        "seconds": round(seconds, 1),
    }
    if groups is not None:
        metrics["test_subgroups"] = {g: list(v) for g, v in groups.items() if v}
    if args.save_model is not None:
        model.save(args.save_model)
        metrics["saved_model"] = str(args.save_model)
    if not args.no_plot:
        ax = gh.pl.perturbation_response(adata, profiles, test[:3], perturbation_key=key, control_value=ctrl_value,
                                         layer=args.layer, gene_symbols=symbols, show=False)
        ax.figure.savefig(args.out / "perturbation_response.png", dpi=120, bbox_inches="tight")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _print_perturb(metrics: dict, args: argparse.Namespace) -> None:
    cols = ("pearson_delta_de", "pearson_delta_pert_de", "centroid_accuracy", "l2_top_expressed")
    print(f"{len(metrics['test_conditions'])} test conditions ({sum(v == 'unmeasured' for v in metrics['test_targets'].values())} "
          f"with unmeasured targets); {metrics['epochs']} epochs, {metrics['train_seconds']} s of training")
    print(f"{'method':<12s}" + "".join(f"{c:>24s}" for c in cols))
    for name, entry in metrics["summary"].items():
        print(f"{name:<12s}" + "".join(f"{entry['all'][c]:>24.3f}" for c in cols))
    print(f"wrote {args.out}/predictions.h5ad, metrics.json" + ("" if args.no_plot else ", perturbation_response.png")
          + (f"; model in {args.save_model}" if args.save_model is not None else ""))


YIELDING_THREADS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
"""OpenMP settings the command line sets (unless already set) before torch and numba load their thread pools."""


def _yielding_thread_pools() -> None:
    """Let idle OpenMP worker threads sleep instead of spinning, so that jobs sharing cores do not slow each other.

    torch's and numba's OpenMP pools (GNU libgomp; ``KMP_BLOCKTIME`` is Intel OpenMP's equivalent) read these
    variables once, when they load: this runs before ``annotate`` / ``perturb`` import them, and does nothing
    when they are already imported (e.g. :func:`main` called from Python) or the user set the variables.
    """
    if "torch" in sys.modules or "numba" in sys.modules:
        return
    for name, value in YIELDING_THREADS.items():
        os.environ.setdefault(name, value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genohoption`` console script."""
    _yielding_thread_pools()
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        metrics = perturb(args) if args.command == "perturb" else annotate(args)
    except UserError as err:
        parser.exit(2, f"genohoption {args.command}: error: {err}\n")
    if args.command == "perturb":
        _print_perturb(metrics, args)
        return 0
    summary = {k: v for k, v in metrics.items() if k != "per_class_f1"}
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
    print(f"wrote {args.out}/query.h5ad, metrics.json" + ("" if args.no_plot else ", umap.png")
          + (f"; model in {args.save_model}" if args.save_model is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
