"""Data larger than memory: a backed AnnData trains and predicts as in memory, reading only minibatches."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from anndata._core.sparse_dataset import BaseCompressedSparseDataset

import genohoption as gh
from genohoption import _validate

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}
TRAIN = {"max_epochs": 2, "batch_size": 16, "lr": 3e-3, "enable_progress_bar": False}
N_CELLS, N_GENES = 150, 40


def _synthetic(seed=0) -> ad.AnnData:
    """Log-normalised-like sparse cells of 3 types with type-specific genes, and a gene graph."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, N_CELLS)
    rate = rng.gamma(1.0, 1.0, (3, N_GENES)) * (rng.random((3, N_GENES)) < 0.5)
    counts = rng.poisson(rate[types] * 3)
    X = sp.csr_matrix(np.log1p(counts).astype(np.float32))
    adata = ad.AnnData(X, obs=pd.DataFrame({"cell_type": pd.Categorical(np.array(["a", "b", "c"])[types])},
                                           index=[f"c{i}" for i in range(N_CELLS)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.1, n_neighbors=6)
    return adata


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    adata = _synthetic()
    folder = tmp_path_factory.mktemp("backed")
    paths = {"csr": folder / "csr.h5ad", "dense": folder / "dense.h5ad", "csc": folder / "csc.h5ad"}
    adata.write_h5ad(paths["csr"])
    for fmt, X in (("dense", adata.X.toarray()), ("csc", adata.X.tocsc())):
        other = adata.copy()
        other.X = X
        other.write_h5ad(paths[fmt])
    return adata, paths


def _train(adata, **setup):
    scvi.settings.seed = 0
    gh.GenoHoptionModel.setup_anndata(adata, **{"labels_key": "cell_type", **setup})
    model = gh.GenoHoptionModel(adata, **SMALL)
    model.train(**TRAIN)
    return model


def _same_weights(a, b):
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_backed_training_equals_in_memory(data, fmt):
    adata, paths = data
    memory = adata.copy()
    backed = ad.read_h5ad(paths[fmt], backed="r")
    m_mem, m_disk = _train(memory), _train(backed)
    assert backed.isbacked and m_disk.adata is backed
    _same_weights(m_mem, m_disk)  # minibatches reach the model in the same order: the same weights, bit for bit
    pd.testing.assert_frame_equal(m_mem.history_["train_loss"], m_disk.history_["train_loss"])
    pred_mem, pred_disk = m_mem.predict(memory), m_disk.predict(backed)
    assert (pred_mem.to_numpy() == pred_disk.to_numpy()).all()
    np.testing.assert_array_equal(memory.obsm["genohoption_probabilities"].to_numpy(),
                                  backed.obsm["genohoption_probabilities"].to_numpy())
    np.testing.assert_array_equal(m_mem.get_latent_representation(memory), m_disk.get_latent_representation(backed))
    assert m_disk.value_scale_ == m_mem.value_scale_
    assert isinstance(backed.obs["genohoption_prediction"].dtype, pd.CategoricalDtype)  # written in memory


def test_backed_query_with_other_genes(data, tmp_path):
    adata, _ = data
    model = _train(adata.copy())
    # a query on disk with its genes reversed and a few missing: aligned by name, minibatch by minibatch
    query = adata[:, adata.var_names[::-1][:-3]].copy()
    query.write_h5ad(tmp_path / "q.h5ad")
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    np.testing.assert_allclose(model.get_latent_representation(backed, batch_size=7),
                               model.get_latent_representation(query), rtol=1e-5, atol=1e-6)
    assert (model.predict(backed, batch_size=7).to_numpy() == model.predict(query).to_numpy()).all()


@pytest.fixture
def row_reads(monkeypatch):
    """Count the rows of every read of a backed sparse matrix; a whole-matrix read fails."""
    reads = []
    get = BaseCompressedSparseDataset.__getitem__

    def counting(self, index):
        out = get(self, index)
        reads.append(out.shape[0])
        return out

    load = BaseCompressedSparseDataset.to_memory

    def refuse(self):
        if self.shape == (N_CELLS, N_GENES):
            raise AssertionError("the whole backed matrix was loaded")
        return load(self)  # varp's gene graph, read when the file is opened

    monkeypatch.setattr(BaseCompressedSparseDataset, "__getitem__", counting)
    monkeypatch.setattr(BaseCompressedSparseDataset, "to_memory", refuse)
    monkeypatch.setattr(_validate, "SCALE_SAMPLE_CELLS", 10)  # the value-scale sample: 10 cells, not all 150
    monkeypatch.setattr(_validate, "_CHECK_ELEMENTS", 64)  # the value checks: 64 stored values at a time
    return reads


def test_backed_path_reads_only_minibatches(data, row_reads):
    _, paths = data
    backed = ad.read_h5ad(paths["csr"], backed="r")
    model = _train(backed)  # setup, value checks, value scale, one epoch of training and validation
    assert row_reads and max(row_reads) <= TRAIN["batch_size"], row_reads
    n_train = len(row_reads)
    model.predict(backed, batch_size=32)
    model.get_latent_representation(backed, batch_size=32)
    inference = row_reads[n_train:]
    assert max(inference) <= 32
    # each inference reads the 10 cells of the value-scale sample, then every cell once
    assert sum(inference) == 2 * (10 + N_CELLS)


def test_backed_values_checked_in_chunks(data, tmp_path, monkeypatch):
    adata, _ = data
    bad = adata.copy()
    bad.X.data[-1] = -1.0  # in the last chunk read
    bad.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    monkeypatch.setattr(_validate, "_CHECK_ELEMENTS", 64)
    obs, uns = backed.obs.copy(), dict(backed.uns)
    with pytest.raises(ValueError, match="negative values"):
        gh.GenoHoptionModel.setup_anndata(backed, labels_key="cell_type")
    pd.testing.assert_frame_equal(backed.obs, obs)
    assert set(backed.uns) == set(uns)
    model = _train(adata.copy())
    with pytest.raises(ValueError, match="negative values"):  # checked minibatch by minibatch, before writing
        model.predict(backed, batch_size=16)
    assert "genohoption_prediction" not in backed.obs and "genohoption_probabilities" not in backed.obsm


def test_backed_csc_is_refused(data):
    adata, paths = data
    backed = ad.read_h5ad(paths["csc"], backed="r")
    obs, uns = backed.obs.copy(), dict(backed.uns)
    with pytest.raises(ValueError, match=r"backed CSC matrix.*tocsr\(\).*to_memory\(\)"):
        gh.GenoHoptionModel.setup_anndata(backed, labels_key="cell_type")
    pd.testing.assert_frame_equal(backed.obs, obs)
    assert set(backed.uns) == set(uns)
    model = _train(adata.copy())
    with pytest.raises(ValueError, match="backed CSC matrix"):
        model.predict(backed)
    assert "genohoption_prediction" not in backed.obs


def test_backed_view_and_perturbation_are_refused(data):
    _, paths = data
    backed = ad.read_h5ad(paths["csr"], backed="r")
    with pytest.raises(ValueError, match=r"view of a backed AnnData.*write_h5ad"):
        gh.GenoHoptionModel.setup_anndata(backed[:50], labels_key="cell_type")
    backed.obs["condition"] = np.where(np.arange(N_CELLS) % 2, "ctrl", "g1+ctrl")
    obs = backed.obs.copy()
    with pytest.raises(ValueError, match=r"perturbation models need their data in memory.*to_memory\(\)"):
        gh.GenoHoptionModel.setup_anndata(backed, perturbation_key="condition", prior=None)
    pd.testing.assert_frame_equal(backed.obs, obs)
    assert "_scvi_uuid" not in backed.uns


def test_backed_pretraining_equals_in_memory(data):
    adata, paths = data
    backed = ad.read_h5ad(paths["csr"], backed="r")
    m_mem, m_disk = _train(adata.copy(), labels_key=None), _train(backed, labels_key=None)
    assert m_disk.task == "pretraining"
    _same_weights(m_mem, m_disk)
    np.testing.assert_array_equal(m_mem.get_latent_representation(adata), m_disk.get_latent_representation(backed))


def test_pretrain_on_backed_equals_in_memory(data):
    adata, paths = data
    models = []
    for corpus in (adata.copy(), ad.read_h5ad(paths["csr"], backed="r")):
        model = _train(adata.copy())
        scvi.settings.seed = 0
        model.pretrain(corpus, max_epochs=1, batch_size=16, enable_progress_bar=False)
        models.append(model)
        assert "_scvi_uuid" not in corpus.uns  # the corpus itself is not registered
    _same_weights(*models)


def test_load_with_backed_data_registers_it(data, tmp_path):
    adata, paths = data
    model = _train(adata.copy())
    model.save(tmp_path / "m")
    backed = ad.read_h5ad(paths["csr"], backed="r")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m", adata=backed)
    assert loaded.adata is backed and loaded.adata_manager is not None  # registered: training can go on
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation(adata))
    csc = ad.read_h5ad(paths["csc"], backed="r")
    attached = gh.GenoHoptionModel.load(tmp_path / "m", adata=csc)  # attached only: it cannot be registered
    assert attached.adata is csc and "_scvi_uuid" not in csc.uns
