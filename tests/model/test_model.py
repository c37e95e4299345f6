import copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genohoption as gh

TRAIN = {"max_epochs": 6, "batch_size": 32, "lr": 3e-3, "enable_progress_bar": False}
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1, "d_hid": 64}


@pytest.fixture(scope="module")
def pbmc():
    adata = gh.datasets.pbmc68k_reduced()
    # 6 frequent types keep the test quick but real
    keep = adata.obs["bulk_labels"].value_counts().index[:6]
    adata = adata[adata.obs["bulk_labels"].isin(keep)].copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str).astype("category")
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.2)
    return adata


@pytest.fixture(scope="module")
def trained(pbmc):
    ref = pbmc[pbmc.obs["lane"].isin(["1", "2", "3", "4", "5", "6"])].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, attention="ppr", **SMALL)
    model.train(**TRAIN)
    query = pbmc[~pbmc.obs["lane"].isin(["1", "2", "3", "4", "5", "6"])].copy()
    return model, ref, query


def test_train_records_history_and_learns(trained):
    model, _, query = trained
    assert model.is_trained_
    hist = model.history_
    assert {"train_loss", "validation_loss", "accuracy_validation"} <= set(hist)
    losses = hist["train_loss"].iloc[:, 0].astype(float).to_numpy()
    assert losses[-1] < losses[0]
    train_acc = hist["accuracy_train"].iloc[:, 0].astype(float).to_numpy()
    assert train_acc[-1] > train_acc[0]
    model.predict(query)
    acc = gh.tl.annotation_metrics(query, "bulk_labels")["accuracy"]
    chance = query.obs["bulk_labels"].value_counts(normalize=True).max()
    # measured over 10 seeds (either kernel backend): 0.71-0.81 on this split, chance 0.36; before the
    # BatchNorm statistics were re-estimated (PreciseBatchNorm) the same runs gave 0.18-0.71
    assert acc > max(chance + 0.2, 0.6), (acc, chance)
    norm = model.module.cls_decoder.input_norm
    assert int(norm.num_batches_tracked) <= 8 and norm.momentum == 0.1  # re-estimated, momentum restored


