import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh


def _adata(truth, pred):
    obs = pd.DataFrame({"cell_type": truth, "genohoption_prediction": pred},
                       index=[f"c{i}" for i in range(len(truth))])
    return ad.AnnData(np.zeros((len(truth), 2), np.float32), obs=obs)


def test_annotation_metrics_known_answer():
    a = _adata(["A", "A", "B", "B", "C"], ["A", "B", "B", "B", "A"])
    m = gh.tl.annotation_metrics(a, "cell_type")
    assert m["accuracy"] == pytest.approx(3 / 5)
    # F1: A p=1/2 r=1/2 -> 0.5; B p=2/3 r=1 -> 0.8; C 0
    assert m["per_class_f1"] == pytest.approx({"A": 0.5, "B": 0.8, "C": 0.0})
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["n_obs"] == 5


def test_annotation_metrics_missing_prediction():
    a = _adata(["A"], ["A"])
    del a.obs["genohoption_prediction"]
    with pytest.raises(KeyError, match="predict"):
        gh.tl.annotation_metrics(a, "cell_type")


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = ["A"] * 60 + ["B"] * 30 + ["C"] * 9 + ["D"]
    a = _adata(labels, labels)
    ref, query = gh.tl.stratified_split(a, "cell_type", test_size=0.3, seed=1)
    assert ref.n_obs + query.n_obs == a.n_obs
    assert not set(ref.obs_names) & set(query.obs_names)
    assert query.obs["cell_type"].value_counts().to_dict() == {"A": 18, "B": 9, "C": 3}
    assert "D" in set(ref.obs["cell_type"])  # a class with one cell stays in the reference
    ref2, _ = gh.tl.stratified_split(a, "cell_type", test_size=0.3, seed=1)
    assert ref.obs_names.equals(ref2.obs_names)
    with pytest.raises(ValueError, match="test_size"):
        gh.tl.stratified_split(a, "cell_type", test_size=1.5)
