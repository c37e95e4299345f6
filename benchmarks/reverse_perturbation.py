"""Reverse perturbation on real CRISPR screens: which knock-out produced an observed state?

Usage::

    python benchmarks/reverse_perturbation.py --run "Papalexi 1"   # one run -> benchmarks/results/reverse_*.json
    python benchmarks/reverse_perturbation.py --all                 # every run, one process each, then the table
    python benchmarks/reverse_perturbation.py --assemble            # the table from the JSON files

Runs: Papalexi (seeds 1, 2, 3 of GEARS' simulation split, 7 held-out targets each) and McFaline (one run per
cell line, seed 1, 3 held-out targets each), with the training set-up of ``benchmarks/perturbation.py``: at most
150 training cells per seen target and 500 control cells, gene graph on them (co-expression + packaged prior),
a GenoHoption ppr model (d_model 32, 2 layers, 2 heads, K = 6, MSE, at most 12 epochs, early stopping), and the
four baselines of ``gh.tl.fit_perturbation_baselines`` fitted on the same cells. Every method predicts every
candidate from the same training control cells; ``gh.tl.rank_perturbations`` ranks the candidates for each
held-out condition's observed cells (pearson of changes from the control mean, all genes), and
``gh.tl.perturbation_hit_rates`` scores the rank of the true condition (ties broken at random, in expectation).
Two candidate sets: the held-out conditions of the run ("held-out"), and every condition of the screen
("all"; the seen ones included). Also a ranking without a model, "target drop": a candidate scores minus the
observed change of its own target gene (measured targets only; unmeasured ones tie at the bottom), the
knock-down's strongest simple signal. Random: k / n_candidates.
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
MCFALINE = "perturbation/mcfaline2023_gbm_perturbench_subset_gears.h5ad"
RESULTS = _runner.RESULTS
RUNS = ["Papalexi 1", "Papalexi 2", "Papalexi 3", "McFaline A172", "McFaline T98G", "McFaline U87MG"]
METHODS = ["ppr", "no_change", "mean", "additive", "linear", "target drop", "random"]
K = (1, 3)
log = logging.getLogger("benchmark")


def _data(label: str):
    import genohoption as gh

    name, key = label.split()
    if name == "Papalexi":
        return gh.datasets.read_gears(SHARED / PAPALEXI), int(key)
    adata = gh.datasets.read_gears(SHARED / MCFALINE)
    return adata[(adata.obs["cell_type"] == key).to_numpy()].copy(), 1


def target_drop_ranking(ctrl, observed, candidates, groupby: str) -> pd.DataFrame:
    """Rank candidates by the observed drop of their own target gene (a ranking without a model)."""
    import genohoption as gh

    symbols = pd.Index(ctrl.var["gene_name"].astype(str))
    base = np.asarray(ctrl.X.mean(0)).ravel()
    rows = []
    for name in dict.fromkeys(observed.obs[groupby].astype(str)):
        mean = np.asarray(observed[(observed.obs[groupby] == name).to_numpy()].X.mean(0)).ravel()
        score = np.array([-(mean - base)[symbols.get_loc(g)] if g in symbols else -np.inf
                          for c in candidates for g in gh.tl.parse_condition(c)[:1]])
        better = (score[None, :] > score[:, None]).sum(1)
        tied = (score[None, :] == score[:, None]).sum(1)
        rows += [(name, c, s, int(b) + 1, int(t)) for c, s, b, t in zip(candidates, score, better, tied, strict=True)]
    return pd.DataFrame(rows, columns=["observed", "candidate", "score", "rank", "n_tied"])


def run(label: str, epochs: int, max_cells: int = 150, max_control: int = 500) -> dict:
    """One split: per held-out condition, the true condition's expected top-k hit of every method."""
    import scvi
    import torch

    import genohoption as gh

    adata, seed = _data(label)
    groups = gh.tl.perturbation_split(adata, seed=seed)
    values = adata.obs["condition"].astype(str)
    test = sorted(c for g in groups.values() for c in g)
    every = sorted(set(values) - {"ctrl"})
    rng = np.random.default_rng(seed)
    train_mask = np.zeros(adata.n_obs, dtype=bool)
    seen = (adata.obs["split"] != "test").to_numpy()
    for c in sorted(set(values[seen])):
        rows = np.flatnonzero(seen & (values == c).to_numpy())
        cap = max_control if c == "ctrl" else max_cells
        train_mask[rng.choice(rows, min(rows.size, cap), replace=False)] = True
    train = adata[train_mask].copy()
    gh.pp.build_gene_graph(train, gene_symbols="gene_name", allow_empty_prior=True)
    targets = sorted({g for c in every for g in gh.tl.parse_condition(c)})
    ctrl = train[(train.obs["condition"] == "ctrl").to_numpy()].copy()
    observed = adata[values.isin(test).to_numpy()].copy()
    predictions, seconds = {}, 0.0
    for name, baseline in gh.tl.fit_perturbation_baselines(train, gene_symbols="gene_name").items():
        predictions[name] = baseline.predict_perturbation(ctrl.copy(), every)
    small = train.n_obs < 2000
    batch_size, max_epochs = (32, 2 * epochs) if small else (64, epochs)
    data = train.copy()
    gh.GenoHoptionModel.setup_anndata(data, perturbation_key="condition", gene_symbols="gene_name",
                                      extra_genes=targets)
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    model = gh.GenoHoptionModel(data, attention="ppr", d_model=32, n_heads=2, n_layers=2, d_hid=64)
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, batch_size=batch_size, lr=1e-3, early_stopping_patience=3,
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    seconds = time.perf_counter() - t0
    predictions["ppr"] = model.predict_perturbation(ctrl.copy(), every, batch_size=256)
    measured = set(adata.var["gene_name"].astype(str))
    out = {"label": label, "seed": seed, "train_seconds": seconds, "test": test, "n_all": len(every),
           "measured": {c: all(g in measured for g in gh.tl.parse_condition(c)) for c in test}, "hits": {}}
    for cand_name, cands in (("held-out", test), ("all", every)):
        for method in METHODS:
            if method == "random":
                hits = pd.DataFrame({f"top{k}": min(k / len(cands), 1.0) for k in K} | {"rank": np.nan},
                                    index=test)
            else:
                if method == "target drop":
                    ranking = target_drop_ranking(ctrl, observed, cands, "condition")
                else:
                    ranking = gh.tl.rank_perturbations(predictions[method], ctrl, observed, cands,
                                                       groupby="condition")
                hits = gh.tl.perturbation_hit_rates(ranking, k=K)
            out["hits"][f"{cand_name}|{method}"] = hits.loc[test].to_dict(orient="index")
    return out


