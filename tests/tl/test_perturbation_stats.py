"""Folds, bootstrap intervals, paired differences, summaries, the shuffle null and the noise ceiling on known answers."""

from __future__ import annotations

import copy
import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh


def _screen(n_measured=4, n_unmeasured=7, cells=3):
    genes = [f"M{i}" for i in range(n_measured)] + ["X0", "X1"]
    conditions = [f"M{i}+ctrl" for i in range(n_measured)] + [f"U{i}+ctrl" for i in range(n_unmeasured)]
    values = np.repeat(["ctrl", *conditions], cells)
    obs = pd.DataFrame({"condition": values}, index=[f"c{i}" for i in range(values.size)])
    return ad.AnnData(np.zeros((values.size, len(genes)), np.float32), obs=obs, var=pd.DataFrame(index=genes))


def test_folds_disjoint_stratified_seeded():
    adata = _screen()
    before = copy.deepcopy(adata)
    folds = gh.tl.perturbation_folds(adata, 3, seed=4)
    flat = [c for f in folds for c in f]
    conditions = sorted(set(adata.obs["condition"]) - {"ctrl"})
    assert sorted(flat) == conditions and len(flat) == len(set(flat))  # every condition held out exactly once
    assert sorted(len(f) for f in folds) == [3, 4, 4]  # 11 conditions: sizes differ by at most one
    measured = [sum(c.startswith("M") for c in f) for f in folds]
    assert sorted(measured) == [1, 1, 2]  # the 4 measured targets spread over the folds
    assert folds == [sorted(f) for f in folds]
    assert gh.tl.perturbation_folds(adata, 3, seed=4) == folds
    assert any(gh.tl.perturbation_folds(adata, 3, seed=s) != folds for s in range(5, 10))
    pd.testing.assert_frame_equal(adata.obs, before.obs)  # nothing written
    # the kfold split of screen_split holds out exactly one fold
    train, test, _ = gh.tl.screen_split(adata, "kfold", n_folds=3, fold=2, seed=4)
    assert test == folds[2]
    held = adata.obs["condition"].isin(folds[2]).to_numpy()
    np.testing.assert_array_equal(train, ~held)
    assert adata.uns["split"]["folds"] == folds and set(adata.obs["split"]) == {"train", "test"}
    for bad in (1, 12):
        with pytest.raises(ValueError, match="n_folds must be between 2"):
            gh.tl.perturbation_folds(adata, bad)
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 3\)"):
        gh.tl.screen_split(adata, "kfold", n_folds=3, fold=3)


def test_bootstrap_interval_known_answers():
    # two values 0 and 1: resampled means are 0 (1/4), 0.5 (1/2) or 1 (1/4): the 95 % interval is [0, 1]
    est, low, high = gh.tl.bootstrap_interval([0.0, 1.0], n_boot=4000, seed=1)
    assert (est, low, high) == (0.5, 0.0, 1.0)
    est, low, high = gh.tl.bootstrap_interval([0.0, 1.0], n_boot=4000, seed=1, level=0.4)
    assert (low, high) == (0.5, 0.5)  # the central 40 % of {0: 1/4, 0.5: 1/2, 1: 1/4}
    assert gh.tl.bootstrap_interval(np.full(7, 0.3)) == pytest.approx((0.3, 0.3, 0.3))
    assert gh.tl.bootstrap_interval([1.0, np.nan, 3.0], n_boot=200)[0] == 2.0  # NaN rows dropped
    assert all(np.isnan(gh.tl.bootstrap_interval([np.nan])))
    # the interval of a larger sample covers its mean and narrows with n
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    s, l_ = gh.tl.bootstrap_interval(small), gh.tl.bootstrap_interval(large)
    assert s[1] < s[0] < s[2] and (l_[2] - l_[1]) < (s[2] - s[1]) / 5
    assert abs((l_[2] - l_[1]) - 2 * 1.96 / np.sqrt(2000)) < 0.03  # about the normal interval
    with pytest.raises(ValueError, match="level"):
        gh.tl.bootstrap_interval([1.0], level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        gh.tl.bootstrap_interval([1.0], n_boot=0)


def test_paired_difference_known_answers():
    a = np.array([0.2, 0.5, 0.9, 0.1])
    assert gh.tl.paired_difference(a, a.copy()) == (0.0, 0.0, 0.0)  # identical predictions: exactly 0
    assert gh.tl.paired_difference(a + 0.25, a) == pytest.approx((0.25, 0.25, 0.25))  # a constant shift
    # pairing removes the spread the conditions share: unpaired, this difference would not be significant
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1, 40)
    d, low, high = gh.tl.paired_difference(shared + 0.1 + rng.normal(0, 0.02, 40), shared)
    assert 0.08 < low < d < high < 0.12 and high - low < 0.02
    own = gh.tl.bootstrap_interval(shared)
    assert own[2] - own[1] > 0.4  # each side alone varies 20 times more
    with pytest.raises(ValueError, match="same length"):
        gh.tl.paired_difference([1.0, 2.0], [1.0])


