"""in_silico_perturbation on real Papalexi control cells (a model pretrained on them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scvi

import genohoption as gh


def test_papalexi_deletion_of_a_knockout_target(shared_data):
    adata = gh.datasets.read_gears(shared_data / "perturbation" / "papalexi2021_thp1_gears.h5ad")
    cond = adata.obs["condition"].astype(str)
    rng = np.random.default_rng(0)
    ctrl = adata[np.sort(rng.choice(np.flatnonzero(cond == "ctrl"), 300, replace=False))].copy()
    gh.pp.build_gene_graph(ctrl, gene_symbols="gene_name", allow_empty_prior=True)
    gh.GenoHoptionModel.setup_anndata(ctrl, labels_key=None)
    scvi.settings.seed = 0
    model = gh.GenoHoptionModel(ctrl, d_model=16, n_heads=2, n_layers=1, d_hid=32)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    gene = ctrl.var_names[ctrl.var["gene_name"] == "STAT1"][0]
    mean = pd.Series(np.asarray(ctrl.X.mean(0)).ravel(), index=ctrl.var_names)
    matched = (mean.drop(gene) - mean[gene]).abs().sort_values().index[:5].tolist()
    query = ctrl.copy()
    res = gh.tl.in_silico_perturbation(model, query, [gene, *matched], return_embeddings=True)
    # deleting STAT1 equals the model on the cells without STAT1
    without = model.get_latent_representation(ctrl[:, ctrl.var_names != gene].copy())
    np.testing.assert_allclose(res.perturbed[gene], without, atol=1e-5)
    expresses = np.asarray((ctrl[:, gene].X > 0).todense()).ravel()
    assert res.n_cells[gene] == expresses.sum() > 200
    assert (res.cell_shift.loc[expresses, gene] > 0).all()
    ko = model.get_latent_representation(adata[(cond == "STAT1+ctrl").to_numpy()].copy())
    table = gh.tl.shift_alignment(res, {gene: ko}, null={gene: matched})
    assert -1 <= table.loc[gene, "alignment"] <= 1 and table.loc[gene, "n_null"] == 5
    assert table.loc[gene, "p_value"] in {k / 6 for k in range(1, 7)}
    assert list(query.obsm["in_silico"].columns) == [gene, *matched]