def test_predict_writes_obs_obsm_uns(trained):
    model, _, query = trained
    q = query.copy()
    out = model.predict(q)
    assert isinstance(out, pd.Series) and out.index.equals(q.obs_names)
    assert isinstance(q.obs["genohoption_prediction"].dtype, pd.CategoricalDtype)
    assert set(q.obs["genohoption_prediction"].cat.categories) == set(model.labels)
    conf = q.obs["genohoption_confidence"].to_numpy()
    probs = q.obsm["genohoption_probabilities"]
    assert probs.shape == (q.n_obs, len(model.labels))
    np.testing.assert_allclose(probs.to_numpy().sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(conf, probs.to_numpy().max(1))
    assert (probs.idxmax(axis=1).to_numpy() == out.astype(str).to_numpy()).all()
    assert q.uns["genohoption"]["predict"]["key_added"] == "genohoption_prediction"


def test_latent_shape_and_determinism(trained):
    model, _, query = trained
    z1 = model.get_latent_representation(query)
    z2 = model.get_latent_representation(query)
    assert z1.shape == (query.n_obs, SMALL["d_model"])
    np.testing.assert_array_equal(z1, z2)


def test_save_load_round_trip(trained, tmp_path):
    model, _, query = trained
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m", adata=query)
    np.testing.assert_array_equal(loaded.labels, model.labels)
    a, b = query.copy(), query.copy()
    pa, pb = model.predict(a), loaded.predict(b)
    assert (pa == pb).all()
    np.testing.assert_allclose(a.obsm["genohoption_probabilities"], b.obsm["genohoption_probabilities"],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.get_latent_representation(query),
                               loaded.get_latent_representation(query), rtol=1e-6, atol=1e-6)


def test_load_rejects_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GenoHoptionModel\.save"):
        gh.GenoHoptionModel.load(tmp_path)


def test_query_genes_aligned_by_name(trained):
    model, _, query = trained
    base = model.get_latent_representation(query)
    rng = np.random.default_rng(0)
    shuffled = query[:, rng.permutation(query.n_vars)].copy()
    np.testing.assert_allclose(model.get_latent_representation(shuffled), base, rtol=1e-5, atol=1e-5)
    # a query missing genes equals the full query with those genes zeroed
    drop = query.var_names[::7]
    partial = query[:, ~query.var_names.isin(drop)].copy()
    zeroed = query.copy()
    zeroed.X = sp.csr_matrix(zeroed.X)
    zeroed.X[:, np.flatnonzero(query.var_names.isin(drop))] = 0
    zeroed.X.eliminate_zeros()
    np.testing.assert_allclose(model.get_latent_representation(partial),
                               model.get_latent_representation(zeroed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["heat", "mask", "dense"])
def test_other_attentions_train(pbmc, attention):
    ref = pbmc[:120].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, attention=attention, n_hops=2, **SMALL)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    pred = model.predict(ref)
    assert pred.shape == (ref.n_obs,) and set(pred.astype(str)) <= set(model.labels)
    assert model.module.backbone.transformer_encoder.layers[0].self_attn.attention == attention
    assert np.isfinite(model.history_["train_loss"].iloc[:, 0].astype(float)).all()


def test_dense_attention_without_graph(pbmc):
    ref = pbmc[:60].copy()
    del ref.varp["gene_graph"]
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels", graph_key=None)
    model = gh.GenoHoptionModel(ref, attention="dense", **SMALL)
    assert model.module.graph_indices.numel() == 0  # no graph registered, none needed
    model.train(max_epochs=1, enable_progress_bar=False)
    z = model.get_latent_representation(ref)
    assert z.shape == (ref.n_obs, SMALL["d_model"]) and np.isfinite(z).all()


# ------------------------------------------------------------------ bad input
def _unchanged(before, after):
    assert before.obs.equals(after.obs) and before.var.equals(after.var)
    assert set(before.uns) == set(after.uns) and set(before.varp) == set(after.varp)
    np.testing.assert_array_equal(sp.csr_matrix(before.X).toarray(), sp.csr_matrix(after.X).toarray())


@pytest.mark.parametrize(
    ("mutate", "kwargs", "error", "match"),
    [
        (lambda a: None, {"labels_key": "nope"}, KeyError, "labels_key"),
        (lambda a: None, {"graph_key": "nope"}, KeyError, "build_gene_graph"),
        (lambda a: None, {"layer": "nope"}, KeyError, "layer"),
        (lambda a: setattr(a, "var_names", pd.Index(["g"] * a.n_vars)), {}, ValueError, "var_names_make_unique"),
        (lambda a: a.X.data.__setitem__(0, np.nan), {}, ValueError, "NaN"),
        (lambda a: a.X.data.__setitem__(0, np.inf), {}, ValueError, "inf"),
        (lambda a: a.X.data.__setitem__(0, -1.0), {}, ValueError, "negative"),
        (lambda a: a.obs.__setitem__("bulk_labels", a.obs["bulk_labels"].cat.add_categories("x").where(
            np.arange(a.n_obs) > 0)), {}, ValueError, "missing labels"),
        (lambda a: a.varp.__setitem__("gene_graph", sp.csr_matrix((a.n_vars, a.n_vars), dtype=np.float32)),
         {}, ValueError, "no edges"),
    ],
)
def test_setup_anndata_bad_input(pbmc, mutate, kwargs, error, match):
    adata = pbmc[:40].copy()
    adata.X = sp.csr_matrix(adata.X)
    mutate(adata)
    before = copy.deepcopy(adata)
    with pytest.raises(error, match=match):
        gh.GenoHoptionModel.setup_anndata(adata, **{"labels_key": "bulk_labels", **kwargs})
    _unchanged(before, adata)
    assert "_scvi_uuid" not in adata.uns


def test_model_bad_arguments(pbmc):
    adata = pbmc[:40].copy()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="bulk_labels")
    with pytest.raises(ValueError, match="max_seq_len"):
        gh.GenoHoptionModel(adata, max_seq_len=1)
    with pytest.raises(ValueError, match="attention"):
        gh.GenoHoptionModel(adata, attention="flash")
    with pytest.raises(ValueError, match="backbone"):
        gh.GenoHoptionModel(adata, backbone="bert")


def test_query_without_common_genes(trained):
    model, _, query = trained
    q = query.copy()
    q.obs = q.obs[["bulk_labels"]]
    q.var_names = [f"other{i}" for i in range(q.n_vars)]
    before = q.copy()
    with pytest.raises(ValueError, match="no gene in common"):
        model.predict(q)
    _unchanged(before, q)
    assert "genohoption_prediction" not in q.obs


def test_seeded_training_is_reproducible(pbmc):
    import scvi

    preds = []
    for _ in range(2):
        scvi.settings.seed = 3
        ref = pbmc[:100].copy()
        gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
        model = gh.GenoHoptionModel(ref, **SMALL)
        model.train(max_epochs=1, enable_progress_bar=False)
        preds.append(model.get_latent_representation(ref))
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-5, atol=1e-6)
