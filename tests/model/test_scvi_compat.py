"""Every public method GenoHoptionModel inherits from scvi-tools' BaseModelClass, on a real saved model."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass

import genohoption as gh

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model trained 2 epochs on 4 cell types of pbmc68k_reduced, saved with its AnnData and loaded back."""
    adata = gh.datasets.pbmc68k_reduced()
    keep = adata.obs["bulk_labels"].value_counts().index[:4]
    adata = adata[adata.obs["bulk_labels"].isin(keep)].copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str).astype("category")
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.3)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(adata, **SMALL)
    model.train(max_epochs=2, batch_size=64, train_size=0.8, enable_progress_bar=False)
    path = tmp_path_factory.mktemp("saved") / "m"
    model.save(path, save_anndata=True)
    return model, path, adata


def _loaded(saved):
    _, path, _ = saved
    return gh.GenoHoptionModel.load(path)  # with the AnnData saved beside it: registered


def check_load_registry(saved, capsys):
    model, path, _ = saved
    registry = gh.GenoHoptionModel.load_registry(path)
    assert registry["setup_args"] == model.registry_["setup_args"]
    genes = registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
    assert list(genes) == list(model.adata.var_names)


def check_view_setup_args(saved, capsys):
    _, path, _ = saved
    gh.GenoHoptionModel.view_setup_args(path)
    out = capsys.readouterr().out
    assert "'labels_key': 'bulk_labels'" in out and "'graph_key': 'gene_graph'" in out


def check_convert_legacy_save(saved, capsys):
    _, path, _ = saved
    with pytest.raises(NotImplementedError, match="no legacy save format"):
        gh.GenoHoptionModel.convert_legacy_save(str(path), str(path.parent / "converted"))
    assert not (path.parent / "converted").exists()


def check_load(saved, capsys):
    model, _, adata = saved
    loaded = _loaded(saved)
    assert loaded.adata_manager is not None and loaded.is_trained_
    np.testing.assert_array_equal(loaded.get_latent_representation(adata), model.get_latent_representation(adata))


def check_save(saved, capsys):
    _, path, _ = saved
    loaded = _loaded(saved)
    with pytest.raises(TypeError, match="save_kwargs is not used"):
        loaded.save(path.parent / "again", save_kwargs={"pickle_protocol": 4})
    with pytest.raises(TypeError, match="save_anndata=True"):
        loaded.save(path.parent / "again", compression="gzip")
    loaded.save(path.parent / "again")
    assert sorted(p.name for p in (path.parent / "again").iterdir()) == ["model.json", "model.safetensors"]


def check_setup_anndata(saved, capsys):
    _, _, adata = saved
    fresh = adata.copy()
    del fresh.uns["_scvi_uuid"], fresh.uns["_scvi_manager_uuid"]
    gh.GenoHoptionModel.setup_anndata(fresh, labels_key="bulk_labels")
    assert "_scvi_uuid" in fresh.uns and "_scvi_labels" in fresh.obs


def check_register_manager(saved, capsys):
    _, _, adata = saved
    fresh = adata.copy()
    gh.GenoHoptionModel.setup_anndata(fresh, labels_key="bulk_labels")
    manager = gh.GenoHoptionModel._setup_adata_manager_store[fresh.uns["_scvi_uuid"]]
    gh.GenoHoptionModel.register_manager(manager)  # registering again keeps the same manager
    assert gh.GenoHoptionModel._setup_adata_manager_store[fresh.uns["_scvi_uuid"]] is manager


def check_train(saved, capsys):
    loaded = _loaded(saved)
    before = copy.deepcopy(loaded.module.state_dict())
    n_before = len(loaded.history_["train_loss"])
    loaded.train(max_epochs=1, batch_size=64, train_size=1.0, enable_progress_bar=False)
    after = loaded.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert len(loaded.history_["train_loss"]) == n_before + 1  # scvi-tools appends a continued run


def check_to_device(saved, capsys):
    loaded = _loaded(saved)
    loaded.to_device("cpu")
    assert loaded.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())


def check_transfer_fields(saved, capsys):
    loaded = _loaded(saved)
    query = loaded.adata.copy()
    query.obs["bulk_labels"] = query.obs["bulk_labels"].cat.reorder_categories(
        list(query.obs["bulk_labels"].cat.categories)[::-1])
    loaded.transfer_fields(query)
    codes = query.obs["_scvi_labels"].to_numpy()
    mapping = loaded.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]["categorical_mapping"]
    np.testing.assert_array_equal(np.asarray(mapping)[codes], query.obs["bulk_labels"].astype(str).to_numpy())


def check_get_anndata_manager(saved, capsys):
    loaded = _loaded(saved)
    assert loaded.get_anndata_manager(loaded.adata) is loaded.adata_manager


def check_deregister_manager(saved, capsys):
    loaded = _loaded(saved)
    other = loaded.adata.copy()
    del other.uns["_scvi_uuid"], other.uns["_scvi_manager_uuid"]  # a new AnnData, not a copy of the model's
    gh.GenoHoptionModel.setup_anndata(other, labels_key="bulk_labels")
    store = gh.GenoHoptionModel._setup_adata_manager_store
    assert other.uns["_scvi_uuid"] in store
    loaded.deregister_manager()  # every manager but the model's own
    assert other.uns["_scvi_uuid"] not in store
    assert loaded.get_anndata_manager(loaded.adata) is loaded.adata_manager
    assert loaded.adata_manager.adata_uuid in store


