"""Batch-aware models: setup_anndata(batch_key=), training, new batches at inference, save / load, pretraining."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi

import genohoption as gh
from genohoption.model._batch import MIN_CELLS_TO_ADAPT, query_batch_codes

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}
QUIET = {"enable_progress_bar": False}


def _batches(n=300, n_genes=30, seed=0) -> ad.AnnData:
    """Two cell types, three batches; each batch scales every gene by its own factor (a batch effect)."""
    rng = np.random.default_rng(seed)
    types, batch = rng.integers(0, 2, n), rng.integers(0, 3, n)
    X = rng.gamma(2.0, 1.0, (n, n_genes))
    X[:, :8] += 3.0 * types[:, None]
    X *= (1.0 + 0.6 * batch)[:, None]
    X[rng.random(X.shape) < 0.2] = 0.0
    adata = ad.AnnData(sp.csr_matrix(X.astype(np.float32)))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.obs["cell_type"] = pd.Categorical(np.array(["a", "b"])[types])
    adata.obs["donor"] = pd.Categorical(np.array(["d0", "d1", "d2"])[batch])
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.2)
    return adata


@pytest.fixture(scope="module")
def data():
    adata = _batches()
    ref = adata[adata.obs["donor"] != "d2"].copy()
    query = adata[adata.obs["donor"] == "d2"].copy()
    return ref, query


@pytest.fixture(scope="module")
def trained(data):
    ref, _ = data
    scvi.settings.seed = 0
    ref = ref.copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="cell_type", batch_key="donor")
    model = gh.GenoHoptionModel(ref, batch_adversarial=1.0, **SMALL)
    model.train(max_epochs=4, batch_size=32, lr=3e-3, **QUIET)
    return model, ref


def _snapshot(adata):
    return list(adata.obs.columns), sorted(adata.uns), list(adata.obs["donor"].astype(str))


def test_setup_registers_the_batch_field(trained):
    model, _ = trained
    assert model.registry_["setup_args"]["batch_key"] == "donor"
    state = model.registry_["field_registries"][scvi.REGISTRY_KEYS.BATCH_KEY]["state_registry"]
    assert list(state["categorical_mapping"]) == ["d0", "d1"]
    assert model.summary_stats.n_batch == 2
    assert "batches: 2 (token+dsbn, adversarial 1.0)" in repr(model)
    assert model.module.batch.encoder is not None and model.module.batch.dsbn is not None
    assert {"train_batch_loss", "validation_batch_loss", "validation_loss"} <= set(model.history_)


@pytest.mark.parametrize(
    ("mutate", "kwargs", "error", "match"),
    [
        (None, {"batch_key": "nope"}, KeyError, "batch_key='nope'"),
        ("nan", {"batch_key": "donor"}, ValueError, "without a batch"),
        (None, {"batch_key": "donor", "perturbation_key": "condition"}, ValueError, "annotation and pretraining"),
    ],
)
def test_setup_bad_batch_input_leaves_adata_unchanged(data, mutate, kwargs, error, match):
    adata = data[0].copy()
    adata.obs["condition"] = "ctrl"
    if mutate == "nan":
        adata.obs["donor"] = adata.obs["donor"].astype(object)
        adata.obs.iloc[0, adata.obs.columns.get_loc("donor")] = np.nan
    before = list(adata.obs.columns), sorted(adata.uns)
    with pytest.raises(error, match=match):
        gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type", **kwargs)
    assert (list(adata.obs.columns), sorted(adata.uns)) == before


def test_model_batch_arguments_are_checked(data):
    adata = data[0].copy()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(ValueError, match="batch_key"):
        gh.GenoHoptionModel(adata, batch_adversarial=1.0, **SMALL)
    with pytest.raises(ValueError, match="batch_representation"):
        gh.GenoHoptionModel(adata, batch_representation="batch", **SMALL)
    model = gh.GenoHoptionModel(adata, **SMALL)  # the default representation needs no batch_key
    assert model.module.batch is None and model.module.n_batches == 0
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type", batch_key="donor")
    with pytest.raises(ValueError, match="non-negative"):
        gh.GenoHoptionModel(adata, batch_adversarial=-1.0, **SMALL)


def test_query_batch_codes_known_new_and_small_new_batches(trained):
    model, _ = trained
    obs = pd.DataFrame({"donor": ["d1", "d0", "new"] + ["big"] * MIN_CELLS_TO_ADAPT + ["tiny"] * 3},
                       index=[f"q{i}" for i in range(3 + MIN_CELLS_TO_ADAPT + 3)])
    codes, new = query_batch_codes(ad.AnnData(obs=obs), model.registry_)
    assert new == ["big", "new", "tiny"]
    # d1 -> 1, d0 -> 0; "new" and "tiny" are too small for statistics of their own: the unknown batch (2);
    # "big" gets a code of its own above it
    assert codes.tolist() == [1, 0, 2] + [3] * MIN_CELLS_TO_ADAPT + [2] * 3


def test_predict_a_new_batch_with_its_own_statistics(trained, data):
    model, _ = trained
    query = data[1].copy()
    pred = model.predict(query)
    assert pred.notna().all() and np.isfinite(query.obsm["genohoption_probabilities"].to_numpy()).all()
    # AdaBN: the classifier's input of the new batch's cells is standardised over exactly those cells
    z = model.get_latent_representation(query)
    norm = model.module.batch_head_norm
    u = (z - norm.bias.detach().numpy()) / norm.weight.detach().numpy()
    np.testing.assert_allclose(u.mean(0), 0.0, atol=1e-4)
    assert (u.var(0) <= 1.0 + 1e-4).all() and np.median(u.var(0)) > 0.99
    assert not norm._adapted  # forgotten after the call
    # cells of a training batch keep the training statistics (unchanged by what else the query holds)
    ref = data[0]
    both = ad.concat([ref, query])
    np.testing.assert_allclose(model.get_latent_representation(both)[: ref.n_obs],
                               model.get_latent_representation(ref), rtol=1e-4, atol=1e-5)


def test_query_without_the_batch_column(trained, data):
    model, _ = trained
    query = data[1].copy()
    del query.obs["donor"]
    before = list(query.obs.columns)
    with pytest.raises(KeyError, match="batch_key='donor'"):
        model.predict(query)
    assert list(query.obs.columns) == before
    query.obs["donor"] = pd.Categorical([np.nan] * query.n_obs, categories=["d0"])
    with pytest.raises(ValueError, match="without a batch"):
        model.get_latent_representation(query)


def test_save_load_keeps_batch_categories(trained, data, tmp_path, caplog):
    model, ref = trained
    query = data[1].copy()
    before = model.get_latent_representation(query)
    model.save(tmp_path / "m")
    assert list(gh.GenoHoptionModel.load_registry(tmp_path / "m")["field_registries"]["batch"]["state_registry"][
        "categorical_mapping"]) == ["d0", "d1"]
    loaded = gh.GenoHoptionModel.load(tmp_path / "m", adata=ref.copy())
    assert loaded.adata_manager is not None  # registered: training can go on
    np.testing.assert_allclose(loaded.get_latent_representation(query), before, rtol=1e-5, atol=1e-6)
    assert loaded.params["batch_adversarial"] == 1.0
    with caplog.at_level(logging.INFO, logger="genohoption.model._model"):
        attached = gh.GenoHoptionModel.load(tmp_path / "m", adata=query)
    assert attached.adata_manager is None and "categories the model does not know" in caplog.text
    np.testing.assert_allclose(attached.get_latent_representation(), before, rtol=1e-5, atol=1e-6)


def test_pretrain_carries_the_batch(trained, data):
    model, ref = trained
    model.pretrain(ref, max_epochs=1, batch_size=32, **QUIET)
    assert {"train_loss", "train_batch_loss"} <= set(model.pretrain_history_)
    with pytest.raises(ValueError, match="not trained on"):
        model.pretrain(data[1], max_epochs=1, **QUIET)


def test_pretraining_model_with_batches(data, tmp_path):
    ref, query = data
    ref = ref.copy()
    scvi.settings.seed = 0
    gh.GenoHoptionModel.setup_anndata(ref, labels_key=None, batch_key="donor")
    model = gh.GenoHoptionModel(ref, batch_representation="token", batch_adversarial=0.5, **SMALL)
    model.train(max_epochs=2, batch_size=32, **QUIET)
    assert model.module.decoder.fc[0].in_features == 2 * SMALL["d_model"]  # token output + batch embedding
    z = model.get_latent_representation(query)
    assert z.shape == (query.n_obs, SMALL["d_model"]) and np.isfinite(z).all()
    # its backbone fine-tunes; the batch parts stay behind (the fine-tuned model has its own)
    model.save(tmp_path / "pre")
    labelled = data[0].copy()
    gh.GenoHoptionModel.setup_anndata(labelled, labels_key="cell_type", batch_key="donor")
    tuned = gh.GenoHoptionModel(labelled, pretrained=tmp_path / "pre", batch_representation="dsbn", **SMALL)
    assert tuned.pretrained_report_ is not None and tuned.module.batch.dsbn is not None


def test_baron_label_transfer_to_new_species_batches(shared_data, tmp_path):
    """Real data: train on the 4 human donors of the Baron pancreas, predict the 2 mouse batches (never seen)."""
    import scanpy as sc

    adata = ad.read_h5ad(shared_data / "annotation" / "baron2016_pancreas_cider.h5ad")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    human = (adata.obs["Batch"] == "human").to_numpy()
    hvg = sc.pp.highly_variable_genes(adata[human], n_top_genes=300, flavor="seurat", batch_key="Sample",
                                      inplace=False)["highly_variable"].to_numpy()
    adata = adata[:, hvg].copy()
    ref, query = adata[human].copy(), adata[~human].copy()
    gh.pp.build_gene_graph(ref)
    scvi.settings.seed = 0
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="Group", batch_key="Sample")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(max_epochs=8, batch_size=32, train_size=1.0, **QUIET)
    codes, new = query_batch_codes(query, model.registry_)
    assert new == ["mouse1", "mouse2"] and set(codes.tolist()) == {5, 6}  # 4 donors, unknown 4, then the mice
    model.predict(query)
    metrics = gh.tl.annotation_metrics(query, "Group")
    assert metrics["accuracy"] > 0.5 and metrics["macro_f1"] > 0.5  # 5 types; 153 mouse cells
    model.save(tmp_path / "baron")
    loaded = gh.GenoHoptionModel.load(tmp_path / "baron")
    assert list(loaded.registry_["field_registries"]["batch"]["state_registry"]["categorical_mapping"]) == [
        "human1", "human2", "human3", "human4"]
    pred = loaded.predict(query.copy(), key_added="again")
    assert (pred.to_numpy() == query.obs["genohoption_prediction"].to_numpy()).all()


def test_gene_network_and_in_silico_read_the_batches(trained, data):
    """A batch-aware model's networks and in silico shifts use each cell's batch: the cells of a training batch
    give the same result alone as beside other batches, and a new batch (AdaBN) the same alone as in a mix."""
    model, ref = trained
    query = data[1].copy()
    both = ad.concat([ref, query])
    net = model.get_gene_network(both, groupby="donor")
    for donor, part in (("d0", ref[ref.obs["donor"] == "d0"].copy()), ("d2", query)):
        alone = model.get_gene_network(part).sort_values(["source", "target"]).reset_index(drop=True)
        mixed = net[net["group"] == donor].drop(columns="group").sort_values(["source", "target"])
        pd.testing.assert_frame_equal(mixed.reset_index(drop=True), alone, check_dtype=False, rtol=1e-5)
    gene = "g1"
    mixed = gh.tl.in_silico_perturbation(model, both, gene).cell_shift
    for part in (ref, query):
        alone = gh.tl.in_silico_perturbation(model, part.copy(), gene).cell_shift
        np.testing.assert_allclose(mixed.loc[part.obs_names].to_numpy(), alone.to_numpy(), rtol=1e-4, atol=1e-6)
        assert np.isfinite(alone.to_numpy()).sum() > 0.5 * part.n_obs
