"""gh.tl.evaluate_perturbation: every method predicts from the same control cells and is scored against them."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

import genohoption as gh


@pytest.fixture(scope="module")
def screen():
    sim = gh.datasets.simulate_perturbation(n_genes=30, n_regulators=10, n_perturbed=8, n_combos=0, n_control=40,
                                           cells_per_condition=8, library_size=1500, seed=3)
    hidden = sim.uns["simulation"]["perturbed_genes"][0]
    adata = sim[:, sim.var_names != hidden].copy()  # one unmeasured target
    return adata, hidden


def test_evaluation_is_correct_by_construction(screen):
    adata, hidden = screen
    before = copy.deepcopy(adata)
    conditions = sorted(set(adata.obs["condition"].astype(str)) - {"ctrl"})
    folds = gh.tl.perturbation_folds(adata, 2, seed=0, gene_symbols="gene_name")
    test, train_conditions = folds[0], folds[1]
    assert sorted(test + train_conditions) == conditions
    train = adata[~adata.obs["condition"].isin(test).to_numpy()].copy()
    baselines = gh.tl.fit_perturbation_baselines(train, gene_symbols="gene_name", prior=None,
                                                 extra_genes=[hidden])
    ev = gh.tl.evaluate_perturbation(adata, baselines, test, train_conditions=train_conditions,
                                     gene_symbols="gene_name", shuffle_null=["target_gene_mean"], n_permutations=10,
                                     noise_ceiling=True)
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    assert set(adata.uns) == set(before.uns) and set(adata.layers) == set(before.layers)
    scores = ev.scores
    assert list(scores.columns[:3]) == ["method", "condition", "target"]
    assert len(scores) == len(baselines) * len(test) and ev.n_control == 40
    kind = dict(zip(scores["condition"], scores["target"], strict=False))
    assert all(kind[c] == ("unmeasured" if c.startswith(hidden + "+") else "measured") for c in test)
    # every prediction started from all 40 control cells, the reference of the metrics
    assert all((p.obs["n_cells"] == 40).all() for p in ev.profiles.values())
    by = scores.set_index(["method", "condition"])
    # the training controls are all the control cells: the mean baseline's pΔpert is 0 by construction,
    # the no-change baseline's pΔ too
    assert (by.loc["mean", "pearson_delta_pert"] == 0).all() and (by.loc["no_change", "pearson_delta"] == 0).all()
    # the scores are those of perturbation_metrics with the training conditions as Systema's reference
    direct = gh.tl.perturbation_metrics(adata, ev.profiles["linear"], perturbed_reference=train_conditions,
                                        gene_symbols="gene_name", centroid_candidates=test)
    pd.testing.assert_frame_equal(by.loc["linear"][direct.columns], direct, check_names=False)
    assert ev.train_conditions == sorted(train_conditions)
    assert set(ev.null["method"]) == {"target_gene_mean"} and ev.null["permutation"].nunique() == 10
    assert list(ev.ceiling["condition"]) == test
    # precomputed profiles work; from other cells they are refused
    again = gh.tl.evaluate_perturbation(adata, {"lin": ev.profiles["linear"]}, test,
                                        train_conditions=train_conditions, gene_symbols="gene_name")
    np.testing.assert_allclose(again.scores.drop(columns=["method"]).select_dtypes("number"),
                               scores[scores["method"] == "linear"].drop(columns=["method"]).select_dtypes("number"))
    ctrl = adata[adata.obs["condition"] == "ctrl"][:5].copy()
    few = baselines["mean"].predict_perturbation(ctrl, test)
    with pytest.raises(ValueError, match=r"start from \[5\] cells but the control reference has 40"):
        gh.tl.evaluate_perturbation(adata, {"few": few}, test, train_conditions=train_conditions)


def test_evaluation_refuses_scored_training_conditions(screen):
    adata, _ = screen
    conditions = sorted(set(adata.obs["condition"].astype(str)) - {"ctrl"})
    model = gh.tl.MeanBaseline().fit(adata)
    with pytest.raises(ValueError, match="both scored and training conditions"):
        gh.tl.evaluate_perturbation(adata, {"mean": model}, conditions[:2], train_conditions=conditions[1:])
    with pytest.raises(ValueError, match="has no such column"):
        gh.tl.evaluate_perturbation(adata, {"mean": model}, conditions[:2])
    with pytest.raises(ValueError, match="conditions is empty"):
        gh.tl.evaluate_perturbation(adata, {"mean": model}, [], train_conditions=conditions)
    # derived from the split column
    split = adata.copy()
    split.obs["split"] = np.where(split.obs["condition"].isin(conditions[:2]), "test", "train")
    ev = gh.tl.evaluate_perturbation(split, {"mean": model}, conditions[:2])
    assert ev.train_conditions == conditions[2:]
