"""In silico deletion on Papalexi: does deleting a knock-out target move control cells toward its knock-out cells?

Usage::

    python benchmarks/in_silico.py --seed 0       # one model seed -> benchmarks/results/in_silico_seed0.json
    python benchmarks/in_silico.py --all          # seeds 0 1 2, one process each, then the table
    python benchmarks/in_silico.py --assemble     # the table from the JSON files

Data: Papalexi et al. 2021 (``../shared/data/perturbation``; THP-1, CRISPR knock-out, 299 genes). A GenoHoption
model is pretrained (masked expression, ``setup_anndata(labels_key=None)``) on the control cells only (gene graph:
co-expression on them + the packaged prior; ppr, K = 6, d_model 32, 2 layers, 2 heads, 5 epochs, seed s). From
200 control cells (seed s), ``gh.tl.in_silico_perturbation(mode="delete")`` deletes each measured knock-out target
and, as the null, each of the 10 non-target genes closest to it in mean control expression (expression-matched
random genes). ``gh.tl.shift_alignment`` scores each target: the cosine between the mean in silico shift of the
cells expressing it and the direction from those cells' mean embedding to its knock-out cells' mean embedding
(same model), against the 10 matched genes' shifts (permutation p-value). Overall: the mean alignment over the
targets against 10,000 draws of one matched gene per target. Beside it, the same test in expression space without a
model (deleting the gene shifts a cell by minus its value of that gene; direction to the knock-out cells' mean
expression).
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

SHARED = Path(os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAPALEXI = "perturbation/papalexi2021_thp1_gears.h5ad"
RESULTS = _runner.RESULTS
SEEDS = [0, 1, 2]
N_NULL = 10
N_START = 200
log = logging.getLogger("benchmark")


def _cos(a, b) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else float("nan")


def expression_alignment(X: np.ndarray, observed: dict[str, np.ndarray], genes: pd.Index, gene: str,
                         direction_of: str) -> float:
    """Alignment of deleting ``gene`` in expression space with the direction to ``direction_of``'s knock-out cells."""
    j = genes.get_loc(gene)
    cells = X[:, j] > 0
    if not cells.any():
        return float("nan")
    shift = np.zeros(X.shape[1])
    shift[j] = -X[cells, j].mean()
    return _cos(shift, observed[direction_of].mean(0) - X[cells].mean(0))


def run(seed: int, epochs: int) -> dict:
    import scvi
    import torch

    import genohoption as gh

    adata = gh.datasets.read_gears(SHARED / PAPALEXI)
    genes = adata.var_names.astype(str)
    symbols = adata.var["gene_name"].astype(str)
    cond = adata.obs["condition"].astype(str)
    targets = sorted({c.split("+")[0] for c in set(cond) - {"ctrl"}} & set(symbols))
    ctrl = adata[(cond == "ctrl").to_numpy()].copy()
    gh.pp.build_gene_graph(ctrl, gene_symbols="gene_name", allow_empty_prior=True)
    gh.GenoHoptionModel.setup_anndata(ctrl, labels_key=None)
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    model = gh.GenoHoptionModel(ctrl, attention="ppr", d_model=32, n_heads=2, n_layers=2, d_hid=64)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=64, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False)
    train_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    start = ctrl[np.sort(rng.choice(ctrl.n_obs, N_START, replace=False))].copy()
    Xc = start.X.toarray()
    mean_expr = pd.Series(np.asarray(ctrl.X.mean(0)).ravel(), index=genes)
    to_gene = dict(zip(symbols, genes, strict=True))
    pool = mean_expr.drop([to_gene[t] for t in targets])
    null = {}
    for t in targets:
        g = to_gene[t]
        null[g] = (pool - mean_expr[g]).abs().sort_values().index[:N_NULL].tolist()
    perturb = sorted({to_gene[t] for t in targets} | {h for hs in null.values() for h in hs})
    t0 = time.perf_counter()
    result = gh.tl.in_silico_perturbation(model, start, perturb, mode="delete", return_embeddings=True,
                                          batch_size=200)
    perturb_s = time.perf_counter() - t0
    ko, ko_expr = {}, {}
    for t in targets:
        cells = adata[(cond == f"{t}+ctrl").to_numpy()].copy()
        ko[to_gene[t]] = model.get_latent_representation(cells)
        ko_expr[to_gene[t]] = cells.X.toarray()
    model_table = gh.tl.shift_alignment(result, ko, null=null)
    expr = {}
    for g in ko:
        a = expression_alignment(Xc, ko_expr, genes, g, g)
        nulls = np.array([expression_alignment(Xc, ko_expr, genes, h, g) for h in null[g]])
        nulls = nulls[np.isfinite(nulls)]
        expr[g] = {"alignment": a, "null_mean": float(nulls.mean()), "n_null": int(nulls.size),
                   "p_value": float((1 + (nulls >= a).sum()) / (1 + nulls.size)), "null": nulls.tolist()}
    model_null = {}
    for g in ko:
        model_null[g] = gh.tl.shift_alignment(result, {g: ko[g]}, null={g: null[g]}).loc[g].to_dict()
        model_null[g]["null"] = [gh.tl.shift_alignment(result, {h: ko[g]}).loc[h, "alignment"] for h in null[g]]
    return {"seed": seed, "targets": [to_gene[t] for t in targets], "train_seconds": train_s,
            "perturb_seconds": perturb_s, "n_genes_perturbed": len(perturb), "n_start": N_START,
            "n_cells_expressing": result.n_cells.to_dict(), "model": model_null,
            "model_table": model_table.to_dict(orient="index"), "expression": expr, "epochs": epochs}


