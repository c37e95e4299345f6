"""Papalexi 2021 loader: the conversion's rules on a small known case, and the real files (from pooch's cache,
never downloaded here) against the GEARS-format file of ../shared/data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pooch
import pytest
import scipy.sparse as sp

import genohoption as gh
from genohoption.datasets import _papalexi


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, url, output_file, pooch_obj, check_only=False):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", refuse)


def small_screen():
    """4 cells: a clear STAT1 guide, a clear control guide, too few guide UMIs (4), a mixed cell (0.75)."""
    guides = np.array(["STAT1g1", "NTg1", "JAK2g1"])
    umis = np.array([[10, 0, 4, 3],
                     [0, 8, 0, 0],
                     [1, 0, 0, 1]], dtype=float)
    counts = np.array([[1, 0, 2, 3],
                       [0, 5, 1, 0]], dtype=float)
    lowmoi = {
        "response_matrix": (sp.csc_matrix(counts), np.array(["STAT1", "GENE2"])),
        "grna_matrix": (sp.csc_matrix(umis), guides),
        "grna_target_data_frame": pd.DataFrame({"grna_id": guides, "grna_target": ["STAT1", "non-targeting", "JAK2"]}),
    }
    covariates = pd.DataFrame({"response_n_umis": [100, 50, 20, 10], "response_n_nonzero": [9, 8, 7, 6],
                               "bio_rep": pd.Categorical(["rep_1", "rep_2", "rep_1", "rep_3"]),
                               "p_mito": [0.1, 0.2, 0.3, 0.4]})
    return lowmoi, covariates


def test_conversion_rules_on_a_known_case():
    adata = _papalexi.papalexi_to_gears(*small_screen())
    assert adata.obs_names.tolist() == ["papalexi_cell00000", "papalexi_cell00001"]
    assert adata.obs["condition"].tolist() == ["STAT1+ctrl", "ctrl"]
    assert adata.obs["guide_id"].tolist() == ["STAT1g1", "NTg1"]
    assert adata.obs["grna_n_umis_top"].tolist() == [10, 8]
    np.testing.assert_allclose(adata.obs["grna_umi_frac_top"], [10 / 11, 1.0], rtol=1e-6)
    assert adata.obs["dose_val"].tolist() == ["1+1", "1"]
    assert adata.obs["condition_name"].tolist() == ["THP-1_STAT1+ctrl_1+1", "THP-1_ctrl_1"]
    assert adata.obs["total_counts_full"].tolist() == [100, 50]
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), [[1, 0], [0, 5]])
    # log1p of counts per 10,000 of the whole-transcriptome total, not of the measured genes' sum
    np.testing.assert_allclose(adata.X.toarray(), np.log1p([[1e4 / 100, 0], [0, 5e4 / 50]]), rtol=1e-6)
    assert adata.var["gene_name"].tolist() == ["STAT1", "GENE2"]
    assert gh.tl.parse_condition("STAT1+ctrl") == ("STAT1",)


def test_real_files_give_the_shared_gears_file(shared_data, no_network):
    cache = pooch.os_cache("genohoption")
    if not all((cache / f.fname).is_file() for f in _papalexi.PAPALEXI_FILES):
        pytest.skip(f"the Papalexi .rda files are not in {cache} (gh.datasets.papalexi2021() downloads them)")
    import anndata as ad

    got = gh.datasets.papalexi2021(cache_dir=cache)
    want = ad.read_h5ad(shared_data / "perturbation" / "papalexi2021_thp1_gears.h5ad")
    assert got.shape == want.shape == (16192, 299)
    assert (got.X != want.X).nnz == 0
    assert (got.layers["counts"] != want.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(got.obs, want.obs)
    pd.testing.assert_frame_equal(got.var, want.var)
