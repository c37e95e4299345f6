"""Input and read-out conventions of a model trained from scratch: the main job with each, several seeds.

Each run is the main job itself, ``genohoption annotate`` on scanpy's bundled pbmc68k_reduced (lanes 1-6
reference, 7-8 query; PPR attention, 15 epochs, every reference cell trains, the logistic regression of the
same run beside it), in a fresh process, with ``GenoHoptionModel(conventions=...)`` set for the model it
builds (its ``__init__`` is wrapped; nothing else changes). Conventions compared (``--variants``):

- ``genohoption``: the ``<cls>`` token's value 0, the values as registered (log-normalised);
- ``scgpt``: scGPT's: ``<cls>`` value -2 (scGPT's ``pad_value``), values binned per cell into 51 bins with
  ties at random (``_digitize(side="both")``);
- ``cls-2``: only the ``<cls>`` value of scGPT; ``binned``: only the binning.

Gene sampling above ``max_seq_len`` does not apply (the main job has no length cap). The L2 normalisation of
the cell embedding changes no prediction (the classifier reads the embedding before it); it is measured on
the latent of the same runs: a 15-nearest-neighbour classifier (scikit-learn, Euclidean) fitted on the
reference cells' latent predicts the query's cell types, on the latent as is and L2-normalised, beside the
same classifier on 50 principal components of the expression (fitted on the reference).

    python benchmarks/conventions.py [--seeds 0 1 2 3 4] [--variants genohoption scgpt cls-2 binned]
        [--jobs 2] [--threads 1] [--json out.json] [--summarize out.json ...]
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

VARIANTS = {
    "genohoption": {"cls_value": 0.0, "n_bins": None},
    "scgpt": {"cls_value": -2.0, "n_bins": 51, "bin_ties": "random"},
    "cls-2": {"cls_value": -2.0, "n_bins": None},
    "binned": {"cls_value": 0.0, "n_bins": 51, "bin_ties": "random"},
}

# one run, in a fresh process: prints one JSON line
RUN = r"""
import functools, json, logging, sys, tempfile, time, warnings
from pathlib import Path
cfg = json.loads(sys.argv[1])
warnings.filterwarnings("ignore")
for name in ("lightning", "lightning.pytorch", "scvi"):
    logging.getLogger(name).setLevel(logging.ERROR)
import numpy as np
import scanpy as sc
from sklearn.neighbors import KNeighborsClassifier
import genohoption as gh
from genohoption.cli import main

built = []
init = gh.GenoHoptionModel.__init__

@functools.wraps(init)
def with_conventions(self, *args, **kwargs):
    kwargs["conventions"] = {**(kwargs.get("conventions") or {}), **cfg["conventions"]}
    init(self, *args, **kwargs)
    built.append(self)

gh.GenoHoptionModel.__init__ = with_conventions
out = Path(tempfile.mkdtemp())
start = time.perf_counter()
code = main(["annotate", "--seed", str(cfg["seed"]), "--threads", str(cfg["threads"]), "--out", str(out), "--no-plot"])
seconds = time.perf_counter() - start
assert code == 0 and len(built) == 1
metrics = json.loads((out / "metrics.json").read_text())
model = built[0]
assert model.params["conventions"]["cls_value"] == cfg["conventions"]["cls_value"]
adata = gh.datasets.pbmc68k_reduced()
in_ref = adata.obs["lane"].astype(str).isin(list("123456")).to_numpy()
ref, query = adata[in_ref].copy(), adata[~in_ref].copy()
z_ref, z_query = model.get_latent_representation(ref), model.get_latent_representation(query)

def knn(a, b):
    clf = KNeighborsClassifier(15).fit(a, ref.obs["bulk_labels"])
    return float((clf.predict(b) == query.obs["bulk_labels"].to_numpy()).mean())

def l2(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)

sc.pp.pca(ref, n_comps=50, random_state=cfg["seed"])
pcs = ref.varm["PCs"]
mean = np.asarray(ref.X.mean(0)).ravel()
xq = query.X.toarray() if hasattr(query.X, "toarray") else np.asarray(query.X)
print(json.dumps({**cfg, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                  "logreg_accuracy": metrics["baseline_logreg"]["accuracy"],
                  "logreg_macro_f1": metrics["baseline_logreg"]["macro_f1"],
                  "knn_latent": knn(z_ref, z_query), "knn_latent_l2": knn(l2(z_ref), l2(z_query)),
                  "knn_pca": knn(ref.obsm["X_pca"], (xq - mean) @ pcs),
                  "seconds": seconds, "threads_used": metrics["threads"]}))
"""

METRICS = ("accuracy", "macro_f1", "logreg_accuracy", "logreg_macro_f1", "knn_latent", "knn_latent_l2", "knn_pca")


def _run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"run {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> None:
    print("\n| conventions | accuracy | macro F1 | logistic regression accuracy | logistic regression macro F1 | "
          "15-NN on latent | 15-NN on L2-normalised latent | 15-NN on 50 PCs | seconds | seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]

        def cell(key, rs=rs):
            v = [r[key] for r in rs]
            return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"

        print(f"| {name} | " + " | ".join(cell(k) for k in METRICS)
              + f" | {statistics.mean(r['seconds'] for r in rs):.0f} | {len(rs)} |")
    names = list(dict.fromkeys(r["variant"] for r in rows))
    if "genohoption" in names:
        print("\npaired difference against `genohoption` (same seed), mean ± sd:")
        base = {r["seed"]: r for r in rows if r["variant"] == "genohoption"}
        for name in names:
            if name == "genohoption":
                continue
            pairs = [(r, base[r["seed"]]) for r in rows if r["variant"] == name and r["seed"] in base]
            for key in ("accuracy", "macro_f1"):
                d = [a[key] - b[key] for a, b in pairs]
                sd = statistics.stdev(d) if len(d) > 1 else 0.0
                print(f"- {name} {key}: {statistics.mean(d):+.3f} ± {sd:.3f} ({len(d)} seeds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (--threads of the job)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--json", type=Path, help="write every run's row here")
    parser.add_argument("--summarize", type=Path, nargs="+", help="print the table of --json files; run nothing")
    args = parser.parse_args()
    if args.summarize:
        _table([row for path in args.summarize for row in json.loads(path.read_text())])
        return
    cfgs = [{"variant": v, "conventions": VARIANTS[v], "seed": s, "threads": args.threads}
            for s in args.seeds for v in args.variants]
    start = time.time()
    print(f"{len(cfgs)} runs, {args.jobs} at a time, {args.threads} thread(s) each; "
          f"load average {os.getloadavg()}", flush=True)
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for i, row in enumerate(pool.map(_run, cfgs)):
            rows.append(row)
            print(f"[{i + 1}/{len(cfgs)}] seed {row['seed']} {row['variant']}: accuracy {row['accuracy']:.3f}, "
                  f"macro F1 {row['macro_f1']:.3f} (logistic regression {row['logreg_accuracy']:.3f} / "
                  f"{row['logreg_macro_f1']:.3f}), {row['seconds']:.0f} s; load {os.getloadavg()[0]:.1f}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{len(rows)} runs in {time.time() - start:.0f} s; load average at the end {os.getloadavg()}")
    _table(rows)


if __name__ == "__main__":
    main()
