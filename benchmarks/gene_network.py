"""Gene networks from attention: recovery of held-out prior edges, and per-cell-type modules, on PBMC 3k.

Usage::

    python benchmarks/gene_network.py --fold 0          # one fold -> benchmarks/results/network_fold0.json
    python benchmarks/gene_network.py --all             # folds 0 1 2, one process each, then the tables
    python benchmarks/gene_network.py --assemble        # the tables from the JSON files

Data: PBMC 3k (``../shared/data/annotation``, Seurat labels), 1,000 of its cells (seed 0), the 300 most
variable genes (Seurat flavour), the prior's transcription factors expressed in >= 5 % of the cells and the
genes of the two marker modules below (only GNLY and LYZ of them are among the 300). Prior: the packaged OmniPath
transcriptional network (``gh.pp.read_prior("default")``), restricted to TF -> target pairs among those genes;
its edges are split into 5 folds (seed 0). Fold f holds out its edges: the gene graph is co-expression
(``n_neighbors=20``, ``min_corr=0.4``) + the other prior edges; an annotation model (ppr, K = 6,
d_model 32, 2 layers, 2 heads, 4 epochs of batch 32 on every cell, seed f) is trained on it, and ``model.get_gene_network`` reads out the
averaged attention and its K-hop receptive field ``M``.

Edge recovery: candidates are the pairs (target, TF) for every TF with a held-out edge and every panel gene,
excluding the pairs that are edges of the training graph or prior edges not held out; positives are the
held-out edges. Scores: ``M[target, TF]`` (attention diffusion); the same diffusion of the training graph
with uniform weights (prior-only ranking: the graph's structure without the learned attention); and
``|r|`` of the two genes across cells (co-expression). AUROC and AUPRC (average precision) per fold; paired
differences with a 95 % bootstrap interval over TFs (cluster bootstrap, folds pooled).

Cell types: per-type networks (``groupby="cell_type"``); for the NK / T cytotoxic module and the monocyte
module (marker genes below), the mean receptive-field weight among the module's genes (off-diagonal) in the
NK network and in the CD14+ Mono network; beside it the mean |r| among the same genes within those cells.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import _runner
import numpy as np
import pandas as pd
import scipy.sparse as sp

SHARED = Path(os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PBMC = "annotation/pbmc3k_seurat_labels.h5ad"
RESULTS = _runner.RESULTS
N_FOLDS = 5
N_HVG = 300
N_CELLS = 1000
FOLDS = [0, 1, 2]
MODULES = {
    "NK/T cytotoxic": ["NKG7", "GNLY", "GZMB", "GZMA", "GZMH", "PRF1", "CST7", "CCL5", "CTSW", "KLRD1", "FGFBP2",
                       "CCL4", "SPON2"],
    "monocyte": ["LYZ", "S100A8", "S100A9", "CST3", "FCN1", "TYROBP", "FCER1G", "LGALS2", "CD14", "MS4A6A",
                 "AIF1", "LST1", "FTL", "TYMP"],
}
GROUPS = ["NK", "CD14+ Mono"]
log = logging.getLogger("benchmark")


def panel():
    """PBMC 3k on the benchmark's genes, and the prior's TF -> target edges among them."""
    import anndata as ad
    import scanpy as sc

    import genohoption as gh

    adata = ad.read_h5ad(SHARED / PBMC)
    hv = sc.pp.highly_variable_genes(adata, n_top_genes=N_HVG, flavor="seurat", inplace=False)
    prior = gh.pp.read_prior("default")
    frac = np.asarray((adata.X > 0).mean(0)).ravel()
    tfs = set(prior["source"]) & set(adata.var_names[frac >= 0.05])
    modules = sorted({g for genes in MODULES.values() for g in genes})  # the marker modules, whatever their dispersion
    keep = hv["highly_variable"].to_numpy() | adata.var_names.isin(sorted(tfs)) | adata.var_names.isin(modules)
    adata = adata[:, keep].copy()
    rng = np.random.default_rng(0)  # the same cells for every fold
    adata = adata[np.sort(rng.choice(adata.n_obs, N_CELLS, replace=False))].copy()
    genes = set(adata.var_names)
    edges = prior[prior["source"].isin(genes) & prior["target"].isin(genes) & (prior["source"] != prior["target"])]
    edges = edges.drop_duplicates(["source", "target"]).reset_index(drop=True)
    return adata, edges


def scores_at(M: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.asarray(M[rows, cols]).ravel()


def run_fold(fold: int, epochs: int) -> dict:
    import scvi
    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    import genohoption as gh
    from genohoption.tl._diffusion import diffusion_operator, row_normalize

    adata, edges = panel()
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(edges)) % N_FOLDS
    held, kept = edges[fold_of == fold], edges[fold_of != fold]
    gh.pp.build_gene_graph(adata, prior=kept[["source", "target"]], allow_empty_prior=True)
    graph = sp.csr_matrix(adata.varp["gene_graph"])
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = fold
    torch.manual_seed(fold)
    model = gh.GenoHoptionModel(adata, attention="ppr", d_model=32, n_heads=2, n_layers=2, d_hid=64)
    log.info("  graph %d edges; training", graph.nnz)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=32, train_size=1.0, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.get_gene_network(adata, key_added="net")
    model.get_gene_network(adata, groupby="cell_type", key_added="net_type")
    readout_s = time.perf_counter() - t0
    log.info("  trained %.0f s, read out %.0f s", train_s, readout_s)
    M = sp.csr_matrix(adata.varp["net_diffusion"])
    n = adata.n_vars
    uniform = graph.copy().astype(np.float64)
    uniform.data[:] = 1.0
    uniform = uniform + sp.identity(n, format="csr")
    uniform.data[:] = 1.0
    prior_only = diffusion_operator(row_normalize(uniform), "ppr", n_hops=6, alpha=0.25)
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    corr = np.nan_to_num(np.corrcoef(X.T))

    names = adata.var_names
    idx = pd.Series(np.arange(n), index=names)
    kept_pattern = sp.csr_matrix((np.ones(len(kept)), (idx[kept["target"]].to_numpy(), idx[kept["source"]].to_numpy())),
                                 shape=(n, n))
    blocked = (abs(graph) + kept_pattern).tocsc()  # pairs the model had as edges, or prior edges not held out
    tf_list = sorted(set(held["source"]))
    pos_set = {(idx[t_], idx[s_]) for s_, t_ in zip(held["source"], held["target"], strict=True)}
    rows, cols, labels, tf_of = [], [], [], []
    for tf in tf_list:
        j = idx[tf]
        targets = np.setdiff1d(np.arange(n), [j])
        targets = np.setdiff1d(targets, blocked.indices[blocked.indptr[j]:blocked.indptr[j + 1]])
        rows.append(targets)
        cols.append(np.full(targets.size, j))
        labels.append(np.array([(i, j) in pos_set for i in targets]))
        tf_of.append(np.full(targets.size, tf, dtype=object))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    labels, tf_of = np.concatenate(labels), np.concatenate(tf_of)
    methods = {"attention diffusion": scores_at(M, rows, cols), "prior-only diffusion": scores_at(prior_only, rows, cols),
               "co-expression |r|": np.abs(corr[rows, cols])}
    metrics = {m: {"auroc": float(roc_auc_score(labels, s)), "auprc": float(average_precision_score(labels, s))}
               for m, s in methods.items()}
    metrics["random"] = {"auroc": 0.5, "auprc": float(labels.mean())}

    modules = {}
    for group in GROUPS:
        key = adata.uns["net_type"]["varp_keys"][group]["diffusion"]
        Mg = sp.csr_matrix(adata.varp[key])
        cells = (adata.obs["cell_type"] == group).to_numpy()
        cg = np.nan_to_num(np.corrcoef(X[cells].T))
        for mod, genes in MODULES.items():
            ii = idx[[g for g in genes if g in idx.index]].to_numpy()
            off = ~np.eye(ii.size, dtype=bool)
            modules[f"{group}|{mod}"] = {
                "attention diffusion": float(np.asarray(Mg[ii][:, ii].todense())[off].mean()),
                "co-expression |r|": float(np.abs(cg[np.ix_(ii, ii)])[off].mean()),
                "n_genes": int(ii.size)}
    return {"fold": fold, "metrics": metrics, "modules": modules, "n_genes": n, "n_prior_edges": len(edges),
            "n_held_out": len(held), "n_candidates": int(labels.size), "n_positives": int(labels.sum()),
            "train_seconds": train_s, "readout_seconds": readout_s, "epochs": epochs,
            "per_pair": {"tf": tf_of.tolist(), "label": labels.astype(int).tolist(),
                         **{m: np.round(s, 8).tolist() for m, s in methods.items()}}}


def _auc_pair(frame: pd.DataFrame, a: str, b: str, rng, n_boot: int = 2000) -> tuple[float, float, float, float]:
    """Paired AUROC / AUPRC difference a - b, 95 % bootstrap over TFs (folds pooled, resampled per fold)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    def diff(part):
        out = []
        for _, f in part.groupby("fold"):
            if f["label"].nunique() < 2:
                continue
            out.append((roc_auc_score(f["label"], f[a]) - roc_auc_score(f["label"], f[b]),
                        average_precision_score(f["label"], f[a]) - average_precision_score(f["label"], f[b])))
        return np.mean(out, axis=0)

    point = diff(frame)
    keys = frame[["fold", "tf"]].drop_duplicates().to_numpy()
    groups = {tuple(k): g for k, g in frame.groupby(["fold", "tf"])}
    boots = []
    for _ in range(n_boot):
        pick = keys[rng.integers(0, len(keys), len(keys))]
        boots.append(diff(pd.concat([groups[tuple(k)] for k in pick], ignore_index=True)))
    boots = np.asarray(boots)
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    return point[0], lo[0], hi[0], point[1], lo[1], hi[1]


