"""Self-supervised pretraining: the objective, model.pretrain, the pretraining task, pretrained= round trip."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import genohoption as gh
from genohoption.data import tokenize
from genohoption.module import PretrainingModule

SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1, "d_hid": 64}
QUIET = {"enable_progress_bar": False}


def _modules(n_cells=400, n_modules=4, genes_per_module=10, seed=0) -> ad.AnnData:
    """Cells whose genes come in co-expressed modules: a hidden value is predictable from its module."""
    rng = np.random.default_rng(seed)
    level = rng.gamma(2.0, 1.0, size=(n_cells, n_modules))
    X = np.repeat(level, genes_per_module, axis=1) + rng.normal(0, 0.15, (n_cells, n_modules * genes_per_module))
    X = np.clip(X, 0, None).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = 0.0  # some dropouts
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"m{g // genes_per_module}_g{g}" for g in range(X.shape[1])]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.obs["cell_type"] = pd.Categorical(np.where(level[:, 0] > level[:, 1], "a", "b"))
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.3, n_neighbors=8)
    return adata


def _masked_predictions(module, X, seed=0):
    """Hide values as in training (seeded) and return the module's outputs, in evaluation mode."""
    module.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        return module(torch.as_tensor(X))


def test_pretraining_loss_falls_and_beats_the_gene_mean():
    scvi.settings.seed = 0
    adata = _modules()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key=None)
    model = gh.GenoHoptionModel(adata, **SMALL)
    assert model.task == "pretraining"
    model.train(max_epochs=12, batch_size=32, lr=3e-3, early_stopping=False, **QUIET)
    hist = model.history_
    assert {"train_loss", "validation_loss", "train_mse_token", "train_mse_cell"} <= set(hist)
    loss = hist["train_loss"].iloc[:, 0].astype(float).to_numpy()
    assert loss[-1] < 0.5 * loss[0]
    X = adata.X.toarray()
    out = _masked_predictions(model.module, X)
    masked, truth = out["masked"], out["target"][out["masked"]]
    mse = float(((out["pred"][masked] - truth) ** 2).mean())
    # the reference predictor: each hidden value replaced by its gene's mean over the cells expressing it
    toks = tokenize(torch.as_tensor(X), None)
    gene_mean = torch.as_tensor(np.where(X > 0, X, np.nan)).nanmean(0)
    base_mse = float(((gene_mean[toks.genes.clamp(min=0)][masked] - truth) ** 2).mean())
    assert mse < 0.6 * base_mse, (mse, base_mse)


def test_mask_covers_the_requested_fraction():
    torch.manual_seed(0)
    module = PretrainingModule(10, torch.zeros(11, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                               mask_ratio=0.5, attention="dense", **SMALL)
    x = torch.zeros(3, 10)
    x[0, :8] = 1.0  # 8 expressed genes -> 4 masked
    x[1, :1] = 1.0  # 1 expressed gene -> 1 masked
    out = module(x)
    assert out["masked"].sum(1).tolist() == [4, 1, 0]
    assert not out["masked"][:, 0].any()  # never the CLS token
    with pytest.raises(ValueError, match="mask_ratio"):
        PretrainingModule(10, torch.zeros(11, dtype=torch.long), torch.zeros(0, dtype=torch.long), mask_ratio=1.0)


def test_model_pretrain_changes_backbone_only_and_records_history():
    scvi.settings.seed = 0
    adata = _modules(n_cells=200)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, **SMALL)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    # unlabelled cells serve, with the genes in another order (aligned by name)
    unlabelled = adata[:, ::-1].copy()
    del unlabelled.obs["cell_type"]
    uns_before = set(unlabelled.uns)
    model.pretrain(unlabelled, max_epochs=2, batch_size=32, **QUIET)
    after = model.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("cls_decoder."))
    assert set(model.pretrain_history_) >= {"train_loss", "validation_loss"}
    assert set(unlabelled.uns) == uns_before  # the caller's data get no scvi-tools keys
    model.train(max_epochs=1, batch_size=32, **QUIET)
    assert model.is_trained_


def test_pretrained_backbone_round_trip(tmp_path):
    scvi.settings.seed = 0
    corpus = _modules(n_cells=200)
    gh.GenoHoptionModel.setup_anndata(corpus, labels_key=None)
    pre = gh.GenoHoptionModel(corpus, **SMALL)
    pre.train(max_epochs=1, batch_size=32, **QUIET)
    pre.save(tmp_path / "backbone")
    z = pre.get_latent_representation(corpus)
    assert z.shape == (corpus.n_obs, SMALL["d_model"]) and np.isfinite(z).all()
    # a reference with the corpus' genes in another order and two genes missing
    ref = _modules(n_cells=120, seed=1)
    ref = ref[:, list(ref.var_names[::-1][2:])].copy()
    gh.pp.build_gene_graph(ref, prior=None, min_corr=0.3, n_neighbors=8)
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="cell_type")
    model = gh.GenoHoptionModel(ref, pretrained=tmp_path / "backbone")
    report = model.pretrained_report_
    assert report.n_genes_matched == ref.n_vars and not report.shape_mismatches
    got, want = model.module.backbone.state_dict(), pre.module.backbone.state_dict()
    for key in ("encoder.embedding.weight", "transformer_encoder.layers.0.self_attn.Wqkv.weight"):
        torch.testing.assert_close(got[key], want[key])
    # gene i of the reference is token gene_to_token[i] of the pretrained vocabulary
    g2t = model.module.backbone.gene_to_token.numpy()
    np.testing.assert_array_equal(g2t, corpus.var_names.get_indexer(ref.var_names))
    model.train(max_epochs=1, batch_size=32, **QUIET)
    assert model.predict(ref).shape == (ref.n_obs,)


def test_pretraining_refusals():
    adata = _modules(n_cells=60)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key=None)
    model = gh.GenoHoptionModel(adata, **SMALL)
    with pytest.raises(TypeError, match="pretraining"):
        model.predict(adata)
    with pytest.raises(TypeError, match=r"model\.train"):
        model.pretrain(adata)
    with pytest.raises(ValueError, match="scGPT-style"):
        gh.GenoHoptionModel(adata, backbone="geneformer", **SMALL)


def test_whole_cells_by_default():
    x = torch.zeros(2, 700)
    x[0, :650] = torch.rand(650) + 0.1
    x[1, :3] = 1.0
    toks = tokenize(x, None)
    assert toks.genes.shape == (2, 651) and int(toks.lengths[0]) == 651 and int(toks.lengths[1]) == 4
    capped = tokenize(x, 512)
    assert capped.genes.shape[1] == 512
    adata = _modules(n_cells=40)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    assert gh.GenoHoptionModel(adata, **SMALL).module.max_seq_len is None