def _scores():
    """Three conditions; 'model' with two seeds; 'no_change' (pΔ 0 by construction), 'mean', 'good' baselines."""
    rows = []
    table = {  # method: (pearson_delta, l2_top_expressed) per condition
        "model": [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0)],
        "no_change": [(0.0, 2.0), (0.0, 2.0), (0.0, 2.0)],
        "mean": [(0.4, 2.0), (0.3, 4.0), (0.2, 6.0)],
        "good": [(0.45, 1.5), (0.55, 3.0), (0.5, 4.5)],
    }
    for method, values in table.items():
        for k, (p, l2) in enumerate(values):
            rows.append({"method": method, "condition": f"C{k}", "seed": 1, "pearson_delta": p, "l2_top_expressed": l2})
    # a second model seed: the model's score per condition is the mean over seeds
    for k, (p, l2) in enumerate(table["model"]):
        rows.append({"method": "model", "condition": f"C{k}", "seed": 2, "pearson_delta": p + 0.2,
                     "l2_top_expressed": l2})
    return pd.DataFrame(rows)


def test_summary_known_answers():
    scores = _scores()
    s = gh.tl.summarize_perturbation_scores(scores, baselines=["no_change", "mean", "good"], n_boot=500)
    row = s.set_index(["method", "metric"])
    assert row.loc[("model", "pearson_delta"), "estimate"] == pytest.approx(0.7)  # seeds averaged first
    assert bool(row.loc[("no_change", "pearson_delta"), "degenerate"])
    assert not row.loc[("mean", "pearson_delta"), "degenerate"]
    # best baseline for pΔ: good (0.5); the model (0.6, 0.8, 0.7 after averaging seeds) is +0.15, +0.25, +0.2
    assert row.loc[("model", "pearson_delta"), "best_baseline"] == "good"
    diff, low, high = row.loc[("model", "pearson_delta"), ["difference", "difference_low", "difference_high"]]
    assert diff == pytest.approx(0.2) and 0.15 - 1e-12 <= low < 0.2 < high <= 0.25 + 1e-12
    # L2 skill against the mean baseline: 1 - mean(error) / mean(error of the mean baseline)
    assert row.loc[("model", "l2_skill"), "estimate"] == pytest.approx(1 - 2.0 / 4.0)
    assert row.loc[("good", "l2_skill"), "estimate"] == pytest.approx(1 - 3.0 / 4.0)
    assert row.loc[("mean", "l2_skill"), "estimate"] == 0.0 and bool(row.loc[("mean", "l2_skill"), "degenerate"])
    # best baseline for the skill: no_change (1 - 2/4 = 0.5) beats good (0.25); the mean baseline is never it
    assert row.loc[("model", "l2_skill"), "best_baseline"] == "no_change"
    assert row.loc[("model", "l2_skill"), "difference"] == pytest.approx(0.0)
    # an error: lower is better and the difference is baseline minus method
    assert row.loc[("model", "l2_top_expressed"), "best_baseline"] == "no_change"
    assert row.loc[("model", "l2_top_expressed"), "difference"] == pytest.approx(2.0 - 2.0)
    assert row.loc[("model", "pearson_delta"), "n_conditions"] == 3
    assert np.isnan(row.loc[("good", "pearson_delta"), "difference"])  # baselines get no difference
    with pytest.raises(KeyError, match="no 'method' column"):
        gh.tl.summarize_perturbation_scores(scores.drop(columns="method"), baselines=[])


