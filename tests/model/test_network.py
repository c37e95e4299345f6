"""model.get_gene_network: the streamed average equals a per-cell dense reference; diffusion; groups; errors."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import genohoption as gh
from genohoption.module._encode import encode_cells
from genohoption.nn import GraphDiffusionAttention
from genohoption.tl._diffusion import diffusion_operator, row_normalize

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_hid": 32}
QUIET = {"enable_progress_bar": False}


def _data(n_cells=90, n_genes=24, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    level = rng.gamma(2.0, 1.0, size=(n_cells, 3))
    X = np.repeat(level, n_genes // 3, axis=1) + rng.normal(0, 0.2, (n_cells, n_genes))
    X = np.clip(X, 0, None).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = 0.0
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.obs["cell_type"] = pd.Categorical(np.where(level[:, 0] > level[:, 1], "a/1", "b"))
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.2, n_neighbors=5)
    return adata


@pytest.fixture(scope="module")
def trained():
    adata = _data()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = gh.GenoHoptionModel(adata, **SMALL)
    model.train(max_epochs=2, batch_size=32, **QUIET)
    return model, adata


def _reference(module, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over heads and layers, then over cells, of dense masked softmax attention: one cell at a time."""
    n = X.shape[1]
    total, count = np.zeros((n, n)), np.zeros((n, n))
    layers = [m for m in module.backbone.modules() if isinstance(m, GraphDiffusionAttention)]
    for row in X:
        seen: list = []
        handles = [m.register_forward_pre_hook(lambda m, args, seen=seen: seen.append((m, args[0], args[1])))
                   for m in layers]
        with torch.no_grad():
            _, tokens, _ = encode_cells(module.eval(), torch.as_tensor(row[None, :]))
        for handle in handles:
            handle.remove()
        per_layer = []
        for m, x, graph in seen:
            x = x.detach()
            h, d = m.n_heads, m.d_model // m.n_heads
            qkv = (x @ m.Wqkv.weight.T + m.Wqkv.bias).view(1, x.shape[1], 3, h, d)
            q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
            s = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~graph.to_dense_mask()[:, None], -math.inf)
            per_layer.append(torch.nan_to_num(torch.softmax(s.double(), -1))[0].mean(0))
        att = torch.stack(per_layer).mean(0).detach().numpy()
        mask = seen[0][2].to_dense_mask()[0].numpy()
        genes = tokens.genes[0].numpy()
        for i, j in zip(*np.nonzero(mask), strict=True):
            if genes[i] >= 0 and genes[j] >= 0:
                total[genes[i], genes[j]] += att[i, j]
                count[genes[i], genes[j]] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), count


def test_streamed_average_equals_dense_reference(trained):
    model, adata = trained
    query = adata.copy()
    edges = model.get_gene_network(query, batch_size=7, min_weight=0.0)
    ref, count = _reference(model.module, adata.X.toarray())
    got = query.varp["gene_network"].toarray()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert set(zip(*np.nonzero(count), strict=True)) == set(zip(*np.nonzero(got), strict=True))
    # the edge list is the same matrix, decoupler style: source = attended gene j, target = i
    pos = pd.Series(np.arange(adata.n_vars), index=adata.var_names)
    np.testing.assert_allclose(edges["attention"], got[pos[edges["target"]], pos[edges["source"]]])
    np.testing.assert_array_equal(edges["n_cells"], count[pos[edges["target"]], pos[edges["source"]]])
    # the receptive field: PPR of the row-normalised averaged attention, by numpy
    P = got / got.sum(1, keepdims=True)
    M = np.eye(adata.n_vars)
    for _ in range(6):
        M = 0.75 * P @ M + 0.25 * np.eye(adata.n_vars)
    np.testing.assert_allclose(query.varp["gene_network_diffusion"].toarray(), M, rtol=1e-6, atol=1e-9)
    params = query.uns["gene_network"]["params"]
    assert params == {"groupby": None, "batch_size": 7, "method": "ppr", "n_hops": 6, "alpha": 0.25, "t": 5.0,
                      "normalize": False, "min_weight": 0.0}


