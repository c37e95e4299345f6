"""Inference outputs are written in place into (n_obs, ...) arrays, equal to the minibatch outputs joined."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import genohoption as gh
from genohoption.model._query import RowOutputs, aligned_matrix, iter_rows
from genohoption.tl._calibration import scaled_probabilities

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}


def test_row_outputs_fill_rows_in_order():
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(b, 4)).astype(np.float32), rng.integers(0, 9, b)) for b in (3, 3, 1)]
    rows = RowOutputs(7)
    for z, codes in parts:
        rows.add(torch.from_numpy(z), torch.from_numpy(codes))
    z_all, codes_all = rows.arrays
    assert z_all.dtype == np.float32 and codes_all.dtype == np.int64
    np.testing.assert_array_equal(z_all, np.concatenate([z for z, _ in parts]))
    np.testing.assert_array_equal(codes_all, np.concatenate([c for _, c in parts]))
    with pytest.raises(ValueError, match="at most 7 rows"):
        rows.add(*(torch.from_numpy(a) for a in parts[2]))


def test_row_outputs_with_widths_allocate_before_any_minibatch():
    rows = RowOutputs(0, ((5,),))
    assert rows.arrays[0].shape == (0, 5) and rows.arrays[0].dtype == np.float32
    rows = RowOutputs(2, ((3,),))
    with pytest.raises(ValueError, match="expected 1 outputs"):
        rows.add(torch.zeros(2, 3), torch.zeros(2))


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 3, 100)
    rate = rng.gamma(1.0, 1.0, (3, 30)) * (rng.random((3, 30)) < 0.5)
    adata = ad.AnnData(sp.csr_matrix(np.log1p(rng.poisson(rate[types] * 3)).astype(np.float32)),
                       obs=pd.DataFrame({"cell_type": pd.Categorical(np.array(["a", "b", "c"])[types])},
                                        index=[f"c{i}" for i in range(100)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.1, n_neighbors=5)
    scvi.settings.seed = 0
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, **SMALL)
    model.train(max_epochs=1, batch_size=20, enable_progress_bar=False)
    return model


def test_predict_and_embeddings_equal_joined_minibatch_outputs(model):
    """The arrays filled in place hold, bit for bit, what each forward pass returned (32, 32, 32 and 4 cells)."""
    X = aligned_matrix(model.adata, model.var_names, None)
    model.module.eval()
    with torch.inference_mode():
        outs = [model.module(x) for x in iter_rows(X, 32, model.device)]
    z = np.concatenate([o["z"].numpy() for o in outs])
    # predict turns the logits into probabilities in float64, stored as float32 (temperature 1 until calibrate())
    p = scaled_probabilities(np.concatenate([o["logits"].numpy() for o in outs])).astype(np.float32)
    assert len(outs) == 4 and z.shape == (100, model.get_latent_representation(batch_size=32).shape[1])
    np.testing.assert_array_equal(model.get_latent_representation(batch_size=32), z)
    model.predict(batch_size=32)
    np.testing.assert_array_equal(model.adata.obsm["genohoption_probabilities"].to_numpy(), p)
    np.testing.assert_array_equal(model.adata.obs["genohoption_confidence"].to_numpy(), p.max(1))
