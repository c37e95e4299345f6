"""Our GEARS metrics against GEARS' own code (``cell-gears`` on PyPI, ``gears/data_utils.py`` and ``gears/inference.py``).

GEARS' package imports torch_geometric at its top level; the two modules that define the DE genes and the
metrics are loaded on their own here (``gears.utils``, which needs torch_geometric, is replaced by the three
condition parsers ``data_utils`` imports from it).
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genohoption as gh


def _load_gears():
    spec = importlib.util.find_spec("gears")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("cell-gears is not installed (pip install cell-gears; it is in the test extra)")
    root = spec.submodule_search_locations[0]
    package = types.ModuleType("_gears_ref")
    package.__path__ = [root]
    utils = types.ModuleType("_gears_ref.utils")
    utils.parse_single_pert = lambda i: i.split("+")[1] if i.split("+")[0] == "ctrl" else i.split("+")[0]
    utils.parse_combo_pert = lambda i: tuple(i.split("+"))
    utils.parse_any_pert = lambda i: [g for g in i.split("+") if g != "ctrl"]
    utils.print_sys = print
    saved = {k: sys.modules.get(k) for k in ("_gears_ref", "_gears_ref.utils")}
    sys.modules["_gears_ref"], sys.modules["_gears_ref.utils"] = package, utils
    import scanpy as sc

    verbosity = sc.settings.verbosity
    modules = {}
    try:
        with warnings.catch_warnings():
            for name in ("data_utils", "inference"):
                mspec = importlib.util.spec_from_file_location(f"_gears_ref.{name}", f"{root}/{name}.py")
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
                modules[name] = module
    finally:
        sc.settings.verbosity = verbosity  # data_utils silences scanpy at import
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return modules["data_utils"], modules["inference"]


def _screen(seed=0, n_genes=40):
    """A log-normalised screen with dropouts: 60 control cells, three knock-downs of 30 cells."""
    rng = np.random.default_rng(seed)
    conditions = ["ctrl"] * 60 + ["G0+ctrl"] * 30 + ["G1+ctrl"] * 30 + ["G2+ctrl"] * 30
    base = rng.gamma(2.0, 0.6, n_genes)
    effect = {"ctrl": np.zeros(n_genes)}
    for k in range(3):
        e = rng.normal(0, 0.5, n_genes) * (rng.random(n_genes) < 0.4)
        e[k] = -base[k]  # the knocked-down gene
        effect[f"G{k}+ctrl"] = e
    X = np.stack([np.clip(base + effect[c] + rng.normal(0, 0.4, n_genes), 0, None) for c in conditions])
    X[rng.random(X.shape) < 0.25] = 0.0  # dropouts
    X[:, n_genes - 1] = 0.0  # a gene silent everywhere (a "true zero")
    X[60:90, 0] = 0.0  # G0 silenced completely (its own gene: dropped by the non-zero filter)
    obs = pd.DataFrame({"condition": conditions, "cell_type": "K562"}, index=[f"c{i}" for i in range(len(conditions))])
    var = pd.DataFrame({"gene_name": [f"G{i}" for i in range(n_genes)]}, index=[f"ENSG{i:03d}" for i in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var)


def _predictions(adata, seed=1):
    """Made-up mean profiles of the three conditions: the truth, perturbed."""
    rng = np.random.default_rng(seed)
    values = adata.obs["condition"].astype(str).to_numpy()
    X = adata.X.toarray()
    conds = ["G0+ctrl", "G1+ctrl", "G2+ctrl"]
    pred = np.stack([X[values == c].mean(0) + rng.normal(0, 0.3, adata.n_vars) for c in conds])
    return pd.DataFrame(pred, index=conds, columns=adata.var_names)


def test_metrics_match_gears_deeper_and_non_dropout_analysis():
    data_utils, inference = _load_gears()
    adata = _screen()
    gears = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gears = data_utils.get_DE_genes(gears, skip_calc_de=False)
        gears = data_utils.get_dropout_non_zero_genes(gears)
    pred = _predictions(adata)
    values = adata.obs["condition"].astype(str).to_numpy()
    truth_rows = [np.flatnonzero(values == c) for c in pred.index]
    name_of = dict(gears.obs[["condition", "condition_name"]].astype(str).values)
    id2idx = {g: i for i, g in enumerate(adata.var_names)}
    de_idx = {c: [id2idx[g] for g in gears.uns["rank_genes_groups_cov_all"][name_of[c]][:20]] for c in pred.index}
    X = adata.X.toarray()
    pert_cat = np.concatenate([[c] * rows.size for c, rows in zip(pred.index, truth_rows, strict=True)])
    P = np.concatenate([np.repeat(pred.loc[[c]].to_numpy(), rows.size, 0) for c, rows in zip(pred.index, truth_rows,
                                                                                            strict=True)])
    T = np.concatenate([X[rows] for rows in truth_rows])
    test_res = {"pert_cat": pert_cat, "pred": P, "truth": T,
                "pred_de": np.stack([P[i, de_idx[c]] for i, c in enumerate(pert_cat)]),
                "truth_de": np.stack([T[i, de_idx[c]] for i, c in enumerate(pert_cat)])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deeper = inference.deeper_analysis(gears, test_res)
        non_dropout = inference.non_dropout_analysis(gears, test_res)

    reference = np.zeros(adata.n_vars)  # Systema's metrics are not compared here
    ours = gh.tl.perturbation_metrics(adata, pred, n_de=20, perturbed_reference=reference)
    ours_nd = gh.tl.perturbation_metrics(adata, pred, n_de=20, de_filter="non_dropout", perturbed_reference=reference)
    for c in pred.index:
        # the top-20 DE genes: GEARS' rank_genes_groups_cov_all and its non-dropout filter
        ranked = gh.tl.top_de_genes(adata, conditions=[c], n_genes=20)[c]
        assert list(adata.var_names[ranked]) == gears.uns["rank_genes_groups_cov_all"][name_of[c]][:20]
        filtered = gh.tl.top_de_genes(adata, conditions=[c], n_genes=20, gene_filter="non_dropout")[c]
        assert list(adata.var_names[filtered]) == list(gears.uns["top_non_dropout_de_20"][name_of[c]])
        non_zero = gh.tl.top_de_genes(adata, conditions=[c], n_genes=20, gene_filter="non_zero")[c]
        assert list(adata.var_names[non_zero]) == list(gears.uns["top_non_zero_de_20"][name_of[c]])
        # the metrics
        assert ours.loc[c, "pearson_delta"] == pytest.approx(deeper[c]["pearson_delta"], abs=1e-6)
        assert ours.loc[c, "pearson_delta_de"] == pytest.approx(deeper[c]["pearson_delta_de"], abs=1e-6)
        assert ours.loc[c, "direction_accuracy_de"] == pytest.approx(deeper[c]["frac_correct_direction_20"])
        assert ours_nd.loc[c, "pearson_delta_de"] == pytest.approx(
            non_dropout[c]["pearson_delta_top20_de_non_dropout"], abs=1e-6)
        assert ours_nd.loc[c, "direction_accuracy_de"] == pytest.approx(
            non_dropout[c]["frac_correct_direction_top20_non_dropout"])
    # the filter matters on these data: G0's own gene (silenced) is a top DE gene, dropped by the filter
    g0 = name_of["G0+ctrl"]
    assert "ENSG000" in gears.uns["rank_genes_groups_cov_all"][g0][:20]
    assert "ENSG000" not in list(gears.uns["top_non_dropout_de_20"][g0])
