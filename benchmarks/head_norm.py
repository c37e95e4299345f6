"""Normalisation of the classifier's input, measured on the main job over several seeds.

The main job's data and settings (``genohoption annotate``: pbmc68k_reduced, lanes 1-6 reference,
7-8 query, ppr, 30 epochs at most, batch 32, early-stopping patience 8), with
``cls_input_norm="batch"`` (BatchNorm, statistics re-estimated by ``PreciseBatchNorm``) and ``"layer"``
(LayerNorm, per cell). Each seed runs in its own process. Prints one row per run and the mean ± sd.

    python benchmarks/head_norm.py [--norms batch layer] [--seeds 0 1 2 3 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

RUN = """
import json, sys, time, warnings, logging
import torch
norm, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
warnings.filterwarnings("ignore")
logging.getLogger("lightning").setLevel(logging.ERROR)
import scvi
import genohoption as gh
scvi.settings.seed = seed
start = time.perf_counter()
adata = gh.datasets.pbmc68k_reduced()
in_ref = adata.obs["lane"].astype(str).isin(list("123456")).to_numpy()
ref, query = adata[in_ref].copy(), adata[~in_ref].copy()
gh.pp.build_gene_graph(ref)
gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
model = gh.GenoHoptionModel(ref, attention="ppr", cls_input_norm=None if norm == "none" else norm)
model.train(max_epochs=30, batch_size=32, early_stopping_patience=8, enable_progress_bar=False)
model.predict(query)
m = gh.tl.annotation_metrics(query, "bulk_labels")
print(json.dumps({"norm": norm, "seed": seed, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                  "epochs": len(model.history_["train_loss"]), "seconds": time.perf_counter() - start}))
"""


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norms", nargs="+", default=["batch", "layer"], choices=["batch", "layer", "none"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'norm':<7}{'seed':>5}{'accuracy':>10}{'macro F1':>10}{'epochs':>8}{'seconds':>9}")
    for norm in args.norms:
        for seed in args.seeds:
            out = subprocess.run([sys.executable, "-c", RUN, norm, str(seed), str(args.threads)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{norm:<7}{seed:>5}{row['accuracy']:>10.3f}{row['macro_f1']:>10.3f}{row['epochs']:>8}"
                  f"{row['seconds']:>9.0f}", flush=True)
    print()
    for norm in args.norms:
        acc = [r["accuracy"] for r in rows if r["norm"] == norm]
        f1 = [r["macro_f1"] for r in rows if r["norm"] == norm]
        print(f"{norm:<7} accuracy {statistics.mean(acc):.3f} ± {_sd(acc):.3f}   macro F1 "
              f"{statistics.mean(f1):.3f} ± {_sd(f1):.3f}   ({len(acc)} seeds)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
