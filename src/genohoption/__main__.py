"""Command line: ``genohoption annotate`` (also ``python -m genohoption annotate``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ._constants import ATTENTIONS, LATENT_KEY, PREDICTION_KEY

logger = logging.getLogger("genohoption")

DEFAULT_REFERENCE_LANES = ("1", "2", "3", "4", "5", "6")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genohoption", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ann = sub.add_parser(
        "annotate",
        help="train on a labelled reference, predict cell types of a query",
        description=(
            "Build the gene graph on the reference, train a GenoHoption model, predict the query and "
            "write query.h5ad, metrics.json and umap.png to --out. With no files: scanpy's bundled "
            "pbmc68k_reduced (700 PBMCs), lanes -1..-6 as reference and -7, -8 as query."
        ),
    )
    ann.add_argument("--reference", type=Path, help="labelled reference .h5ad")
    ann.add_argument("--query", type=Path, help="query .h5ad (labels optional: used for metrics)")
    ann.add_argument("--labels-key", default=None, help="obs column with cell types (default: bulk_labels "
                     "for the bundled data, cell_type otherwise)")
    ann.add_argument("--layer", default=None, help="layer with log-normalised expression (default: X)")
    ann.add_argument("--attention", default="ppr", choices=ATTENTIONS)
    ann.add_argument("--max-epochs", type=int, default=30)
    ann.add_argument("--patience", type=int, default=8, help="early-stopping patience (epochs)")
    ann.add_argument("--batch-size", type=int, default=32)
    ann.add_argument("--seed", type=int, default=0)
    ann.add_argument("--out", type=Path, default=Path("genohoption_output"))
    ann.add_argument("--no-plot", action="store_true", help="skip the UMAP figure")
    return parser


def _load_inputs(args):
    import anndata as ad

    from . import datasets

    if (args.reference is None) != (args.query is None):
        raise SystemExit("genohoption annotate: give both --reference and --query, or neither.")
    if args.reference is None:
        adata = datasets.pbmc68k_reduced()
        lanes = adata.obs["lane"].astype(str)
        in_ref = lanes.isin(DEFAULT_REFERENCE_LANES).to_numpy()
        return adata[in_ref].copy(), adata[~in_ref].copy(), args.labels_key or "bulk_labels", "pbmc68k_reduced"
    return ad.read_h5ad(args.reference), ad.read_h5ad(args.query), args.labels_key or "cell_type", str(
        args.reference
    )


def annotate(args: argparse.Namespace) -> dict:
    """Run the annotation job described by parsed command-line ``args``; return the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    import scvi

    import genohoption as gh

    start = time.perf_counter()
    scvi.settings.seed = args.seed
    reference, query, labels_key, source = _load_inputs(args)
    gh.pp.build_gene_graph(reference, layer=args.layer)
    gh.GenoHoptionModel.setup_anndata(reference, layer=args.layer, labels_key=labels_key)
    model = gh.GenoHoptionModel(reference, attention=args.attention)
    model.train(max_epochs=args.max_epochs, batch_size=args.batch_size, early_stopping_patience=args.patience)
    model.predict(query)
    seconds = time.perf_counter() - start

    metrics: dict = {"data": source, "labels_key": labels_key, "attention": args.attention,
                     "n_reference": int(reference.n_obs), "n_query": int(query.n_obs),
                     "n_vars": int(reference.n_vars), "graph_edges": int(reference.varp["gene_graph"].nnz),
                     "epochs": len(model.history_["train_loss"])}
    if labels_key in query.obs:
        metrics.update(gh.tl.annotation_metrics(query, labels_key))
        metrics.pop("n_obs")
    metrics["seconds"] = round(seconds, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    query.obsm[LATENT_KEY] = model.get_latent_representation(query)
    if not args.no_plot:
        sc.pp.neighbors(query, use_rep=LATENT_KEY)
        sc.tl.umap(query, random_state=args.seed)
        color = [PREDICTION_KEY] + ([labels_key] if labels_key in query.obs else [])
        fig = sc.pl.umap(query, color=color, show=False, return_fig=True, wspace=0.6)
        fig.savefig(args.out / "umap.png", dpi=120, bbox_inches="tight")
    query.write_h5ad(args.out / "query.h5ad")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genohoption`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    metrics = annotate(args)
    summary = {k: v for k, v in metrics.items() if k != "per_class_f1"}
    print(json.dumps(summary, indent=1))
    if "per_class_f1" in metrics:
        print("per-class F1:")
        for name, f1 in metrics["per_class_f1"].items():
            print(f"  {name:<32s} {f1:.3f}")
    print(f"wrote {args.out}/query.h5ad, metrics.json" + ("" if args.no_plot else ", umap.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
