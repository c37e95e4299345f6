"""gh.tl.in_silico_perturbation and shift_alignment: deletion equals the model on data without the gene."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import genohoption as gh
from genohoption.data import rank_value_encode
from genohoption.module._encode import encode_cells
from genohoption.tl._in_silico import InSilicoResult, _perturbed

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}
QUIET = {"enable_progress_bar": False}


def _counts(n_cells=60, n_genes=20, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(1.5, 2.0, (n_cells, n_genes))).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    adata.obs["cell_type"] = pd.Categorical(np.where(X[:, 0] > X[:, 1], "a", "b"))
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.1, n_neighbors=4)
    return adata


@pytest.fixture(scope="module")
def pretrained():
    adata = _counts()
    adata.X = adata.X.log1p()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key=None)
    scvi.settings.seed = 0
    model = gh.GenoHoptionModel(adata, **SMALL)
    model.train(max_epochs=2, batch_size=16, **QUIET)
    return model, adata


@pytest.fixture(scope="module")
def geneformer():
    adata = _counts(seed=1)
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    scvi.settings.seed = 0
    model = gh.GenoHoptionModel(adata, backbone="geneformer", cell_emb="cls", **SMALL)
    model.train(max_epochs=2, batch_size=16, **QUIET)
    return model, adata


@pytest.mark.parametrize("which", ["pretrained", "geneformer"])
def test_deletion_equals_the_model_on_data_without_the_gene(which, request):
    model, adata = request.getfixturevalue(which)
    query = adata.copy()
    gene = "g3"
    res = gh.tl.in_silico_perturbation(model, query, [gene, "g7"], batch_size=13, return_embeddings=True)
    without = adata[:, adata.var_names != gene].copy()  # the gene removed from the data
    z_without = model.get_latent_representation(without)
    z = model.get_latent_representation(adata)
    expresses = np.asarray(adata[:, gene].X.todense()).ravel() > 0
    np.testing.assert_allclose(res.original, z, atol=1e-6)
    np.testing.assert_allclose(res.perturbed[gene], z_without, atol=1e-6)
    cos = (z * z_without).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(z_without, axis=1)
    shift = res.cell_shift[gene].to_numpy()
    assert np.array_equal(np.isfinite(shift), expresses)
    np.testing.assert_allclose(shift[expresses], 1 - cos[expresses], atol=1e-6)
    assert res.n_cells[gene] == expresses.sum()
    # written to the AnnData
    pd.testing.assert_frame_equal(query.obsm["in_silico"], res.cell_shift)
    assert query.varm["in_silico"].shape == (adata.n_vars, 2)
    assert query.uns["in_silico"]["params"] == {"mode": "delete", "genes": [gene, "g7"], "value": None,
                                                "batch_size": 13}


def test_gene_shift_by_hand(pretrained):
    model, adata = pretrained
    gene = "g5"
    res = gh.tl.in_silico_perturbation(model, adata.copy(), gene)
    module = model.module.eval()
    x = torch.as_tensor(adata.X.toarray())
    x_del = x.clone()
    x_del[:, 5] = 0
    with torch.no_grad():
        h0, t0, _ = encode_cells(module, x)
        h1, t1, _ = encode_cells(module, x_del)
    total, count = np.zeros(adata.n_vars), np.zeros(adata.n_vars)
    for c in range(adata.n_obs):
        g0, g1 = t0.genes[c].tolist(), t1.genes[c].tolist()
        if 5 not in g0:
            continue
        for p0, g in enumerate(g0):
            if g < 0 or g == 5 or g not in g1:
                continue
            a, b = h0[c, p0], h1[c, g1.index(g)]
            total[g] += 1 - float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            count[g] += 1
    expected = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(res.gene_shift[gene].to_numpy(), expected, atol=1e-6)
    assert np.isnan(res.gene_shift.loc[gene, gene])


def test_overexpression_moves_a_rank_token_to_the_front_and_sets_a_value(pretrained, geneformer):
    model, adata = geneformer
    bb = model.module.backbone
    x = torch.as_tensor(adata.X.toarray())
    for g in (2, 9):
        tokens = rank_value_encode(_perturbed(x, g, "overexpress", None, bb.gene_medians.float()), bb.gene_medians,
                                   bb.max_len)
        assert (tokens.genes[:, 0] == g).all()
        before = rank_value_encode(x, bb.gene_medians, bb.max_len).genes
        after = tokens.genes[:, 1:]  # the other genes keep their order
        for c in range(3):
            rest = [t for t in before[c].tolist() if t not in (g, -1)]
            assert [t for t in after[c].tolist() if t != -1] == rest
    res = gh.tl.in_silico_perturbation(model, adata.copy(), "g2", mode="overexpress")
    assert res.n_cells["g2"] == adata.n_obs and np.isfinite(res.cell_shift["g2"]).all()
    scgpt, data = pretrained
    xs = torch.as_tensor(data.X.toarray())
    np.testing.assert_allclose(_perturbed(xs, 4, "overexpress", None, None)[:, 4], xs.amax(1).clamp_min(1.0))
    assert (_perturbed(xs, 4, "overexpress", 7.5, None)[:, 4] == 7.5).all()
    res = gh.tl.in_silico_perturbation(scgpt, data.copy(), "g4", mode="overexpress", value=7.5)
    assert (res.cell_shift["g4"] > 0).all()


def test_bad_input_leaves_the_data_unchanged(pretrained):
    model, adata = pretrained
    query = adata.copy()
    with pytest.raises(KeyError, match="not genes of the model"):
        gh.tl.in_silico_perturbation(model, query, ["g1", "nope"])
    with pytest.raises(ValueError, match="mode"):
        gh.tl.in_silico_perturbation(model, query, "g1", mode="knockdown")
    with pytest.raises(ValueError, match="at least one gene"):
        gh.tl.in_silico_perturbation(model, query, [])
    with pytest.raises(ValueError, match="batch_size"):
        gh.tl.in_silico_perturbation(model, query, "g1", batch_size=0)
    with pytest.raises(TypeError, match="GenoHoptionModel"):
        gh.tl.in_silico_perturbation(object(), query, "g1")
    assert "in_silico" not in query.uns and "in_silico" not in query.obsm


def test_shift_alignment_permutation_pvalue_on_a_constructed_case():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 4))
    direction = np.array([1.0, 0.0, 0.0, 0.0])
    perturbed = {"T": z + direction}  # moves exactly toward the target
    angles = np.linspace(0.1, np.pi, 9)  # null genes at known angles from the direction: cos = cos(angle)
    for k, a in enumerate(angles):
        perturbed[f"n{k}"] = z + np.array([np.cos(a), np.sin(a), 0.0, 0.0])
    shift = pd.DataFrame(0.1, index=range(30), columns=list(perturbed))
    result = InSilicoResult(shift, pd.DataFrame(), pd.Series(dtype=float), z, perturbed)
    target = z.mean(0) + 3 * direction + rng.normal(0, 1e-9, (5, 4)).mean(0)
    table = gh.tl.shift_alignment(result, {"T": np.tile(target, (5, 1))}, null={"T": [f"n{k}" for k in range(9)]})
    assert table.loc["T", "alignment"] == pytest.approx(1.0)
    assert table.loc["T", "p_value"] == pytest.approx(1 / 10)
    assert table.loc["T", "null_mean"] == pytest.approx(np.cos(angles).mean())
    # a gene that moves like the third null gene: 3 nulls at least as aligned (itself included) -> p = 4/10
    perturbed["U"] = z + np.array([np.cos(angles[2]), np.sin(angles[2]), 0.0, 0.0])
    result = InSilicoResult(shift.assign(U=0.1), pd.DataFrame(), pd.Series(dtype=float), z, perturbed)
    table = gh.tl.shift_alignment(result, {"U": np.tile(target, (5, 1))}, null={"U": [f"n{k}" for k in range(9)]})
    assert table.loc["U", "p_value"] == pytest.approx(4 / 10)
    with pytest.raises(ValueError, match="not perturbed"):
        gh.tl.shift_alignment(result, {"V": target[None]})
    with pytest.raises(ValueError, match="return_embeddings"):
        gh.tl.shift_alignment(InSilicoResult(shift, pd.DataFrame(), pd.Series(dtype=float)), {"T": target[None]})
