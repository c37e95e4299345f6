import copy
import os
import stat

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi

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
    assert set(hist) == {"train_loss", "validation_loss", "train_accuracy", "validation_accuracy",
                         "validation_macro_f1"}  # a classifier's metrics, no elbo_* / kl_*
    losses = hist["train_loss"].iloc[:, 0].astype(float).to_numpy()
    assert losses[-1] < losses[0]
    train_acc = hist["train_accuracy"].iloc[:, 0].astype(float).to_numpy()
    assert train_acc[-1] > train_acc[0]
    f1 = hist["validation_macro_f1"].iloc[:, 0].astype(float).to_numpy()
    assert ((f1 >= 0) & (f1 <= 1)).all() and f1.max() > 0.3
    model.predict(query)
    acc = gh.tl.annotation_metrics(query, "bulk_labels")["accuracy"]
    chance = query.obs["bulk_labels"].value_counts(normalize=True).max()
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
    # column names are the cell types with "/" replaced by "|" (h5ad); uns keeps the true names in column order
    assert (probs.idxmax(axis=1).to_numpy() == out.astype(str).str.replace("/", "|").to_numpy()).all()
    assert q.uns["genohoption"]["predict"]["classes"] == [str(c) for c in model.labels]
    assert q.uns["genohoption"]["predict"]["key_added"] == "genohoption_prediction"


def test_latent_shape_and_determinism(trained):
    model, _, query = trained
    z1 = model.get_latent_representation(query)
    z2 = model.get_latent_representation(query)
    assert z1.shape == (query.n_obs, 2 * SMALL["d_model"])  # CLS embedding + expression projection
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
    keep = sp.diags((~query.var_names.isin(drop)).astype(np.float32))
    zeroed.X = sp.csr_matrix(sp.csr_matrix(zeroed.X) @ keep)
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
    assert z.shape == (ref.n_obs, 2 * SMALL["d_model"]) and np.isfinite(z).all()


# ------------------------------------------------------------------ bad input
def _unchanged(before, after):
    assert before.obs.equals(after.obs) and before.var.equals(after.var)
    assert set(before.uns) == set(after.uns) and set(before.varp) == set(after.varp)
    np.testing.assert_array_equal(sp.csr_matrix(before.X).toarray(), sp.csr_matrix(after.X).toarray())


def _drop_first_label(adata):
    obs = adata.obs
    obs["bulk_labels"] = obs["bulk_labels"].where(np.arange(adata.n_obs) > 0)


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
        (_drop_first_label, {}, ValueError, "missing labels"),
        (lambda a: a.varp.__setitem__("gene_graph", sp.csr_matrix((a.n_vars, a.n_vars), dtype=np.float32)),
         {}, ValueError, "no edge"),
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


# ------------------------------------------------------------------ save / load (scvi-tools conventions)
def test_save_load_keeps_history_graph_and_prefix(trained, tmp_path):
    model, ref, _ = trained
    model.save(tmp_path, prefix="ppr_", save_anndata=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppr_adata.h5ad", "ppr_model.json", "ppr_model.safetensors"]
    loaded = gh.GenoHoptionModel.load(tmp_path, prefix="ppr_")
    assert set(loaded.history_) == set(model.history_)
    for key in model.history_:
        np.testing.assert_allclose(loaded.history_[key].to_numpy(dtype=float), model.history_[key].to_numpy(dtype=float))
    n_edges = int(model.module.graph_indices.numel())
    assert n_edges > 0 and loaded.module.n_edges == n_edges
    assert f"gene graph edges: {n_edges:,}" in repr(loaded)
    # the saved AnnData came back registered: training can go on
    assert loaded.adata is not None and loaded.adata.n_obs == ref.n_obs and loaded.adata_manager is not None
    loaded.train(max_epochs=1, batch_size=32, enable_progress_bar=False)


def test_saved_files_follow_umask(trained, tmp_path):
    model, _, _ = trained
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.json"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644


def test_load_keeps_saved_label_order(trained, tmp_path):
    model, _, query = trained
    model.save(tmp_path / "m")
    q = query.copy()
    cats = list(q.obs["bulk_labels"].cat.categories)
    q.obs["bulk_labels"] = q.obs["bulk_labels"].cat.reorder_categories(cats[::-1])
    loaded = gh.GenoHoptionModel.load(tmp_path / "m", adata=q)
    assert loaded.adata_manager is not None  # registered with the saved registry
    np.testing.assert_array_equal(loaded.labels, model.labels)
    expected = model.predict(query.copy())
    np.testing.assert_array_equal(loaded.predict(q).astype(str), expected.astype(str))


@pytest.mark.parametrize("kind", ["new_type", "view", "one_type", "no_labels"])
def test_load_with_awkward_query(trained, tmp_path, kind):
    model, _, query = trained
    model.save(tmp_path / "m")
    q = query.copy()
    if kind == "new_type":
        q.obs["bulk_labels"] = q.obs["bulk_labels"].cat.add_categories("Unseen type")
        q.obs.iloc[0, q.obs.columns.get_loc("bulk_labels")] = "Unseen type"
    elif kind == "view":
        q = query[: query.n_obs // 2]
    elif kind == "one_type":
        first = q.obs["bulk_labels"].iloc[0]
        q = q[q.obs["bulk_labels"] == first].copy()
    else:
        del q.obs["bulk_labels"]
    loaded = gh.GenoHoptionModel.load(tmp_path / "m", adata=q)
    assert (loaded.adata_manager is not None) == (kind == "one_type")
    pred = loaded.predict(q.copy() if kind == "view" else q)
    assert len(pred) == q.n_obs and set(pred.astype(str)) <= set(model.labels)


def test_load_without_data_cannot_train(trained, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match="adata=reference"):
        loaded.train(max_epochs=1)


def test_load_detects_damaged_weights(trained, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one flipped bit in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        gh.GenoHoptionModel.load(tmp_path / "m")


def test_mudata_rna_modality_is_accepted(trained):
    mudata = pytest.importorskip("mudata")
    mudata.set_options(pull_on_update=False)  # the behaviour mudata 0.4 makes the default
    model, _, query = trained
    mdata = mudata.MuData({"rna": query.copy()})
    pred = model.predict(mdata)
    assert "genohoption_prediction" in mdata.mod["rna"].obs
    np.testing.assert_array_equal(pred.astype(str), model.predict(query.copy()).astype(str))
    with pytest.raises(KeyError, match="'rna' modality"):
        model.predict(mudata.MuData({"atac": query.copy()}))
    with pytest.raises(TypeError, match="AnnData"):
        model.predict(query.X)


def test_model_builds_when_no_seed_was_set(pbmc, monkeypatch, tmp_path):
    """scvi-tools leaves ``scvi.settings.seed`` at None until a user sets it: the conventions' seed is then 0,
    and the model saves and loads."""
    monkeypatch.setattr(scvi.settings, "_seed", None, raising=False)
    assert scvi.settings.seed is None
    ref = pbmc[:60].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    assert model.module.conventions.seed == 0 and model.init_params_["non_kwargs"]["conventions"]["seed"] == 0
    model.save(tmp_path / "m", save_anndata=True)
    assert gh.GenoHoptionModel.load(tmp_path / "m").module.conventions.seed == 0
