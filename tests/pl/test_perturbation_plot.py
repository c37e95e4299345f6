"""gh.pl.perturbation_response: observed bars and one marker series per method, on the given Axes."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import genohoption as gh

GENES = ["A", "B", "C", "D"]


def _data():
    # control mean (1, 2, 3, 1); P+ctrl mean (1, 4, 0, 1): top DE genes C (-3) then B (+2)
    X = np.array([[1, 2, 3, 1], [1, 2, 3, 1], [1, 4, 0, 1.1], [1, 4, 0, 0.9]], np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "ctrl", "P+ctrl", "P+ctrl"]}, index=[f"c{i}" for i in range(4)])
    var = pd.DataFrame({"symbol": [g.lower() for g in GENES]}, index=GENES)
    return ad.AnnData(X=X, obs=obs, var=var)


def test_response_draws_observed_and_each_method():
    adata = _data()
    model = pd.DataFrame([[1.0, 3.0, 1.0, 1.0]], index=["P+ctrl"], columns=GENES)
    mean = pd.DataFrame([[1.0, 2.5, 2.0, 1.0]], index=["P+ctrl"], columns=GENES)
    fig, ax = plt.subplots()
    out = gh.pl.perturbation_response(adata, {"model": model, "mean": mean}, "P+ctrl", n_genes=2,
                                      gene_symbols="symbol", ax=ax, show=False)
    assert out is ax
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [-3.0, 2.0], atol=1e-6)  # observed change of C, then B
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c", "b"]
    offsets = [c.get_offsets()[:, 1] for c in ax.collections]
    np.testing.assert_allclose(offsets[0], [-2.0, 1.0])  # model: predicted change of C, B
    np.testing.assert_allclose(offsets[1], [-1.0, 0.5])
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["mean", "model", "observed"]
    plt.close(fig)


def test_response_bad_input():
    adata = _data()
    pred = pd.DataFrame([[1.0, 3.0, 1.0, 1.0]], index=["P+ctrl"], columns=GENES)
    with pytest.raises(KeyError, match="lack"):
        gh.pl.perturbation_response(adata, {"m": pred}, ["P+ctrl", "ctrl"], show=False)
    with pytest.raises(KeyError, match="no cells"):
        gh.pl.perturbation_response(adata, {"m": pred}, "Q+ctrl", show=False)
    with pytest.raises(ValueError, match="empty"):
        gh.pl.perturbation_response(adata, {}, "P+ctrl", show=False)
    plt.close("all")
