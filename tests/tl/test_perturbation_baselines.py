"""Perturbation baselines against hand-computed changes; the model's call shape and writes."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh

GENES = ["A", "B", "C"]


def _train():
    # control mean (1, 2, 3); A+ctrl mean (1, 4, 0): change (0, 2, -3); B+ctrl mean (2, 2, 2): change (1, 0, -1)
    X = np.array([[1, 2, 3], [1, 2, 3], [0, 4, 0], [2, 4, 0], [2, 2, 2], [2, 2, 2]], np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "ctrl", "A+ctrl", "A+ctrl", "ctrl+B", "ctrl+B"]},
                       index=[f"c{i}" for i in range(6)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


def _ctrl():
    X = np.array([[1, 1, 1], [3, 3, 5]], np.float32)  # mean (2, 2, 3)
    return ad.AnnData(X=X, obs=pd.DataFrame(index=["q0", "q1"]), var=pd.DataFrame(index=GENES))


def test_no_change_mean_additive_hand_computed():
    train = _train()
    fitted = gh.tl.fit_perturbation_baselines(train, prior=None)
    assert list(fitted) == ["no_change", "mean", "additive", "linear", "target_gene_control", "target_gene_mean",
                            "prior_network", "matching_mean"]
    assert list(gh.tl.fit_perturbation_baselines(train, prior=None, baselines=["mean", "no_change"])) == [
        "no_change", "mean"]
    with pytest.raises(ValueError, match=r"Unknown baselines \['nope'\]"):
        gh.tl.fit_perturbation_baselines(train, baselines=["nope"])
    np.testing.assert_allclose(fitted["no_change"].effect("A+B"), 0)
    np.testing.assert_allclose(fitted["mean"].effect("Z+ctrl"), [0.5, 1.0, -2.0])
    np.testing.assert_allclose(fitted["additive"].effect("A+B"), [1.0, 2.0, -4.0])
    np.testing.assert_allclose(fitted["additive"].effect("B+Z"), [1.0, 0.0, -1.0])  # Z: no training single
    np.testing.assert_allclose(fitted["additive"].effect("Z+ctrl"), 0.0)
    assert fitted["additive"].seen_genes == ["A", "B"]


def test_linear_baseline_matches_the_formula():
    train = _train()
    prior = pd.DataFrame({"source": ["X"], "target": ["A"]})  # X (unmeasured) regulates A
    lin = gh.tl.LinearBaseline(n_components=2, ridge=0.1, prior=prior).fit(train)
    # by hand: pseudobulk genes x (ctrl, A, B), PCA with each condition centred, ridge on both sides
    M = np.array([[1, 1, 2], [2, 4, 2], [3, 0, 2]], float)
    U, S, _ = np.linalg.svd(M - M.mean(0), full_matrices=False)
    G = U[:, :2] * S[:2]
    Y = M - M[:, [0]]
    b = Y.mean(1)
    P = np.stack([np.zeros(2), G[0], G[1]], axis=1)
    W = np.linalg.inv(G.T @ G + 0.1 * np.eye(2)) @ G.T @ (Y - b[:, None]) @ P.T @ np.linalg.inv(P @ P.T + 0.1 * np.eye(2))
    np.testing.assert_allclose(lin.effect("A+ctrl"), G @ W @ G[0] + b, atol=1e-9)
    np.testing.assert_allclose(lin.effect("A+B"), G @ W @ (G[0] + G[1]) + b, atol=1e-9)
    # an unmeasured gene takes its measured neighbours' embedding; one without neighbours the mean change b
    np.testing.assert_allclose(lin.effect("X+ctrl"), lin.effect("A+ctrl"))
    # a symbol it cannot embed is an error; named in extra_genes, it is the mean change b
    with pytest.raises(KeyError, match="'NOWHERE' is neither measured nor in the prior network nor in extra_genes"):
        lin.effect("NOWHERE+ctrl")
    with pytest.raises(KeyError, match="'a' → write 'A'"):  # another letter case is an error naming the symbol
        lin.effect("a+ctrl")
    known = gh.tl.LinearBaseline(n_components=2, ridge=0.1, prior=prior, extra_genes=["NOWHERE"]).fit(train)
    np.testing.assert_allclose(known.effect("NOWHERE+ctrl"), b, atol=1e-12)
    with pytest.raises(ValueError, match="n_components"):
        gh.tl.LinearBaseline(n_components=0)


def test_predict_perturbation_call_shape_and_writes():
    fitted = gh.tl.AdditiveBaseline().fit(_train())
    ctrl = _ctrl()
    out = fitted.predict_perturbation(ctrl, "A+B")
    np.testing.assert_allclose(out, ctrl.X + np.array([1.0, 2.0, -4.0]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(ctrl.layers["additive_A+B"], out)
    record = ctrl.uns["genohoption"]["perturbation_baseline"]["additive"]
    assert record["layer"] == "additive_A+B" and record["n_genes_matched"] == 3
    profiles = fitted.predict_perturbation(ctrl, ["A+ctrl", "ctrl+B"])
    assert list(profiles.obs_names) == ["A+ctrl", "ctrl+B"] and profiles.shape == (2, 3)
    np.testing.assert_allclose(profiles.X, [[2, 4, 0], [3, 2, 2]])
    assert (profiles.obs["n_cells"] == 2).all()
    # genes in another order and one the baseline never saw (kept as is)
    other = ad.AnnData(X=np.array([[9.0, 3.0, 2.0, 1.0]], np.float32), obs=pd.DataFrame(index=["r"]),
                       var=pd.DataFrame(index=["D", "C", "B", "A"]))
    got = fitted.predict_perturbation(other, "A+ctrl", key_prefix="add_")
    np.testing.assert_allclose(got, [[9.0, 0.0, 4.0, 1.0]])
    assert "add_A+ctrl" in other.layers


def test_baseline_errors_leave_data_unchanged():
    ctrl = _ctrl()
    before = copy.deepcopy(ctrl)
    with pytest.raises(ValueError, match="not fitted"):
        gh.tl.MeanBaseline().predict_perturbation(ctrl, "A+ctrl")
    fitted = gh.tl.MeanBaseline().fit(_train())
    with pytest.raises(ValueError, match="Malformed"):
        fitted.predict_perturbation(ctrl, "A+")
    with pytest.raises(TypeError):
        fitted.predict_perturbation(ctrl, [1])
    alien = ad.AnnData(X=np.ones((1, 1), np.float32), var=pd.DataFrame(index=["Q"]))
    with pytest.raises(ValueError, match="shares no gene"):
        fitted.predict_perturbation(alien, "A+ctrl")
    assert set(ctrl.layers) == set(before.layers) and set(ctrl.uns) == set(before.uns)
    train = _train()
    train.obs["condition"] = train.obs["condition"].str.replace("ctrl", "none")
    with pytest.raises(ValueError, match="No control"):
        gh.tl.NoChangeBaseline().fit(train, control_value="ctrl")
    with pytest.raises(KeyError, match="gene_symbols"):
        gh.tl.NoChangeBaseline().fit(_train(), gene_symbols="nope")


def _knockdown_train():
    """Genes A, B, C; control (2, 4, 1); A+ctrl knocks A down to 1 (ratio 0.5), B+ctrl knocks B to 1 (0.25) and
    raises C by 2; Z+ctrl (Z unmeasured) raises C by 1. Mean change of the three: (-1/3, -1, +1)."""
    X = np.array([[2, 4, 1], [2, 4, 1], [1, 4, 1], [1, 4, 1], [2, 1, 3], [2, 1, 3], [2, 4, 2], [2, 4, 2]],
                 np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "ctrl", "A+ctrl", "A+ctrl", "B+ctrl", "B+ctrl", "Z+ctrl", "Z+ctrl"]},
                       index=[f"c{i}" for i in range(8)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


def test_target_gene_baseline_hand_computed():
    train = _knockdown_train()
    on_ctrl = gh.tl.TargetGeneBaseline(on="control").fit(train)
    on_mean = gh.tl.TargetGeneBaseline(on="mean").fit(train)
    # ratio: mean of A's 1/2 and B's 1/4 (Z is not measured)
    assert on_ctrl.ratio == pytest.approx(0.375) and on_ctrl.n_ratio_pairs == 2
    assert on_ctrl.name == "target_gene_control" and on_mean.name == "target_gene_mean"
    ctrl = ad.AnnData(X=np.array([[4, 2, 2], [0, 2, 0]], np.float32), obs=pd.DataFrame(index=["q0", "q1"]),
                      var=pd.DataFrame(index=GENES))
    # C (measured) knocked down: only C scaled, on control or on the mean change elsewhere
    out = on_ctrl.predict_perturbation(ctrl, "C+ctrl")
    np.testing.assert_allclose(out, [[4, 2, 0.75], [0, 2, 0]])
    np.testing.assert_array_equal(ctrl.layers["target_gene_control_C+ctrl"], out)
    out = on_mean.predict_perturbation(ctrl, "C+ctrl")
    np.testing.assert_allclose(out, [[4 - 1 / 3, 1, 0.75], [0 - 1 / 3, 1, 0]], rtol=1e-6)
    # mean profiles: the same rule on the mean of the inputs (2, 2, 1)
    prof = on_mean.predict_perturbation(ctrl, ["C+ctrl", "Q+ctrl", "A+B"])
    np.testing.assert_allclose(prof.X, [[2 - 1 / 3, 1, 0.375], [2 - 1 / 3, 1, 2], [0.75, 0.75, 2]], rtol=1e-6)
    # an unmeasured target: the no-change / mean baseline
    np.testing.assert_allclose(on_ctrl.effect("Q+ctrl"), 0) and np.testing.assert_allclose(on_ctrl.scale("Q+ctrl"), 1)
    np.testing.assert_allclose(on_mean.effect("Q+ctrl"), gh.tl.MeanBaseline().fit(train).effect("Q+ctrl"))
    # activation: the ratio is above 1
    up = train.copy()
    up.X = np.where(np.arange(8)[:, None] == 2, [4, 4, 1], up.X)
    up.X[3] = [4, 4, 1]
    assert gh.tl.TargetGeneBaseline().fit(up).ratio == pytest.approx((2.0 + 0.25) / 2)
    with pytest.raises(ValueError, match="on='nope'"):
        gh.tl.TargetGeneBaseline(on="nope")
    # no measured training target: ratio 1 (the baseline is no change / the mean)
    none = train[train.obs["condition"].isin(["ctrl", "Z+ctrl"])].copy()
    assert gh.tl.TargetGeneBaseline().fit(none).ratio == 1.0


def test_prior_network_baseline_hand_computed():
    train = _knockdown_train()
    # P regulates A and Z; Q regulates nothing trained; A-B edge
    prior = pd.DataFrame({"source": ["P", "P", "A", "Q"], "target": ["A", "z", "B", "W"]})
    fitted = gh.tl.PriorNetworkBaseline(prior=prior).fit(train)
    change = {"A": np.array([-1, 0, 0.0]), "B": np.array([0, -3, 2.0]), "Z": np.array([0, 0, 1.0])}
    assert fitted.neighbors("P+ctrl") == ["A", "Z"]  # case-insensitive
    np.testing.assert_allclose(fitted.effect("P+ctrl"), (change["A"] + change["Z"]) / 2)
    np.testing.assert_allclose(fitted.effect("A+ctrl"), change["B"])  # its neighbour B, not itself
    mean = (change["A"] + change["B"] + change["Z"]) / 3
    np.testing.assert_allclose(fitted.effect("Q+ctrl"), mean)  # no trained neighbour: the mean change
    np.testing.assert_allclose(fitted.effect("NOWHERE+ctrl"), mean)
    np.testing.assert_allclose(gh.tl.PriorNetworkBaseline(prior=None).fit(train).effect("P+ctrl"), mean)


def test_matching_mean_baseline_hand_computed():
    base = _knockdown_train()
    train = ad.AnnData(X=base.X[[0, 1, 2, 3, 4, 5, 6, 7, 6]], var=base.var,  # Z+ctrl has 3 cells: weighs more
                       obs=pd.DataFrame({"condition": base.obs["condition"].to_numpy()[[0, 1, 2, 3, 4, 5, 6, 7, 6]]},
                                        index=[f"c{i}" for i in range(9)]))
    fitted = gh.tl.MatchingMeanBaseline().fit(train)
    ctrl_mean = np.array([2, 4, 1.0])
    pooled = (2 * np.array([1, 4, 1]) + 2 * np.array([2, 1, 3]) + 3 * np.array([2, 4, 2])) / 7
    np.testing.assert_allclose(fitted.effect("Q+ctrl"), pooled - ctrl_mean)  # unseen: the pooled perturbed mean
    np.testing.assert_allclose(fitted.effect("A+ctrl"), np.array([1, 4, 1]) - ctrl_mean)  # seen: its centroid
    np.testing.assert_allclose(fitted.effect("A+Q"), (np.array([1, 4, 1]) + pooled) / 2 - ctrl_mean)
    assert not np.allclose(pooled - ctrl_mean, gh.tl.MeanBaseline().fit(train).effect("Q+ctrl"))