def _perfect(n=4, seed=0):
    """A screen with 4 held-out conditions and 2 training ones; 'predictions' equal to the observed centroids."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(12)]
    conds = [f"P{i}+ctrl" for i in range(n)] + ["T0+ctrl", "T1+ctrl"]
    blocks, labels = [rng.gamma(2, 1, (10, 12))], ["ctrl"] * 10
    for c in conds:
        blocks.append(rng.gamma(2, 1, 12) + rng.normal(0, 0.05, (10, 12)))
        labels += [c] * 10
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    obs["split"] = np.where(obs["condition"].str.startswith("P"), "test", "train")
    adata = ad.AnnData(np.clip(np.vstack(blocks), 0, None).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=genes))
    held = conds[:n]
    X = adata.X
    truth = pd.DataFrame(np.stack([X[(obs["condition"] == c).to_numpy()].astype(np.float64).mean(0) for c in held]),
                         index=held, columns=genes)
    return adata, truth


def test_shuffle_null_of_a_perfect_predictor():
    adata, truth = _perfect()
    observed = gh.tl.perturbation_metrics(adata, truth, n_de=5)
    assert observed["pearson_delta_pert"].tolist() == pytest.approx([1.0] * 4)
    assert (observed["centroid_accuracy"] == 1.0).all()
    null = gh.tl.perturbation_shuffle_null(adata, truth, n_permutations=30, seed=3, n_de=5)
    assert len(null) == 30 * 4 and list(null.columns[:2]) == ["permutation", "condition"]
    # every permutation is exactly the metrics of the permuted predictions
    rng = np.random.default_rng(3)
    for k in range(3):
        perm = rng.permutation(4)
        shuffled = truth.iloc[perm].set_axis(truth.index, axis=0)
        expected = gh.tl.perturbation_metrics(adata, shuffled, n_de=5)
        got = null[null["permutation"] == k].set_index("condition")
        pd.testing.assert_frame_equal(got[expected.columns[:-1]], expected.drop(columns="n_cells"), check_names=False)
    # a condition given its own prediction scores 1; another's, its own centroid's accuracy 0 (that one is nearest)
    fixed = null["pearson_delta_pert"] > 1 - 1e-9
    assert (null.loc[~fixed, "centroid_accuracy"] < 1).all()
    summary = gh.tl.shuffle_null_summary(null, observed[["pearson_delta_pert", "centroid_accuracy"]].mean().to_dict())
    assert summary.loc["centroid_accuracy", "observed"] == 1.0
    assert summary.loc["centroid_accuracy", "null_mean"] < 0.6
    # p-value: (1 + permutations as good as the perfect predictor) / 31; only the identity is (1/24 of draws)
    n_identity = int(null.groupby("permutation")["centroid_accuracy"].mean().eq(1.0).sum())
    assert summary.loc["centroid_accuracy", "p_value"] == pytest.approx((1 + n_identity) / 31)


def test_shuffle_null_over_all_permutations():
    """With every permutation of 3 conditions, the null mean is the average over the 3! permutations."""
    adata, truth = _perfect(n=3)
    null = gh.tl.perturbation_shuffle_null(adata, truth, n_permutations=600, seed=0, n_de=5)
    draws = null.groupby("permutation")["pearson_delta"].mean()
    exact = []
    for perm in itertools.permutations(range(3)):
        shuffled = truth.iloc[list(perm)].set_axis(truth.index, axis=0)
        exact.append(gh.tl.perturbation_metrics(adata, shuffled, n_de=5)["pearson_delta"].mean())
    assert set(np.round(draws, 10)) <= set(np.round(exact, 10))
    assert draws.mean() == pytest.approx(np.mean(exact), abs=0.02)


def test_noise_ceiling_known_answers():
    # each condition's cells are identical copies: the two halves agree perfectly
    adata, truth = _perfect()
    values = adata.obs["condition"].astype(str)
    X = adata.X.copy()
    for c in set(values) - {"ctrl"}:
        rows = (values == c).to_numpy()
        X[rows] = X[rows].mean(0)
    same = adata.copy()
    same.X = X
    ceiling = gh.tl.perturbation_noise_ceiling(same, list(truth.index), n_de=5)
    assert list(ceiling.index) == list(truth.index) and (ceiling["n_cells"] == 5).all()  # half of 10 cells
    assert ceiling["pearson_delta"].tolist() == pytest.approx([1.0] * 4) and (ceiling["centroid_accuracy"] == 1).all()
    assert ceiling["mse"].tolist() == pytest.approx([0.0] * 4, abs=1e-12) and (ceiling["l2_top_expressed"] < 1e-6).all()
    # noisy cells: below 1, the same halves for the same seed
    noisy = gh.tl.perturbation_noise_ceiling(adata, list(truth.index), n_de=5, seed=1)
    assert (noisy["pearson_delta"] < 1).all()
    pd.testing.assert_frame_equal(noisy, gh.tl.perturbation_noise_ceiling(adata, list(truth.index), n_de=5, seed=1))
    with pytest.raises(ValueError, match="fewer than 4 cells"):
        gh.tl.perturbation_noise_ceiling(adata[:12].copy(), ["P0+ctrl"], perturbed_reference=np.zeros(12))