def check_data_registry(saved, capsys):
    loaded = _loaded(saved)
    labels = np.asarray(loaded.data_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
    np.testing.assert_array_equal(labels, loaded.adata.obs["_scvi_labels"].to_numpy())


def check_get_from_registry(saved, capsys):
    loaded = _loaded(saved)
    X = loaded.get_from_registry(loaded.adata, REGISTRY_KEYS.X_KEY)
    assert X.shape == loaded.adata.shape and (X != loaded.adata.X).nnz == 0


def check_get_setup_arg(saved, capsys):
    assert _loaded(saved).get_setup_arg("labels_key") == "bulk_labels"


def check_get_state_registry(saved, capsys):
    loaded = _loaded(saved)
    state = loaded.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
    assert list(state["categorical_mapping"]) == list(loaded.labels)


def check_get_var_names(saved, capsys):
    loaded = _loaded(saved)
    assert list(loaded.get_var_names()) == list(loaded.var_names)


def check_update_setup_method_args(saved, capsys):
    loaded = _loaded(saved)
    loaded.update_setup_method_args({"prior": "my_network.csv"})
    assert loaded.registry_["setup_args"]["prior"] == "my_network.csv"
    with pytest.raises(KeyError, match="not arguments of setup_anndata"):
        loaded.update_setup_method_args({"labelskey": "x"})


def check_view_anndata_setup(saved, capsys):
    _loaded(saved).view_anndata_setup()
    out = capsys.readouterr().out
    assert "bulk_labels" in out and "Anndata setup with scvi-tools" in out


def check_view_registry(saved, capsys):
    _loaded(saved).view_registry()
    assert "bulk_labels" in capsys.readouterr().out
    _, path, _ = saved
    bare = gh.GenoHoptionModel.load(path)
    bare._adata_manager, bare._adata = None, None  # a model without data prints its saved registry
    bare.view_registry()
    out = capsys.readouterr().out
    assert "'labels_key': 'bulk_labels'" in out and "n_labels" in out


def check_view_setup_method_args(saved, capsys):
    _loaded(saved).view_setup_method_args()
    assert "'labels_key': 'bulk_labels'" in capsys.readouterr().out


def check_get_normalized_expression(saved, capsys):
    with pytest.raises(NotImplementedError, match="get_normalized_expression"):
        _loaded(saved).get_normalized_expression()


def check_differential_abundance(saved, capsys):
    with pytest.raises(NotImplementedError, match="differential_abundance"):
        _loaded(saved).differential_abundance()


def check_properties(saved, capsys):
    model, _, adata = saved
    loaded = _loaded(saved)
    assert loaded.adata.shape == adata.shape and loaded.adata_manager.adata is loaded.adata
    assert loaded.is_trained and loaded.registry is loaded.registry_
    assert set(loaded.history) == set(model.history_)
    assert loaded.run_name == loaded.run_name_ and loaded.run_id == ""
    assert "GenoHoptionModel (annotation)" in loaded.summary_string and "Trained" in loaded.summary_string
    assert loaded.device.type == "cpu"
    # split indices belong to a training run: the trained model has them, a loaded one starts without
    assert len(model.train_indices) + len(model.validation_indices) == adata.n_obs
    assert loaded.train_indices is None and loaded.validation_indices is None and loaded.test_indices is None
    assert loaded.get_normalized_function_name == "get_normalized_expression"


CHECKS = {name.removeprefix("check_"): fn for name, fn in globals().items() if name.startswith("check_")}
PROPERTIES = ("adata", "adata_manager", "device", "history", "is_trained", "registry", "run_id", "run_name",
              "summary_string", "test_indices", "train_indices", "validation_indices", "get_normalized_function_name")


def test_every_inherited_public_method_is_checked():
    public = {n for n in dir(BaseModelClass) if not n.startswith("_")}
    assert public - set(CHECKS) - set(PROPERTIES) == set()
    assert set(PROPERTIES) <= public


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_inherited(name, saved, capsys):
    CHECKS[name](saved, capsys)


# ------------------------------------------------------------------ load(adata=) refuses what it cannot use
def test_load_refuses_data_without_the_model_genes(saved):
    model, path, adata = saved
    renamed = adata.copy()
    del renamed.uns["_scvi_uuid"], renamed.uns["_scvi_manager_uuid"]
    renamed.var_names = [f"other{i}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match=rf"lacks {adata.n_vars} of the model's {adata.n_vars} genes") as err:
        gh.GenoHoptionModel.load(path, adata=renamed)
    assert str(list(adata.var_names[:5])) in str(err.value)
    assert "_scvi_uuid" not in renamed.uns
    subset = adata[:, 3:].copy()
    with pytest.raises(ValueError, match=r"lacks 3 of the model's") as err:
        gh.GenoHoptionModel.load(path, adata=subset)
    assert str(list(adata.var_names[:3])) in str(err.value)
    reordered = adata[:, ::-1].copy()  # every gene: attached for inference only, predictions aligned by name
    loaded = gh.GenoHoptionModel.load(path, adata=reordered)
    assert loaded.adata is reordered and loaded.adata_manager is None
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(adata),
                               rtol=1e-5, atol=1e-6)


def test_init_params_are_read_once(saved):
    model, path, adata = saved
    before = copy.deepcopy(model.init_params_)
    params = model.params
    params["d_model"] = 999
    assert model.init_params_ == before
    assert "registry" not in model.init_params_["non_kwargs"]
    assert gh.GenoHoptionModel.load(path).init_params_ == before
    pd.testing.assert_index_equal(model.var_names, adata.var_names, check_names=False)