def bootstrap_ci(x: np.ndarray, n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``x``."""
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n, x.size))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def assemble() -> str:
    """Markdown tables from benchmarks/results/reverse_*.json."""
    files = sorted(RESULTS.glob("reverse_*.json"))
    runs = [json.loads(f.read_text()) for f in files]
    lines = []
    for cand in ("held-out", "all"):
        lines.append(f"\nCandidates: {cand}\n")
        header = ["dataset", "method", "n conditions", "candidates"] + [f"top-{k}" for k in K]
        header += [f"top-{k} − best baseline [95 % CI]" for k in K]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for dataset in ("Papalexi", "McFaline"):
            part = [r for r in runs if r["label"].startswith(dataset)]
            if not part:
                continue
            per = {m: pd.concat([pd.DataFrame.from_dict(r["hits"][f"{cand}|{m}"], orient="index")
                                 .assign(run=r["label"]) for r in part]) for m in METHODS}
            n_cand = sorted({len(r["test"]) if cand == "held-out" else r["n_all"] for r in part})
            baselines = [m for m in METHODS if m not in ("ppr", "random")]
            best = {k: max(baselines, key=lambda m, k=k: per[m][f"top{k}"].mean()) for k in K}
            for m in METHODS:
                table = per[m]
                cells = [dataset, m, str(len(table)), "/".join(map(str, n_cand))]
                cells += [f"{table[f'top{k}'].mean():.3f}" for k in K]
                for k in K:
                    if m == "ppr":
                        diff = (table[f"top{k}"] - per[best[k]][f"top{k}"]).to_numpy(dtype=float)
                        lo, hi = bootstrap_ci(diff)
                        cells.append(f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] vs {best[k]}")
                    else:
                        cells.append("")
                lines.append("| " + " | ".join(cells) + " |")
    secs = [r["train_seconds"] for r in runs]
    lines.append(f"\nruns: {', '.join(r['label'] for r in runs)}; ppr training {np.mean(secs):.0f} s per model "
                 f"(mean); threads {runs[0].get('threads')}; load at start "
                 f"{', '.join(str(r.get('load')) for r in runs)}")
    return "\n".join(lines)


def main() -> None:
    _runner.main(__file__, __doc__.split("\n")[0], "run", RUNS, run, lambda r: f"reverse_{r.replace(' ', '_')}",
                 assemble, epochs=12, flag_type=str)


if __name__ == "__main__":
    main()
