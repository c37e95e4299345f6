"""Our metrics against Arc Institute's cell-eval (the Virtual Cell Challenge's evaluator) where definitions coincide.

- ``pearson_delta``: both correlate the predicted and observed mean changes from the control mean (cell-eval's
  ``pearson_delta`` on pseudobulks of the predicted and real cells); equal when the predicted cells' control
  group is the real control cells, the cells the predictions start from.
- ``mse``: the mean squared error of the mean profiles.
- centroid accuracy and cell-eval's ``discrimination_score_l2`` rank the true centroid among the candidates by
  the Euclidean distance of the effects: with ``r`` the number of other conditions closer than the true one
  and ``n`` conditions, ours is ``1 - r / (n - 1)`` and cell-eval's ``1 - r / n`` (perturbation names that are
  not gene names: cell-eval excludes no target gene then).
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genohoption as gh


def _data(seed=0, n_genes=25, n_ctrl=40, n_cells=20, n_conds=5):
    rng = np.random.default_rng(seed)
    conds = [f"P{i}+ctrl" for i in range(n_conds)]
    base = rng.gamma(2.0, 0.4, n_genes)
    blocks, labels = [rng.gamma(4.0, base / 4.0, (n_ctrl, n_genes))], ["ctrl"] * n_ctrl
    scale = {}
    for c in conds:
        scale[c] = np.exp(rng.normal(0, 0.3, n_genes))
        blocks.append(rng.gamma(4.0, base * scale[c] / 4.0, (n_cells, n_genes)))
        labels += [c] * n_cells
    X = np.minimum(np.vstack(blocks), 12).astype(np.float32)  # cell-eval checks a log1p scale (< 15)
    obs = pd.DataFrame({"condition": labels}, index=[f"r{i}" for i in range(len(labels))])
    real = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    # per-cell predictions: every control cell scaled by a noisy version of the condition's true scale
    ctrl = X[:n_ctrl]
    pred_blocks, pred_labels = [ctrl], ["ctrl"] * n_ctrl
    for c in conds:
        pred_blocks.append(np.minimum(ctrl * (scale[c] * np.exp(rng.normal(0, 0.3, n_genes))), 12).astype(np.float32))
        pred_labels += [c] * n_ctrl
    pred = ad.AnnData(X=np.vstack(pred_blocks).astype(np.float32),
                      obs=pd.DataFrame({"condition": pred_labels}, index=[f"p{i}" for i in range(len(pred_labels))]),
                      var=real.var.copy())
    return real, pred, conds


# cell-eval 0.8 calls polars' enable_string_cache, deprecated in polars 2
@pytest.mark.filterwarnings("ignore:the string cache has been replaced:DeprecationWarning")
def test_pearson_delta_mse_and_discrimination_agree_with_cell_eval(tmp_path):
    cell_eval = pytest.importorskip("cell_eval", reason="cell-eval is in the test extra")
    real, pred, conds = _data()
    logging.getLogger("cell_eval").setLevel(logging.ERROR)
    evaluator = cell_eval.MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert="ctrl",
                                           pert_col="condition", num_threads=1, outdir=str(tmp_path), skip_de=True)
    results, _ = evaluator.compute(profile="anndata", skip_metrics=["clustering_agreement", "pearson_edistance"],
                                   write_csv=False)
    theirs = results.to_pandas().set_index("perturbation").loc[conds]
    # ours: mean profiles of the same predicted cells, the real control cells as the reference
    values = pred.obs["condition"].to_numpy()
    profiles = pd.DataFrame(np.stack([pred.X[values == c].astype(np.float64).mean(0) for c in conds]), index=conds,
                            columns=pred.var_names)
    ours = gh.tl.perturbation_metrics(real, profiles, perturbed_reference=np.zeros(real.n_vars))
    np.testing.assert_allclose(ours["pearson_delta"], theirs["pearson_delta"], atol=1e-5)
    np.testing.assert_allclose(ours["mse"], theirs["mse"], rtol=1e-4)
    n = len(conds)
    rank = np.rint((1 - ours["centroid_accuracy"].to_numpy()) * (n - 1))  # conditions closer than the true one
    np.testing.assert_allclose(theirs["discrimination_score_l2"], 1 - rank / n, atol=1e-9)
    # the comparison is not trivial: the predictions are imperfect
    assert 0.2 < ours["pearson_delta"].mean() < 0.99 and set(rank) == {0.0, 1.0}  # some nearest, some not