def test_groups_recombine_to_all_cells(trained):
    model, adata = trained
    query = adata.copy()
    model.get_gene_network(query, key_added="net")
    edges = model.get_gene_network(query, groupby="cell_type", key_added="net_type", batch_size=16)
    keys = query.uns["net_type"]["varp_keys"]
    assert keys["a/1"]["attention"] == "net_type_a|1" and set(edges["group"]) == {"a/1", "b"}
    total = np.zeros((adata.n_vars, adata.n_vars))
    count = np.zeros_like(total)
    for group, part in edges.groupby("group"):
        i = adata.var_names.get_indexer(part["target"])
        j = adata.var_names.get_indexer(part["source"])
        np.testing.assert_allclose(query.varp[keys[group]["attention"]].toarray()[i, j], part["attention"])
        np.add.at(total, (i, j), part["attention"] * part["n_cells"])
        np.add.at(count, (i, j), part["n_cells"])
    np.testing.assert_allclose(np.divide(total, count, out=np.zeros_like(total), where=count > 0),
                               query.varp["net"].toarray(), rtol=1e-10)
    assert query.uns["net_type"]["n_cells"] == adata.obs["cell_type"].value_counts().to_dict()


def test_query_with_other_genes_and_bad_input_leaves_data_unchanged(trained):
    model, adata = trained
    query = adata[:, ::-1].copy()  # genes in another order, plus one the model lacks
    query = ad.concat([query, ad.AnnData(sp.csr_matrix((query.n_obs, 1)), obs=query.obs[[]],
                                         var=pd.DataFrame(index=["new"]))], axis=1, merge="first")
    model.get_gene_network(query, min_weight=0.0)
    ref = adata.copy()
    model.get_gene_network(ref, min_weight=0.0)
    order = ref.var_names.get_indexer(query.var_names[:-1])
    np.testing.assert_allclose(query.varp["gene_network"][:-1, :-1].toarray(),
                               ref.varp["gene_network"].toarray()[np.ix_(order, order)])
    assert query.varp["gene_network"][-1].nnz == 0
    before = adata.copy()
    with pytest.raises(KeyError, match="groupby"):
        model.get_gene_network(adata, groupby="nope")
    with pytest.raises(ValueError, match="batch_size"):
        model.get_gene_network(adata, batch_size=0)
    assert "gene_network" not in adata.uns and set(adata.varp) == set(before.varp)


def test_dense_model_is_refused():
    adata = _data(n_cells=40)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, attention="dense", **SMALL)
    with pytest.raises(ValueError, match="dense attention"):
        model.get_gene_network(adata)


def test_diffusion_operator_heat_and_mask():
    rng = np.random.default_rng(0)
    A = sp.random(12, 12, density=0.3, random_state=0, format="csr") + sp.identity(12)
    P = row_normalize(A)
    Pd = P.toarray()
    np.testing.assert_allclose(Pd.sum(1), 1.0)
    heat = sum(math.exp(-2.0) * 2.0**k / math.factorial(k) * np.linalg.matrix_power(Pd, k) for k in range(5))
    got = diffusion_operator(P, "heat", n_hops=4, t=2.0, min_weight=0.0).toarray()
    np.testing.assert_allclose(got, heat, rtol=1e-10)
    norm = diffusion_operator(P, "heat", n_hops=4, t=2.0, normalize=True, min_weight=0.0).toarray()
    np.testing.assert_allclose(norm.sum(1), 1.0)
    np.testing.assert_allclose(diffusion_operator(P, "mask").toarray(), Pd)
    pruned = diffusion_operator(P, "ppr", min_weight=0.05)
    assert pruned.data.min() >= 0.05
    with pytest.raises(ValueError, match="method"):
        diffusion_operator(P, "dense")
    assert rng is not None