def _overall(per_gene: dict, rng, n_draws: int = 10000) -> tuple[float, float, float]:
    """Mean alignment over targets, the null mean of one matched gene per target, and the permutation p-value."""
    genes = [g for g in per_gene if np.isfinite(per_gene[g]["alignment"]) and per_gene[g]["null"]]
    obs = float(np.mean([per_gene[g]["alignment"] for g in genes]))
    draws = np.mean([rng.choice(np.asarray(per_gene[g]["null"]), n_draws) for g in genes], axis=0)
    return obs, float(draws.mean()), float((1 + (draws >= obs).sum()) / (1 + n_draws))


def assemble() -> str:
    runs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("in_silico_seed*.json"))]
    rng = np.random.default_rng(0)
    lines = ["| space | seed | targets | mean alignment (targets) | mean alignment (matched random genes) | "
             "permutation p | targets above their null mean |", "|---|---|---|---|---|---|---|"]
    for space in ("model", "expression"):
        for r in runs:
            obs, null, p = _overall(r[space], rng)
            n_sig = sum(v["alignment"] > v["null_mean"] for v in r[space].values())
            lines.append(f"| {'GenoHoption embedding' if space == 'model' else 'expression (no model)'} | {r['seed']} | "
                         f"{len(r[space])} | {obs:.3f} | {null:.3f} | {p:.4f} | {n_sig} |")
    lines.append("\nPer target (seed-wise alignment; matched-null mean in brackets; p-values):\n")
    lines.append("| target | cells expressing (of 200) | " + " | ".join(f"seed {r['seed']}" for r in runs)
                 + " | expression (no model) |")
    lines.append("|---|---|" + "---|" * (len(runs) + 1))
    for g in runs[0]["targets"]:
        cells = [g, str(runs[0]["n_cells_expressing"][g])]
        for r in runs:
            v = r["model"][g]
            cells.append(f"{v['alignment']:.3f} [{v['null_mean']:.3f}] p={v['p_value']:.3f}")
        v = runs[0]["expression"][g]
        cells.append(f"{v['alignment']:.3f} [{v['null_mean']:.3f}] p={v['p_value']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\ntraining {np.mean([r['train_seconds'] for r in runs]):.0f} s, in silico deletion of "
                 f"{runs[0]['n_genes_perturbed']} genes in {runs[0]['n_start']} cells "
                 f"{np.mean([r['perturb_seconds'] for r in runs]):.0f} s per seed; threads {runs[0].get('threads')}; "
                 f"load {[r.get('load') for r in runs]}")
    return "\n".join(lines)


def main() -> None:
    _runner.main(__file__, __doc__.split("\n")[0], "seed", SEEDS, run, lambda s: f"in_silico_seed{s}", assemble,
                 epochs=5)


if __name__ == "__main__":
    main()
