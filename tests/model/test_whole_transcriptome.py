"""Every gene of the panel as a token (gene_tokens="all", scGPT's include_zero_gene="all"; issue 15, item 4)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import genohoption as gh
from genohoption.data import PAD, tokenize
from genohoption.module._inputs import backbone_tokens
from genohoption.nn import ScGPTBackbone

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}


def test_tokenize_candidates_restrict_all_genes():
    x = torch.tensor([[0.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    tok = tokenize(x, None, include_zero=True)
    assert tok.genes.tolist() == [[PAD, 0, 1, 2, 3]] * 2
    assert tok.values.tolist() == [[0.0, 0.0, 2.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0, 0.0]]
    assert not tok.padding_mask.any()
    cand = torch.tensor([True, False, True, True])
    tok = tokenize(x, None, include_zero=True, candidates=cand)
    assert tok.genes.tolist() == [[PAD, 0, 2, 3]] * 2
    # with a cap at inference: the most expressed genes first, then unexpressed ones fill the slots
    tok = tokenize(x, 3, include_zero=True)
    assert tok.genes[0].tolist() == [PAD, 1, 3]


def test_backbone_tokens_all_genes_of_the_vocabulary():
    backbone = ScGPTBackbone(5, d_model=8, n_heads=2, n_layers=1, d_hid=16)
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0]])
    assert backbone_tokens(backbone, x, None, sample=False).genes.tolist() == [[PAD, 1, 4]]
    assert backbone_tokens(backbone, x, None, sample=False, include_zero=True).genes.tolist() == [[PAD, 0, 1, 2, 3, 4]]
    backbone.gene_to_token = torch.tensor([3, -1, 7, 8, -1])  # a pretrained vocabulary without genes 1 and 4
    tok = backbone_tokens(backbone, x, None, sample=False, include_zero=True)
    assert tok.genes.tolist() == [[PAD, 0, 2, 3]]


@pytest.fixture(scope="module")
def small_adata():
    rng = np.random.default_rng(0)
    n, g = 48, 30
    types = np.repeat(["a", "b"], n // 2)
    X = rng.poisson(0.4, size=(n, g)).astype(np.float32)
    X[types == "a", :5] += rng.poisson(3, size=(n // 2, 5))
    adata = ad.AnnData(
        sparse.csr_matrix(np.log1p(X)),
        obs=pd.DataFrame({"cell_type": pd.Categorical(types)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(g)]),
    )
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.1, n_neighbors=4)
    return adata


def test_model_all_genes_trains_saves_and_loads(small_adata, tmp_path):
    adata = small_adata.copy()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, gene_tokens="all", **SMALL)
    x = torch.as_tensor(adata.X[:4].toarray())
    _, tokens = model.module.encode_tokens(x)
    assert tokens.genes.shape == (4, adata.n_vars + 1) and not tokens.padding_mask.any()
    model.train(max_epochs=2, batch_size=16, train_size=1.0, enable_progress_bar=False)
    losses = model.history_["train_loss"].iloc[:, 0].astype(float).to_numpy()
    assert np.isfinite(losses).all()
    pred = model.predict(adata.copy())
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m", adata=adata)
    assert loaded.params["gene_tokens"] == "all" and loaded.module.include_zero
    pd.testing.assert_series_equal(loaded.predict(adata.copy()), pred)


def test_gene_tokens_refusals(small_adata):
    adata = small_adata.copy()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(ValueError, match="gene_tokens"):
        gh.GenoHoptionModel(adata, gene_tokens="zeros", **SMALL)
    with pytest.raises(ValueError, match="scGPT"):
        gh.GenoHoptionModel(adata, gene_tokens="all", backbone="geneformer", **SMALL)