def assemble() -> str:
    runs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("network_fold*.json"))]
    lines = ["| method | AUROC | AUPRC | ΔAUROC vs attention [95 % CI] | ΔAUPRC vs attention [95 % CI] |", "|---|---|---|---|---|"]
    frame = pd.concat([pd.DataFrame(r["per_pair"]).assign(fold=r["fold"]) for r in runs], ignore_index=True)
    rng = np.random.default_rng(0)
    for m in ["attention diffusion", "prior-only diffusion", "co-expression |r|", "random"]:
        au = [r["metrics"][m]["auroc"] for r in runs]
        ap = [r["metrics"][m]["auprc"] for r in runs]
        cells = [m, f"{np.mean(au):.3f} ± {np.std(au, ddof=1):.3f}", f"{np.mean(ap):.4f} ± {np.std(ap, ddof=1):.4f}"]
        if m in ("prior-only diffusion", "co-expression |r|"):
            d1, l1, h1, d2, l2, h2 = _auc_pair(frame, "attention diffusion", m, rng, n_boot=500)
            cells += [f"{d1:+.3f} [{l1:+.3f}, {h1:+.3f}]", f"{d2:+.4f} [{l2:+.4f}, {h2:+.4f}]"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    r0 = runs[0]
    lines.append(f"\nfolds {[r['fold'] for r in runs]} of {N_FOLDS}; {r0['n_genes']} genes, {r0['n_prior_edges']} prior "
                 f"edges among them; per fold {np.mean([r['n_held_out'] for r in runs]):.0f} held out, "
                 f"{np.mean([r['n_candidates'] for r in runs]):.0f} candidate pairs, "
                 f"{np.mean([r['n_positives'] for r in runs]):.0f} positives; training "
                 f"{np.mean([r['train_seconds'] for r in runs]):.0f} s, read-out "
                 f"{np.mean([r['readout_seconds'] for r in runs]):.0f} s per fold; threads {r0.get('threads')}; "
                 f"load {[r.get('load') for r in runs]}")
    lines.append("\n| network (cells) | module | attention diffusion, mean weight | co-expression mean abs r |")
    lines.append("|---|---|---|---|")
    for key in runs[0]["modules"]:
        att = [r["modules"][key]["attention diffusion"] for r in runs]
        co = [r["modules"][key]["co-expression |r|"] for r in runs]
        group, mod = key.split("|")
        lines.append(f"| {group} | {mod} ({runs[0]['modules'][key]['n_genes']} genes) | {np.mean(att):.4f} ± "
                     f"{np.std(att, ddof=1):.4f} | {np.mean(co):.3f} ± {np.std(co, ddof=1):.3f} |")
    return "\n".join(lines)


def main() -> None:
    _runner.main(__file__, __doc__.split("\n")[0], "fold", FOLDS, run_fold, lambda f: f"network_fold{f}", assemble,
                 epochs=4)


if __name__ == "__main__":
    main()
