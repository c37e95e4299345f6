"""A screen's training cells and test conditions (tl.screen_split) and the per-condition subsample, on known answers."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh

# 20 cells: ctrl 0-3, A 4-6, B 7-9, C 10-11, D 12, E 13-14, A+B 15-16, C+D 17-18, B+E 19
CONDITIONS = (["ctrl"] * 4 + ["A+ctrl"] * 3 + ["B+ctrl"] * 3 + ["C+ctrl"] * 2 + ["D+ctrl"] + ["E+ctrl"] * 2
              + ["A+B"] * 2 + ["C+D"] * 2 + ["B+E"])


def _screen(split=None) -> ad.AnnData:
    obs = pd.DataFrame({"condition": CONDITIONS}, index=[f"c{i}" for i in range(len(CONDITIONS))])
    if split is not None:
        obs["my_split"] = split
    return ad.AnnData(np.zeros((len(CONDITIONS), 2), np.float32), obs=obs)


def _unchanged(adata, before):
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    assert set(adata.uns) == set(before.uns)


def test_simulation_split_known_answer():
    adata = _screen()
    with pytest.warns(UserWarning, match=r"1 test conditions have fewer than 2 cells and are not scored .*\['B\+E'\]"):
        train, test, groups = gh.tl.screen_split(adata, seed=0, train_gene_fraction=0.6)
    assert train.dtype == bool and train.shape == (20,)
    assert np.flatnonzero(~train).tolist() == [4, 5, 6, 7, 8, 9, 15, 16, 17, 18, 19]
    assert test == ["A+B", "A+ctrl", "B+ctrl", "C+D"]  # B+E (one cell) dropped
    assert groups == {"unseen_single": ["A+ctrl", "B+ctrl"], "combo_seen0": ["A+B"], "combo_seen1": ["B+E"],
                      "combo_seen2": ["C+D"]}
    # what it writes is what perturbation_split writes with the same seed and fraction
    reference = _screen()
    assert gh.tl.perturbation_split(reference, seed=0, train_gene_fraction=0.6) == groups
    assert adata.obs["split"].equals(reference.obs["split"])
    assert adata.uns["split"] == reference.uns["split"]
    assert list(adata.obs["split"].astype(str)[:4]) == ["train"] * 4  # control cells train
    assert adata.obs["split"].astype(str).iloc[12] == "val"  # D: training condition held for validation
    assert train[12]  # validation cells are training cells (the model holds out its own)


def test_column_split_known_answer():
    split = ["train"] * 3 + ["test"] + ["train"] * 3 + ["val"] * 3 + ["test"] * 3 + ["train"] * 7
    adata = _screen(split)
    before = copy.deepcopy(adata)
    with pytest.warns(UserWarning, match="1 test conditions have fewer than 2 cells"):
        train, test, groups = gh.tl.screen_split(adata, "my_split", min_cells=2)
    # the control cell marked test trains; C (2 cells) is scored, D (1 cell) is not
    assert np.flatnonzero(~train).tolist() == [10, 11, 12]
    assert test == ["C+ctrl"] and groups is None
    _unchanged(adata, before)  # a column split writes nothing
    # min_cells=1 scores D too, without a warning
    _, test, _ = gh.tl.screen_split(adata, "my_split", min_cells=1)
    assert test == ["C+ctrl", "D+ctrl"]


@pytest.mark.parametrize(
    ("split", "kwargs", "error", "match"),
    [
        ("nope", {}, KeyError, "split='nope' is neither 'simulation', 'kfold' nor an obs column"),
        ("simulation", {"perturbation_key": "nope"}, KeyError, "perturbation_key='nope'"),
        ("my_split", {}, ValueError, r"holds \['x'\]; it must hold 'train', 'val' or 'test'"),
        ("all_train", {}, ValueError, "no perturbed condition to test"),
        ("all_test", {}, ValueError, "no perturbed condition to train on"),
        ("only_d_tested", {}, ValueError, "no test condition has 2 cells or more"),
        ("simulation", {"train_gene_fraction": 0.0}, ValueError, "train_gene_fraction"),
        ("simulation", {"min_cells": 0}, ValueError, "min_cells must be an integer >= 1"),
        ("simulation", {"key_added": "a/b"}, ValueError, "key_added"),
    ],
)
def test_screen_split_errors_leave_data_unchanged(split, kwargs, error, match):
    adata = _screen(["x"] + ["train"] * 19)
    adata.obs["all_train"] = "train"
    adata.obs["all_test"] = np.where(adata.obs["condition"] == "ctrl", "train", "test")
    adata.obs["only_d_tested"] = np.where(adata.obs["condition"] == "D+ctrl", "test", "train")
    before = copy.deepcopy(adata)
    with pytest.raises(error, match=match):
        gh.tl.screen_split(adata, split, **kwargs)
    _unchanged(adata, before)


def test_malformed_conditions_raise():
    adata = _screen(["train"] * 19 + ["test"])
    adata.obs["condition"] = adata.obs["condition"].replace({"B+E": "B+"})
    with pytest.raises(ValueError, match="Malformed"):
        gh.tl.screen_split(adata, "my_split")


def test_subsample_known_answer():
    adata = _screen()
    first_ten = np.arange(20) < 10
    keep = gh.tl.subsample_conditions(adata, 2, mask=first_ten, seed=0)
    assert np.flatnonzero(keep).tolist() == [0, 3, 5, 6, 7, 9]  # two of ctrl, A and B each, seeded
    assert np.array_equal(gh.tl.subsample_conditions(adata, 2, mask=first_ten, seed=0), keep)
    assert not np.array_equal(gh.tl.subsample_conditions(adata, 2, mask=first_ten, seed=1), keep)
    # every cell: conditions with fewer cells than max_cells keep all of them
    keep = gh.tl.subsample_conditions(adata, 2, seed=0)
    counts = pd.Series(CONDITIONS)[keep].value_counts().to_dict()
    assert counts == {"ctrl": 2, "A+ctrl": 2, "B+ctrl": 2, "C+ctrl": 2, "D+ctrl": 1, "E+ctrl": 2, "A+B": 2, "C+D": 2,
                      "B+E": 1}
    assert np.flatnonzero(keep).tolist() == [2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert gh.tl.subsample_conditions(adata, 100, mask=first_ten).tolist() == first_ten.tolist()


def test_subsample_errors():
    adata = _screen()
    before = copy.deepcopy(adata)
    with pytest.raises(KeyError, match="perturbation_key='nope'"):
        gh.tl.subsample_conditions(adata, 2, perturbation_key="nope")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_cells must be an integer >= 1"):
            gh.tl.subsample_conditions(adata, bad)
    with pytest.raises(ValueError, match="boolean array of n_obs=20"):
        gh.tl.subsample_conditions(adata, 2, mask=np.ones(19, bool))
    with pytest.raises(ValueError, match="boolean array"):
        gh.tl.subsample_conditions(adata, 2, mask=np.arange(20))
    _unchanged(adata, before)
