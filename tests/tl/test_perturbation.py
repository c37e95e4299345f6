"""GEARS simulation split and perturbation metrics against hand-computed values."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh
from genohoption._conditions import parse_condition

GENES = [f"G{i}" for i in range(12)]


def _conditions():
    singles = [f"{g}+ctrl" for g in GENES]
    combos = [f"{GENES[i]}+{GENES[j]}" for i in range(12) for j in range(i + 1, 12) if (i + j) % 3 == 0]
    return ["ctrl", *singles, *combos]


def _adata(conditions, cells=2):
    obs = pd.DataFrame({"condition": np.repeat(conditions, cells)})
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=np.zeros((len(obs), 3), np.float32), obs=obs)


def test_split_properties():
    adata = _adata(_conditions())
    groups = gh.tl.perturbation_split(adata, seed=3, train_gene_fraction=0.75)
    split = adata.obs.drop_duplicates("condition").set_index("condition")["split"]
    train = [c for c in split.index if split[c] == "train" and c != "ctrl"]
    train_genes = {g for c in train for g in parse_condition(c)}
    test_seen = {g for c in split.index if split[c] != "val" for g in parse_condition(c)}
    assert split["ctrl"] == "train"
    # test subgroups are what they claim, against the genes seen in the first split (train + val)
    seen = {g for c in split.index if split[c] in ("train", "val") for g in parse_condition(c)}
    assert len(seen) == int(12 * 0.75)
    for c in groups["unseen_single"]:
        assert c.endswith("+ctrl") and parse_condition(c)[0] not in seen and split[c] == "test"
    for k, name in enumerate(["combo_seen0", "combo_seen1", "combo_seen2"]):
        for c in groups[name]:
            genes = parse_condition(c)
            assert len(genes) == 2 and sum(g in seen for g in genes) == k and split[c] == "test"
    # no gene of an unseen single or an unseen part of a combo is perturbed in training
    for c in groups["unseen_single"] + groups["combo_seen0"] + groups["combo_seen1"]:
        assert not ({g for g in parse_condition(c) if g not in seen} & train_genes)
    # every perturbed condition lands in exactly one place
    n_test = sum(len(v) for v in groups.values())
    assert n_test == int((split == "test").sum())
    assert set(adata.uns["split"]["test_subgroup"]) == set(groups)
    assert test_seen  # split is non-trivial
    # seeded
    again = _adata(_conditions())
    assert gh.tl.perturbation_split(again, seed=3) == groups
    assert not gh.tl.perturbation_split(_adata(_conditions()), seed=4) == groups


def test_split_handcrafted():
    conds = ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "A+B", "A+C", "C+D"]
    adata = _adata(conds)
    groups = gh.tl.perturbation_split(adata, seed=0, train_gene_fraction=0.5, combo_seen2_train_fraction=1.0,
                                      val_gene_fraction=1.0, val_combo_fraction=1.0)
    seen = {g for c in conds[1:5] if c not in groups["unseen_single"] for g in parse_condition(c)}
    assert len(seen) == 2 and len(groups["unseen_single"]) == 2
    expect = {"combo_seen0": [], "combo_seen1": [], "combo_seen2": []}
    for c in ["A+B", "A+C", "C+D"]:
        n = sum(g in seen for g in c.split("+"))
        if n < 2:
            expect[f"combo_seen{n}"].append(c)
    for k, v in expect.items():
        assert sorted(groups[k]) == sorted(v)
    # all-seen combos stay in training with combo_seen2_train_fraction=1
    assert groups["combo_seen2"] == []


def test_split_bad_input_leaves_data_unchanged():
    adata = _adata(["ctrl", "A+ctrl", "A+"])
    before = copy.deepcopy(adata)
    with pytest.raises(ValueError, match="Malformed"):
        gh.tl.perturbation_split(adata)
    with pytest.raises(KeyError):
        gh.tl.perturbation_split(adata, perturbation_key="nope")
    with pytest.raises(ValueError, match="train_gene_fraction"):
        gh.tl.perturbation_split(_adata(["ctrl", "A+ctrl"]), train_gene_fraction=0)
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    assert set(adata.uns) == set(before.uns)


def _metric_data():
    # 3 genes; control mean (1, 2, 3); condition "A+ctrl" mean (1, 4, 0); "A+B" mean (3, 2, 3)
    X = np.array([[1, 2, 3], [1, 2, 3], [0, 4, 0], [2, 4, 0], [3, 1, 3], [3, 3, 3]], np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "ctrl", "A+ctrl", "A+ctrl", "A+B", "A+B"]},
                       index=[f"c{i}" for i in range(6)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["A", "B", "C"]))


def test_metrics_hand_computed():
    adata = _metric_data()
    pred = pd.DataFrame([[1.0, 3.0, 1.0], [2.0, 2.0, 3.0]], index=["A+ctrl", "A+B"], columns=["A", "B", "C"])
    before = copy.deepcopy(adata)
    ref = np.zeros(3)  # every perturbation is scored here: Systema's reference must be given
    m = gh.tl.perturbation_metrics(adata, pred, n_de=3, perturbed_reference=ref,
                                   subgroups={"unseen_single": ["A+ctrl"], "combo_seen2": ["A+B"]})
    # A+ctrl: pred (1, 3, 1), truth (1, 4, 0), ctrl (1, 2, 3): deltas (0, 1, -2) vs (0, 2, -3)
    d1, d2 = np.array([0, 1, -2.0]), np.array([0, 2, -3.0])
    assert m.loc["A+ctrl", "pearson_delta"] == pytest.approx(np.corrcoef(d1, d2)[0, 1])
    assert m.loc["A+ctrl", "pearson"] == pytest.approx(np.corrcoef([1, 3, 1], [1, 4, 0])[0, 1])
    assert m.loc["A+ctrl", "mse"] == pytest.approx((0 + 1 + 1) / 3)
    # with all 3 genes as "DE" genes the DE metrics equal the full ones
    assert m.loc["A+ctrl", "pearson_delta_de"] == pytest.approx(m.loc["A+ctrl", "pearson_delta"])
    # A+B: pred (2, 2, 3), truth (3, 2, 3): delta pred (1, 0, 0) vs truth (2, 0, 0): r = 1
    assert m.loc["A+B", "pearson_delta"] == pytest.approx(1.0)
    assert m.loc["A+B", "mse"] == pytest.approx(1 / 3)
    assert list(m["subgroup"]) == ["unseen_single", "combo_seen2"]
    # no-change baseline: pearson_delta 0 by GEARS' convention
    ctrl = pd.DataFrame([[1.0, 2.0, 3.0]] * 2, index=["A+ctrl", "A+B"], columns=["A", "B", "C"])
    base = gh.tl.perturbation_metrics(adata, ctrl, n_de=3, perturbed_reference=ref)
    assert (base["pearson_delta"] == 0).all()
    # no change: no recall by construction; its direction is right only where the truth does not change (GEARS'
    # sign comparison): A+ctrl changes (0, 2, -3) -> 1 of 3, A+B (2, 0, 0) -> 2 of 3
    assert (base["de_recall"] == 0).all()
    assert base["direction_accuracy_de"].tolist() == pytest.approx([1 / 3, 2 / 3])
    # top-1 DE gene of A+B is A (the only one changed): pearson of a single value is 0, mse hand-computed
    m1 = gh.tl.perturbation_metrics(adata, pred, n_de=1, perturbed_reference=ref)
    assert m1.loc["A+B", "mse_de"] == pytest.approx(1.0)
    by = gh.tl.perturbation_metrics(adata, pred, n_de=3, by="subgroup", perturbed_reference=ref,
                                    subgroups={"unseen_single": ["A+ctrl"], "combo_seen2": ["A+B"]})
    assert by.loc["all", "mse"] == pytest.approx((2 / 3 + 1 / 3) / 2) and by.loc["all", "n_conditions"] == 2
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    assert set(adata.uns) == set(before.uns)


def test_metrics_bad_input():
    adata = _metric_data()
    pred = pd.DataFrame([[1.0, 3.0, 1.0]], index=["A+ctrl"], columns=["A", "B", "C"])
    one = adata[[0, 1, 2, 4, 5]].copy()  # A+ctrl has one cell
    before = copy.deepcopy(one)
    ref = np.zeros(3)
    with pytest.raises(ValueError, match="fewer than 2 cells"):
        gh.tl.perturbation_metrics(one, pred, perturbed_reference=ref)
    pd.testing.assert_frame_equal(one.obs, before.obs)
    with pytest.raises(ValueError, match="No control"):
        gh.tl.perturbation_metrics(adata[2:].copy(), pred, perturbed_reference=ref)
    with pytest.raises(KeyError, match="no observed"):
        gh.tl.perturbation_metrics(adata, pred.rename(index={"A+ctrl": "C+ctrl"}), perturbed_reference=ref)
    # the reference is never taken from scored conditions: without a split column it must be given
    with pytest.raises(ValueError, match="perturbed_reference=None takes Systema's reference from the training"):
        gh.tl.perturbation_metrics(adata, pred)
    with pytest.raises(ValueError, match=r"includes scored conditions \['A\+ctrl'\]"):
        gh.tl.perturbation_metrics(adata, pred, perturbed_reference=["A+ctrl"])
    # a top DE gene missing from the prediction is an error, not a silent drop
    with pytest.raises(KeyError, match=r"Top DE genes \['C'\] of 'A\+ctrl' are not among the predicted genes"):
        gh.tl.perturbation_metrics(adata, pred[["A", "B"]], n_de=3, perturbed_reference=ref)


def _systema_data():
    """_metric_data plus a training perturbation B+ctrl with centroid (2, 2, 2), marked in obs["split"]."""
    base = _metric_data()
    extra = ad.AnnData(X=np.full((2, 3), 2.0, np.float32),
                       obs=pd.DataFrame({"condition": ["B+ctrl"] * 2}, index=["c6", "c7"]),
                       var=pd.DataFrame(index=["A", "B", "C"]))
    adata = ad.concat([base, extra])
    adata.obs["split"] = np.where(adata.obs["condition"].isin(["ctrl", "B+ctrl"]), "train", "test")
    return adata


def test_systema_and_l2_metrics_hand_computed():
    adata = _systema_data()
    pred = pd.DataFrame([[1.0, 3.0, 1.0], [1.0, 4.0, 1.0]], index=["A+ctrl", "A+B"], columns=["A", "B", "C"])
    m = gh.tl.perturbation_metrics(adata, pred, n_de=3, n_expressed=2)
    # reference = centroid of the training perturbations (B+ctrl, marked "train" in obs["split"]): (2, 2, 2)
    ref = np.array([2.0, 2.0, 2.0])
    assert m.loc["A+ctrl", "pearson_delta_pert"] == pytest.approx(
        np.corrcoef(np.array([1, 3, 1]) - ref, np.array([1, 4, 0]) - ref)[0, 1])
    assert m.loc["A+B", "pearson_delta_pert"] == pytest.approx(
        np.corrcoef(np.array([1, 4, 1]) - ref, np.array([3, 2, 3]) - ref)[0, 1])
    assert m.loc["A+ctrl", "pearson_delta_pert_de"] == pytest.approx(m.loc["A+ctrl", "pearson_delta_pert"])
    # centroid accuracy among the scored conditions: A+ctrl's prediction is nearest its own centroid
    # (distance sqrt 2 against 3), A+B's is nearer A+ctrl's (1) than its own (sqrt 12)
    assert m.loc["A+ctrl", "centroid_accuracy"] == 1.0 and m.loc["A+B", "centroid_accuracy"] == 0.0
    # with B+ctrl as a third candidate: A+ctrl is nearer its own (sqrt 2) than B (sqrt 3) and A+B (3)
    m3 = gh.tl.perturbation_metrics(adata, pred, n_de=3, centroid_candidates=["A+ctrl", "A+B", "B+ctrl"])
    assert m3.loc["A+ctrl", "centroid_accuracy"] == 1.0 and m3.loc["A+B", "centroid_accuracy"] == 0.0
    # L2 on the 2 most expressed control genes (C: 3, B: 2): A+ctrl (3 - 4, 1 - 0) -> sqrt 2
    assert m.loc["A+ctrl", "l2_top_expressed"] == pytest.approx(np.sqrt(2.0))
    assert m.loc["A+B", "l2_top_expressed"] == pytest.approx(np.sqrt(4.0 + 4.0))
    # the mean baseline (prediction = the reference) scores 0 on pearson_delta_pert; an explicit reference
    mean = pd.DataFrame([ref, ref], index=["A+ctrl", "A+B"], columns=["A", "B", "C"])
    assert (gh.tl.perturbation_metrics(adata, mean, n_de=3)["pearson_delta_pert"] == 0).all()
    explicit = gh.tl.perturbation_metrics(adata, pred, n_de=3, perturbed_reference=np.zeros(3))
    assert explicit.loc["A+B", "pearson_delta_pert"] == pytest.approx(np.corrcoef([1, 4, 1], [3, 2, 3])[0, 1])
    by_name = gh.tl.perturbation_metrics(adata, pred, n_de=3, perturbed_reference=["B+ctrl"])
    pd.testing.assert_frame_equal(by_name, m.assign(l2_top_expressed=by_name["l2_top_expressed"]))
    # a single candidate: no accuracy
    one = gh.tl.perturbation_metrics(adata, pred.loc[["A+ctrl"]], n_de=3)
    assert np.isnan(one.loc["A+ctrl", "centroid_accuracy"])
    # the split column decides the reference, not which conditions happen to be scored
    unsplit = adata.copy()
    del unsplit.obs["split"]
    with pytest.raises(ValueError, match="has no such column"):
        gh.tl.perturbation_metrics(unsplit, pred.loc[["A+ctrl"]], n_de=3)
    pd.testing.assert_frame_equal(gh.tl.perturbation_metrics(unsplit, pred, n_de=3, n_expressed=2,
                                                             perturbed_reference=["B+ctrl"]), m)
    with pytest.raises(ValueError, match="n_vars"):
        gh.tl.perturbation_metrics(adata, pred, perturbed_reference=np.zeros(2))
    with pytest.raises(ValueError, match="no perturbed cell"):
        gh.tl.perturbation_metrics(adata, pred, centroid_candidates=["Z+ctrl"])


def test_new_metrics_hand_computed():
    """pΔpert without the target gene, DE direction accuracy, DE recall; the control cells of the predictions."""
    # genes A, B, C, D; control mean (1, 1, 1, 1); A+ctrl (knock-down of A) mean (0, 2, 1, 3); B+ctrl (2, 2, 2, 2)
    X = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 2, 1, 3], [0, 2, 1, 3], [2, 2, 2, 2], [2, 2, 2, 2]], np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "ctrl", "A+ctrl", "A+ctrl", "B+ctrl", "B+ctrl"],
                        "split": ["train", "train", "test", "test", "train", "train"]},
                       index=[f"c{i}" for i in range(6)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["A", "B", "C", "D"]))
    # prediction (0.5, 0.5, 1, 2): changes (-0.5, -0.5, 0, 1) against observed (-1, 1, 0, 2)
    pred = pd.DataFrame([[0.5, 0.5, 1.0, 2.0]], index=["A+ctrl"], columns=["A", "B", "C", "D"])
    de = {"A+ctrl": np.array([3, 0, 1])}  # D, A, B (C does not change)
    m = gh.tl.perturbation_metrics(adata, pred, de_genes=de).loc["A+ctrl"]
    ref = np.array([2.0, 2.0, 2.0, 2.0])  # B+ctrl, the training perturbation
    y, yhat = np.array([0, 2, 1, 3.0]), np.array([0.5, 0.5, 1, 2])
    assert m["pearson_delta_pert"] == pytest.approx(np.corrcoef(yhat - ref, y - ref)[0, 1])
    # without the target gene A
    assert m["pearson_delta_pert_excl_target"] == pytest.approx(np.corrcoef((yhat - ref)[1:], (y - ref)[1:])[0, 1])
    # on the DE genes D, A, B without A: D and B
    d = [3, 1]
    assert m["pearson_delta_pert_de_excl_target"] == pytest.approx(np.corrcoef((yhat - ref)[d], (y - ref)[d])[0, 1])
    # direction on D (+, +), A (-, -), B (-, +): 2 of 3
    assert m["direction_accuracy_de"] == pytest.approx(2 / 3)
    # predicted top 3 by |change|: D (1), A (0.5), B (0.5) -> all 3 DE genes recalled
    assert m["de_recall"] == pytest.approx(1.0)
    # a prediction changing only C recalls none of D, A, B
    only_c = pd.DataFrame([[1.0, 1.0, 3.0, 1.0]], index=["A+ctrl"], columns=["A", "B", "C", "D"])
    assert gh.tl.perturbation_metrics(adata, only_c, de_genes=de).loc["A+ctrl", "de_recall"] == 0.0
    # the symbols in another column: the target is found there
    by_symbol = adata.copy()
    by_symbol.var["symbol"] = ["a", "b", "c", "d"]
    by_symbol.var_names = ["g1", "g2", "g3", "g4"]
    renamed = pred.set_axis(["g1", "g2", "g3", "g4"], axis=1)
    m2 = gh.tl.perturbation_metrics(by_symbol, renamed, de_genes=de, gene_symbols="symbol").loc["A+ctrl"]
    assert m2["pearson_delta_pert_excl_target"] == pytest.approx(m["pearson_delta_pert_excl_target"])


def test_control_cells_of_the_predictions():
    """The control reference is the cells the predictions start from; a mismatch is an error."""
    adata = _systema_data()
    fitted = gh.tl.MeanBaseline().fit(adata[adata.obs["split"] == "train"].copy())
    ctrl = adata[adata.obs["condition"] == "ctrl"].copy()
    profiles = fitted.predict_perturbation(ctrl, ["A+ctrl", "A+B"])
    m = gh.tl.perturbation_metrics(adata, profiles, n_de=3)
    assert (m["pearson_delta_pert"] == 0).all()  # the mean baseline: 0 by construction
    one = fitted.predict_perturbation(ctrl[:1].copy(), ["A+ctrl", "A+B"])
    with pytest.raises(ValueError, match=r"start from \[1\] cells but the control reference has 2"):
        gh.tl.perturbation_metrics(adata, one, n_de=3)
    got = gh.tl.perturbation_metrics(adata, one, n_de=3, control_cells=["c0"])
    assert got.loc["A+ctrl", "pearson_delta"] == pytest.approx(m.loc["A+ctrl", "pearson_delta"])  # same cells here
    with pytest.raises(ValueError, match="control_cells must name control cells"):
        gh.tl.perturbation_metrics(adata, one, n_de=3, control_cells=["c2"])


def test_top_de_genes_gears_filters():
    """GEARS' non-zero and non-dropout filters of the DE ranking, on a hand-made case."""
    # genes: A drops to 0 in P (expressed in control), B is 0 in both, C rises, D unchanged-ish
    X = np.array([[2, 0, 1, 1.0], [2, 0, 1, 1.2], [2.2, 0, 1.1, 1.1],
                  [0, 0, 3, 1.0], [0, 0, 3.2, 1.1], [0, 0, 2.9, 1.05]], np.float32)
    obs = pd.DataFrame({"condition": ["ctrl"] * 3 + ["P+ctrl"] * 3}, index=[f"c{i}" for i in range(6)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["A", "B", "C", "D"]))
    full = gh.tl.top_de_genes(adata, n_genes=4)["P+ctrl"]
    assert set(adata.var_names[full[:2]]) == {"A", "C"}
    non_zero = gh.tl.top_de_genes(adata, n_genes=4, gene_filter="non_zero")["P+ctrl"]
    assert "A" not in set(adata.var_names[non_zero]) and "B" not in set(adata.var_names[non_zero])
    non_dropout = gh.tl.top_de_genes(adata, n_genes=4, gene_filter="non_dropout")["P+ctrl"]
    names = list(adata.var_names[non_dropout])
    assert "A" not in names and "B" in names and names == [g for g in adata.var_names[full] if g != "A"]
    with pytest.raises(ValueError, match="gene_filter"):
        gh.tl.top_de_genes(adata, gene_filter="nope")
