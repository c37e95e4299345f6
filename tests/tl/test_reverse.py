"""gh.tl.rank_perturbations / perturbation_hit_rates: constructed cases, a baseline predictor, real Papalexi."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh


def _case(seed=0, n_genes=30):
    """Control cells, 4 candidate effects, observed cells of two of them (with noise)."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    ctrl = ad.AnnData(rng.gamma(2.0, 1.0, (50, n_genes)).astype(np.float32),
                      obs=pd.DataFrame(index=[f"c{i}" for i in range(50)]), var=pd.DataFrame(index=genes))
    effects = {f"{c}+ctrl": rng.normal(0, 1, n_genes) for c in "ABCD"}
    base = np.asarray(ctrl.X.mean(0))
    pred = ad.AnnData(np.vstack([base + e for e in effects.values()]).astype(np.float32),
                      obs=pd.DataFrame(index=list(effects)), var=pd.DataFrame(index=genes))
    rows, labels = [], []
    for c in ("B+ctrl", "D+ctrl"):
        rows.append(np.clip(np.asarray(ctrl.X[:20]) + effects[c] + rng.normal(0, 0.1, (20, n_genes)), 0, None))
        labels += [c] * 20
    observed = ad.AnnData(np.vstack(rows).astype(np.float32),
                          obs=pd.DataFrame({"condition": labels}, index=[f"o{i}" for i in range(len(labels))]),
                          var=pd.DataFrame(index=genes))
    return ctrl, pred, observed, effects


def test_true_condition_ranks_first_and_scores_are_pearson_deltas():
    ctrl, pred, observed, effects = _case()
    ranking = gh.tl.rank_perturbations(pred, ctrl, observed, groupby="condition")
    assert list(ranking.columns) == ["observed", "candidate", "score", "rank", "n_tied"]
    top = ranking[ranking["rank"] == 1].set_index("observed")["candidate"]
    assert top.to_dict() == {"B+ctrl": "B+ctrl", "D+ctrl": "D+ctrl"}
    # the score is the Pearson correlation of the two changes from the control mean, by hand
    base = np.asarray(ctrl.X.mean(0), dtype=np.float64)
    obs_b = np.asarray(observed[observed.obs["condition"] == "B+ctrl"].X.mean(0), dtype=np.float64) - base
    for cand in effects:
        d = np.asarray(pred[cand].X, dtype=np.float64).ravel() - base
        row = ranking[(ranking["observed"] == "B+ctrl") & (ranking["candidate"] == cand)]
        assert row["score"].iloc[0] == pytest.approx(np.corrcoef(d, obs_b)[0, 1], rel=1e-9)
    hits = gh.tl.perturbation_hit_rates(ranking, k=(1, 2))
    assert hits["top1"].tolist() == [1.0, 1.0] and hits["rank"].tolist() == [1, 1]
    mse = gh.tl.rank_perturbations(pred, ctrl, observed, groupby="condition", metric="mse")
    assert (mse[mse["rank"] == 1]["candidate"].tolist()) == ["B+ctrl", "D+ctrl"]
    one = gh.tl.rank_perturbations(pred, ctrl, observed[observed.obs["condition"] == "D+ctrl"],
                                   ["A+ctrl", "D+ctrl"], genes=["g1", "g2", "g3", "g5", "g8"])
    assert set(one["observed"]) == {"observed"} and len(one) == 2


def test_ties_give_the_random_expectation():
    ctrl, pred, observed, _ = _case()
    same = pred.copy()
    same.X[:] = same.X[0]  # every candidate predicts the same profile
    hits = gh.tl.perturbation_hit_rates(gh.tl.rank_perturbations(same, ctrl, observed, groupby="condition"), k=(1, 2, 4))
    np.testing.assert_allclose(hits[["top1", "top2", "top4"]].to_numpy(), [[0.25, 0.5, 1.0]] * 2)
    # a predictor object: the no-change baseline predicts no change, scored NaN for every candidate (all tied)
    train = ad.concat([ctrl, observed])
    train.obs["condition"] = ["ctrl"] * ctrl.n_obs + list(observed.obs["condition"])
    baseline = gh.tl.NoChangeBaseline().fit(train)
    ranking = gh.tl.rank_perturbations(baseline, ctrl, observed, ["A+ctrl", "B+ctrl", "D+ctrl"], groupby="condition")
    assert ranking["score"].isna().all() and (ranking["n_tied"] == 3).all()
    # a truth map: the profile named "x" is the true condition B
    renamed = ranking.replace({"observed": {"B+ctrl": "x"}})
    assert gh.tl.perturbation_hit_rates(renamed, k=(3,), truth={"x": "B+ctrl"})["top3"].tolist() == [1.0, 1.0]


def test_bad_input():
    ctrl, pred, observed, _ = _case()
    with pytest.raises(ValueError, match="metric"):
        gh.tl.rank_perturbations(pred, ctrl, observed, metric="spearman")
    with pytest.raises(ValueError, match="not among the given predictions"):
        gh.tl.rank_perturbations(pred, ctrl, observed, ["Z+ctrl"])
    with pytest.raises(TypeError, match="predict_perturbation"):
        gh.tl.rank_perturbations(object(), ctrl, observed, ["A+ctrl"])
    with pytest.raises(ValueError, match="Pass candidates"):
        gh.tl.rank_perturbations(gh.tl.MeanBaseline(), ctrl, observed)
    with pytest.raises(KeyError):
        gh.tl.rank_perturbations(pred, ctrl, observed, groupby="nope")
    with pytest.raises(ValueError, match="genes"):
        gh.tl.rank_perturbations(pred, ctrl, observed, genes=["nope"])
    ranking = gh.tl.rank_perturbations(pred, ctrl, observed, ["A+ctrl", "C+ctrl"], groupby="condition")
    with pytest.raises(ValueError, match="not among its candidates"):
        gh.tl.perturbation_hit_rates(ranking)
    with pytest.raises(ValueError, match="positive integers"):
        gh.tl.perturbation_hit_rates(ranking, k=(0,))


def test_papalexi_seen_knockouts_are_found_by_their_own_training_means(shared_data):
    """Real data: the additive baseline fitted on every condition predicts each seen knock-out by its own mean,
    so the measured, visibly knocked-down targets rank first (the ranking's mechanics on a real screen)."""
    adata = gh.datasets.read_gears(shared_data / "perturbation" / "papalexi2021_thp1_gears.h5ad")
    cond = adata.obs["condition"].astype(str)
    rng = np.random.default_rng(0)
    keep = np.zeros(adata.n_obs, bool)
    for c in set(cond):
        rows = np.flatnonzero(cond == c)
        keep[rng.choice(rows, min(rows.size, 300 if c == "ctrl" else 60), replace=False)] = True
    adata = adata[keep].copy()
    cond = adata.obs["condition"].astype(str)
    ctrl = adata[(cond == "ctrl").to_numpy()].copy()
    baseline = gh.tl.AdditiveBaseline().fit(adata, gene_symbols="gene_name")
    candidates = sorted(set(cond) - {"ctrl"})
    measured = [c for c in candidates if c.split("+")[0] in set(adata.var["gene_name"])]
    observed = adata[cond.isin(measured).to_numpy()].copy()
    hits = gh.tl.perturbation_hit_rates(gh.tl.rank_perturbations(baseline, ctrl, observed, candidates,
                                                                 groupby="condition"), k=(1, 3))
    assert len(hits) == 9
    assert hits["top1"].mean() >= 0.75 and hits["top3"].mean() == 1.0
