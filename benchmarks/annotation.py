"""Cell-type annotation accuracy of each attention on PBMC 3k (real data, ../shared/data/annotation).

Stratified 70/30 split (seeded), gene graph on the reference cells, GenoHoption model trained from
scratch, query predicted. Prints a table; ``--json`` writes the rows.

    python benchmarks/annotation.py [--attention ppr heat mask dense] [--epochs 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import scvi
import torch

import genohoption as gh

DATA = Path(os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def run(attention: str, epochs: int, seed: int, max_seq_len: int) -> dict:
    adata = ad.read_h5ad(DATA / "annotation" / "pbmc3k_seurat_labels.h5ad")
    ref, query = gh.tl.stratified_split(adata, "cell_type", test_size=0.3, seed=seed)
    scvi.settings.seed = seed
    start = time.perf_counter()
    gh.pp.build_gene_graph(ref)
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="cell_type")
    model = gh.GenoHoptionModel(ref, attention=attention, max_seq_len=max_seq_len)
    model.train(max_epochs=epochs, batch_size=32, early_stopping=False, enable_progress_bar=False)
    model.predict(query)
    metrics = gh.tl.annotation_metrics(query, "cell_type")
    return {"attention": attention, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "n_reference": ref.n_obs, "n_query": query.n_obs, "graph_edges": int(ref.varp["gene_graph"].nnz),
            "epochs": epochs, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", nargs="+", default=["dense", "mask", "ppr", "heat"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    rows = [run(a, args.epochs, args.seed, args.max_seq_len) for a in args.attention]
    print(f"{'attention':<10}{'accuracy':>10}{'macro F1':>10}{'seconds':>10}")
    for r in rows:
        print(f"{r['attention']:<10}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}{r['seconds']:>10.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
