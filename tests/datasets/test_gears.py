"""read_gears on the real GEARS-format Norman subset; the Perturb-seq simulator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import genohoption as gh


def test_read_gears_norman_subset(shared_data):
    path = shared_data / "perturbation" / "norman_subset_gears_format.h5ad"
    adata = gh.datasets.read_gears(path)
    assert adata.shape == (50, 50) and sp.issparse(adata.X) and adata.X.dtype == np.float32
    assert adata.var_names[0].startswith("ENSG")
    np.testing.assert_array_equal(adata.var["gene_name"], adata.var["feature_name"])
    assert adata.uns["read_gears"]["symbol_column"] == "feature_name"
    assert (adata.obs["condition"] == "ctrl").sum() == 6
    assert "KLF1" in adata.uns["read_gears"]["unmeasured_perturbed_genes"]
    kept = gh.datasets.read_gears(path, drop_unmeasured=True)
    # none of the 41 perturbed genes is among the subset's 50 measured genes: only controls remain
    assert set(kept.obs["condition"]) == {"ctrl"} and kept.uns["read_gears"]["n_cells_dropped"] == 44


def test_read_gears_errors(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="GEARS"):
        gh.datasets.read_gears(tmp_path / "missing.h5ad")
    adata = gh.datasets.read_gears(shared_data / "perturbation" / "norman_subset_gears_format.h5ad")
    adata.obs["condition"] = adata.obs["condition"].astype(str).str.replace("ctrl", "control")
    adata.write_h5ad(tmp_path / "noctrl.h5ad")
    with pytest.raises(ValueError, match="no control"):
        gh.datasets.read_gears(tmp_path / "noctrl.h5ad")
    with pytest.raises(KeyError, match="perturbation_key"):
        gh.datasets.read_gears(tmp_path / "noctrl.h5ad", perturbation_key="nope")


def test_simulate_perturbation():
    adata = gh.datasets.simulate_perturbation(
        n_genes=30, n_regulators=10, n_perturbed=5, n_combos=4, n_control=40, cells_per_condition=6, seed=1
    )
    cond = adata.obs["condition"].astype(str)
    assert adata.n_vars == 30 and (cond == "ctrl").sum() == 40
    assert sum(c.endswith("+ctrl") for c in cond.unique()) == 5
    assert sum("ctrl" not in c for c in cond.unique()) == 4
    # knocked-down genes are lower than in control
    X = adata.X.toarray()
    for g in adata.uns["simulation"]["perturbed_genes"]:
        j = adata.var_names.get_loc(g)
        assert X[cond == f"{g}+ctrl", j].mean() < X[cond == "ctrl", j].mean()
    again = gh.datasets.simulate_perturbation(
        n_genes=30, n_regulators=10, n_perturbed=5, n_combos=4, n_control=40, cells_per_condition=6, seed=1
    )
    np.testing.assert_array_equal(again.X.toarray(), X)
