"""Perturbation models: setup checks, training on simulated knock-downs, prediction, save / load."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genohoption as gh


def _same(a, b) -> None:
    """Assert that two AnnData objects hold the same data (used after failing calls)."""
    Xa, Xb = (m.toarray() if sp.issparse(m) else np.asarray(m) for m in (a.X, b.X))
    np.testing.assert_array_equal(Xa, Xb)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert set(a.layers) == set(b.layers) and set(a.uns) == set(b.uns)
    assert set(a.obsm) == set(b.obsm) and set(a.varp) == set(b.varp)


@pytest.fixture(scope="module")
def sim():
    adata = gh.datasets.simulate_perturbation(
        n_genes=40, n_regulators=15, n_perturbed=8, n_combos=6, n_control=80, cells_per_condition=10,
        library_size=1500, seed=0,
    )
    gh.pp.build_gene_graph(adata)
    return adata


@pytest.fixture(scope="module")
def trained(sim):
    import scvi
    import torch

    scvi.settings.seed = 0  # independent of the tests that ran before
    torch.manual_seed(0)
    adata = sim.copy()
    gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="gene_name")
    model = gh.GenoHoptionModel(adata, attention="ppr", d_model=32, n_heads=2, n_layers=2, d_hid=64,
                                dropout=0.0, n_hops=3)
    model.train(max_epochs=25, batch_size=32, lr=3e-3, train_size=1.0, enable_progress_bar=False)
    return model, adata


def test_overfits_better_than_no_change(trained):
    model, adata = trained
    X = adata.X.toarray()
    cond = adata.obs["condition"].astype(str).to_numpy()
    ctrl_mean = X[cond == "ctrl"].mean(0)
    conditions = sorted(set(cond) - {"ctrl"})
    ctrl = adata[cond == "ctrl"].copy()
    profiles = model.predict_perturbation(ctrl, conditions)
    assert list(profiles.obs_names) == conditions and profiles.shape == (len(conditions), adata.n_vars)
    observed = np.stack([X[cond == c].mean(0) for c in conditions])
    mse_model = np.mean((profiles.X - observed) ** 2)
    mse_no_change = np.mean((ctrl_mean - observed) ** 2)
    assert mse_model < 0.6 * mse_no_change
    # every condition is scored here (training data): Systema's reference must be given
    metrics = gh.tl.perturbation_metrics(adata, profiles, perturbed_reference=ctrl_mean)
    assert metrics["pearson_delta"].mean() > 0.5  # no-change baseline: 0


def test_predict_writes_layer_and_uns(trained):
    model, adata = trained
    ctrl = adata[adata.obs["condition"] == "ctrl"][:7].copy()
    cond = "+".join(adata.uns["simulation"]["perturbed_genes"][:2][::-1])  # also a combination never seen
    out = model.predict_perturbation(ctrl, cond)
    assert out.shape == (7, adata.n_vars) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(ctrl.layers[f"genohoption_{cond}"], out)
    assert ctrl.uns["genohoption"]["predict_perturbation"]["layer"] == f"genohoption_{cond}"
    assert ctrl.uns["genohoption"]["predict_perturbation"]["attention"] == "ppr"
    # the knocked-down genes go down
    g = ctrl.var_names.get_indexer(cond.split("+"))
    assert (out[:, g].mean(0) < ctrl.X.toarray()[:, g].mean(0)).all()
    # genes in another order: aligned by name
    rev = ctrl[:, ctrl.var_names[::-1]].copy()
    out_rev = model.predict_perturbation(rev, cond)
    np.testing.assert_allclose(out_rev, out[:, ::-1], atol=1e-4, rtol=1e-4)
    # an extra gene unknown to the model keeps its input value
    extra = ad.concat([ctrl, ad.AnnData(X=np.full((7, 1), 2.5, np.float32), obs=ctrl.obs[[]],
                                        var=pd.DataFrame(index=["EXTRA"]))], axis=1, merge="first")
    out_extra = model.predict_perturbation(extra, cond)
    np.testing.assert_allclose(out_extra[:, :-1], out, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(out_extra[:, -1], 2.5)


def test_predict_bad_conditions_leave_data_unchanged(trained):
    model, adata = trained
    ctrl = adata[adata.obs["condition"] == "ctrl"][:5].copy()
    before = copy.deepcopy(ctrl)
    with pytest.raises(KeyError, match="NOTAGENE"):
        model.predict_perturbation(ctrl, "NOTAGENE+ctrl")
    for bad in ["A+", "+", "ctrl+ctrl", " A+ctrl", "A+A"]:
        with pytest.raises(ValueError, match="Malformed"):
            model.predict_perturbation(ctrl, bad)
    with pytest.raises(TypeError):
        model.predict_perturbation(ctrl, [1, 2])
    _same(ctrl, before)


def test_save_load_round_trip(trained, tmp_path):
    model, adata = trained
    ctrl = adata[adata.obs["condition"] == "ctrl"][:6].copy()
    cond = adata.obs["condition"].cat.categories[-1]
    expected = model.predict_perturbation(ctrl, cond)
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    assert loaded.task == "perturbation"
    np.testing.assert_allclose(loaded.predict_perturbation(ctrl, cond), expected, atol=1e-6)
    np.testing.assert_array_equal(loaded.module.control_mean.numpy(), model.module.control_mean.cpu().numpy())


@pytest.mark.parametrize("attention", ["dense", "heat"])
def test_gears_loss_and_other_attention_train(sim, attention):
    adata = sim.copy()
    gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="gene_name")
    model = gh.GenoHoptionModel(adata, attention=attention, d_model=16, n_heads=2, n_layers=1, d_hid=32,
                                loss="gears", n_hops=2, max_seq_len=24)  # 23 of 40 genes sampled per cell
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(model.history_["train_loss"].to_numpy(dtype=float)).all()
    ctrl = adata[adata.obs["condition"] == "ctrl"][:4].copy()
    out = model.predict_perturbation(ctrl, adata.obs["condition"].cat.categories[-1])
    assert out.shape == (4, adata.n_vars)
    assert ctrl.uns["genohoption"]["predict_perturbation"]["attention"] == attention


def test_setup_errors_leave_data_unchanged(sim):
    adata = sim.copy()
    adata.obs["cond2"] = adata.obs["condition"].astype(str)
    adata.obs.loc[adata.obs_names[:3], "cond2"] = "A++B"
    adata.obs["cond3"] = adata.obs["condition"].astype(str).str.replace("ctrl", "control")
    adata.obs["cond4"] = adata.obs["condition"].astype(str)
    adata.obs.loc[adata.obs_names[-1], "cond4"] = "NOTAGENE+ctrl"
    adata.obs["cond5"] = adata.obs["condition"].astype(str)
    before = copy.deepcopy(adata)
    with pytest.raises(ValueError, match="Malformed"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="cond2", gene_symbols="gene_name")
    with pytest.raises(ValueError, match="No control cells"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="cond3", gene_symbols="gene_name")
    with pytest.raises(KeyError, match=r"NOTAGENE.*extra_genes"):  # neither measured nor in the prior
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="cond4", gene_symbols="gene_name")
    with pytest.raises(TypeError, match="extra_genes"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="cond5", gene_symbols="gene_name",
                                          extra_genes="NOTAGENE")
    with pytest.raises(ValueError, match="source"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="cond5", gene_symbols="gene_name",
                                          prior=pd.DataFrame({"a": ["X"]}))
    with pytest.raises(KeyError, match="perturbation_key"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="nope")
    with pytest.raises(KeyError, match="gene_symbols"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="nope")
    _same(adata, before)


def test_classifier_model_refuses_predict_perturbation(sim):
    adata = sim.copy()
    adata.obs["kind"] = np.where(adata.obs["condition"] == "ctrl", "ctrl", "pert")
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="kind")
    model = gh.GenoHoptionModel(adata, d_model=16, n_heads=2, n_layers=1, d_hid=32)
    with pytest.raises(TypeError, match="perturbation_key"):
        model.predict_perturbation(adata, "ctrl")


def test_norman_subset_sets_up_with_unmeasured_genes(shared_data):
    """None of the subset's 41 perturbed genes is measured: all are in the gene universe (prior or extra_genes)."""
    import genohoption._conditions as cond

    adata = gh.datasets.read_gears(shared_data / "perturbation" / "norman_subset_gears_format.h5ad")
    n = adata.n_vars
    adata.varp["gene_graph"] = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), (np.arange(n) + 1) % n)), shape=(n, n))
    genes = sorted({g for c in adata.obs["condition"].astype(str) for g in cond.parse_condition(c)})
    before = copy.deepcopy(adata)
    with pytest.raises(KeyError, match="not in the model's gene universe"):
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="gene_name", prior=None)
    _same(adata, before)
    with pytest.warns(UserWarning, match="fewer than 3 cells"):  # scvi-tools: one cell per condition here
        gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="gene_name",
                                          extra_genes=genes)
    model = gh.GenoHoptionModel(adata, d_model=16, n_heads=2, n_layers=1, d_hid=32)
    universe = model._task.universe
    assert all(universe.find(g) >= adata.n_vars for g in genes)  # every one unmeasured, every one accepted


def test_annotation_methods_refused_on_perturbation_model(trained):
    model, adata = trained
    with pytest.raises(TypeError, match="predict_perturbation"):
        model.predict(adata)
    with pytest.raises(TypeError, match="predict_perturbation"):
        model.get_latent_representation(adata)


# ------------------------------------------------------------------ unmeasured genes, full-gene prediction
@pytest.fixture(scope="module")
def hidden(sim):
    """The simulation with two perturbed genes' columns removed: their conditions have unmeasured targets."""
    genes = sim.uns["simulation"]["perturbed_genes"][:2]
    adata = sim[:, ~sim.var_names.isin(genes)].copy()
    gh.pp.build_gene_graph(adata)
    return adata, list(genes)


def test_unmeasured_genes_train_predict_save_load(hidden, tmp_path):
    import scvi
    import torch

    adata, genes = hidden
    scvi.settings.seed = 0
    torch.manual_seed(0)
    a = adata.copy()
    gh.GenoHoptionModel.setup_anndata(a, perturbation_key="condition", gene_symbols="gene_name",
                                      extra_genes=["MADEUP1"])
    model = gh.GenoHoptionModel(a, attention="ppr", d_model=16, n_heads=2, n_layers=1, d_hid=32, n_hops=2)
    universe = model._task.universe
    # the hidden genes are perturbed in training and are prior genes joined to measured genes
    positions = [universe.find(g) for g in genes]
    assert all(p >= a.n_vars and universe.neighbors(p).size > 0 for p in positions)
    assert universe.neighbors(universe.find("MADEUP1")).size == 0
    assert model.module.own_embedding.num_embeddings == 3  # the two hidden genes + padding
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    ctrl = a[a.obs["condition"] == "ctrl"][:6].copy()
    measured = a.var_names[0]
    conditions = [f"{genes[0]}+ctrl", f"{genes[0]}+{genes[1]}", f"{genes[1]}+{measured}", "MADEUP1+ctrl",
                  "STAT1+ctrl", "ctrl"]
    with pytest.warns(UserWarning, match=r"no information about the perturbed genes \['MADEUP1'\].*fallback rule"):
        profiles = model.predict_perturbation(ctrl, conditions)
    assert np.isfinite(profiles.X).all() and profiles.shape == (len(conditions), a.n_vars)
    assert ctrl.uns["genohoption"]["predict_perturbation"]["fallback"] == ["MADEUP1+ctrl"]
    X = profiles.X
    for i in range(len(conditions) - 1):  # every perturbation changes the prediction of the control condition
        assert np.abs(X[i] - X[-1]).max() > 1e-4, conditions[i]
    assert np.abs(X[0] - X[1]).max() > 1e-4  # the combination differs from the single
    # MADEUP1 (no edge, never perturbed): the fallback rule, input + the mean change of the training perturbations
    shift = model.module.perturbation_shift.numpy()
    np.testing.assert_allclose(X[3], ctrl.X.toarray().mean(0) + shift, atol=1e-5)
    with pytest.warns(UserWarning, match="generic token"):
        generic = model.predict_perturbation(ctrl, ["MADEUP1+ctrl"], fallback=False)
    assert np.abs(generic.X[0] - X[3]).max() > 1e-4
    assert ctrl.uns["genohoption"]["predict_perturbation"]["fallback"] == []
    with pytest.raises(KeyError, match="NOTAGENE"):
        model.predict_perturbation(ctrl, f"{genes[0]}+NOTAGENE")
    single = model.predict_perturbation(ctrl, f"{genes[0]}+ctrl")
    model.save(tmp_path / "m")
    loaded = gh.GenoHoptionModel.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_perturbation(ctrl, f"{genes[0]}+ctrl"), single, atol=1e-5)
    again = loaded._task.universe
    np.testing.assert_array_equal(again.extra, universe.extra)
    np.testing.assert_array_equal(again.indices, universe.indices)
    assert loaded.module.n_extra == universe.n_extra
    # the registry can be transferred to the training data (training can go on)
    loaded2 = gh.GenoHoptionModel.load(tmp_path / "m", adata=a)
    assert loaded2.adata_manager is not None


def test_unmeasured_token_is_joined_to_its_neighbours():
    from genohoption.module._perturbation import extend_graph

    # 3 measured genes, graph 0 -> 1; two new nodes: 3 joined to {0, 2}, 4 joined to nothing
    indptr, indices = torch_tensor([0, 1, 1, 1]), torch_tensor([1])
    ptr, idx = extend_graph(indptr, indices, torch_tensor([0, 2, 2]), torch_tensor([0, 2]))
    rows = {i: idx[ptr[i]:ptr[i + 1]].tolist() for i in range(5)}
    assert rows == {0: [1, 3], 1: [], 2: [3], 3: [0, 2], 4: []}


def torch_tensor(values):
    import torch

    return torch.as_tensor(values, dtype=torch.int64)


def test_every_gene_predicted_with_short_sequences(hidden):
    import torch

    adata, genes = hidden
    a = adata.copy()
    gh.GenoHoptionModel.setup_anndata(a, perturbation_key="condition", gene_symbols="gene_name")
    model = gh.GenoHoptionModel(a, d_model=16, n_heads=2, n_layers=1, d_hid=32, n_hops=2, max_seq_len=9)
    assert a.n_vars > 4 * 8
    module = model.module.eval()
    with torch.no_grad():  # a decoder that outputs 7 everywhere: every gene must be written
        module.decoder.fc[-1].weight.zero_()
        module.decoder.fc[-1].bias.fill_(7.0)
    ctrl = a[a.obs["condition"] == "ctrl"][:3].copy()
    measured = a.var_names[:2].tolist()
    for cond in [f"{genes[0]}+ctrl", f"{measured[0]}+{measured[1]}", f"{genes[1]}+{measured[0]}"]:
        with pytest.warns(UserWarning, match="not been trained"):
            out = model.predict_perturbation(ctrl, cond)
        np.testing.assert_allclose(out, 7.0)
    # the chunks: a fixed partition of the genes, each sequence within max_seq_len (+1 unmeasured-gene token)
    seen = []

    def spy(tokens, *args):
        seen.append(tokens.genes.clone())
        return run(tokens, *args)

    run, module._run = module._run, spy
    try:
        x = torch.as_tensor(ctrl.X.toarray())
        flags = torch.tensor([[a.n_vars + 0, 0]] * 3)  # one unmeasured gene and measured gene 0
        flags[:, 0] = model._task.universe.find(genes[0])
        module.predict(x, flags)
    finally:
        module._run = run
    assert all(t.shape[1] <= 9 for t in seen)
    covered = torch.cat([t[t >= 0] for t in seen]).unique()
    assert covered.numel() == a.n_vars


def test_residual_model_starts_at_the_target_gene_baseline(sim, tmp_path):
    """residual=True: before training the model predicts TargetGeneBaseline(on="mean") cell by cell."""
    import torch

    a = sim.copy()
    gh.GenoHoptionModel.setup_anndata(a, perturbation_key="condition", gene_symbols="gene_name")
    torch.manual_seed(0)
    model = gh.GenoHoptionModel(a, d_model=16, n_heads=2, n_layers=1, d_hid=32, n_hops=2, residual=True)
    baseline = gh.tl.TargetGeneBaseline(on="mean").fit(a, gene_symbols="gene_name")
    assert float(model.module.target_ratio) == pytest.approx(baseline.ratio) and baseline.ratio < 0.9
    np.testing.assert_allclose(model.module.perturbation_shift.numpy(), baseline.effect("ctrl"), atol=1e-6)
    ctrl = a[a.obs["condition"] == "ctrl"][:9].copy()
    genes = sim.uns["simulation"]["perturbed_genes"]
    for cond in (f"{genes[0]}+ctrl", f"{genes[1]}+{genes[2]}"):
        with pytest.warns(UserWarning, match="not been trained"):
            got = model.predict_perturbation(ctrl, cond)
        np.testing.assert_allclose(got, baseline.predict_perturbation(ctrl.copy(), cond), atol=1e-5)
    assert model._task.describe(model.module)["residual"] is True
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    trained = model.predict_perturbation(ctrl, f"{genes[0]}+ctrl")
    assert np.abs(trained - baseline.predict_perturbation(ctrl.copy(), f"{genes[0]}+ctrl")).max() > 1e-4
    model.save(tmp_path / "r")
    loaded = gh.GenoHoptionModel.load(tmp_path / "r")
    assert loaded.module.residual and loaded.params["residual"] is True
    np.testing.assert_allclose(loaded.predict_perturbation(ctrl, f"{genes[0]}+ctrl"), trained, atol=1e-5)


def test_checkpoint_without_baseline_buffers_loads(trained):
    """Weights saved before the target-gene baseline existed load with shift 0 and ratio 1."""
    model, _ = trained
    state = {k: v for k, v in model.module.state_dict().items()
             if k not in ("perturbation_shift", "target_ratio")}
    module = copy.deepcopy(model.module)
    module.perturbation_shift.fill_(5.0)
    module.load_state_dict(state, strict=True)
    assert float(module.perturbation_shift.abs().max()) == 0.0 and float(module.target_ratio) == 1.0


@pytest.mark.filterwarnings("ignore:The model has not been trained:UserWarning")
def test_informative_genes_and_pretraining(hidden):
    """Which perturbed genes the model knows; pretrain() on control cells changes the backbone only."""
    import torch

    adata, genes = hidden
    a = adata.copy()
    gh.GenoHoptionModel.setup_anndata(a, perturbation_key="condition", gene_symbols="gene_name",
                                      extra_genes=["MADEUP1", "MADEUP2"])
    model = gh.GenoHoptionModel(a, d_model=16, n_heads=2, n_layers=1, d_hid=32, n_hops=2)
    universe = model._task.universe
    positions = torch.as_tensor([0, universe.find(genes[0]), universe.find("MADEUP1"), -1])
    assert model.module.informative(positions).tolist() == [True, True, False, True]
    ctrl = a[a.obs["condition"] == "ctrl"].copy()
    head = {k: v.clone() for k, v in model.module.state_dict().items() if k.startswith(("decoder.", "pert_encoder."))}
    emb = model.module.backbone.encoder.embedding.weight.detach().clone()
    model.pretrain(ctrl, max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert model.pretrain_history_["train_loss"].shape[0] == 1
    assert not torch.equal(model.module.backbone.encoder.embedding.weight.detach(), emb)
    for k, v in head.items():
        assert torch.equal(model.module.state_dict()[k], v), k
    # both unknown genes of a double: the fallback; one known gene: the known gene only, with a warning
    with pytest.warns(UserWarning, match=r"\['MADEUP1', 'MADEUP2'\]"):
        out = model.predict_perturbation(ctrl[:4].copy(), ["MADEUP1+MADEUP2", f"{genes[0]}+MADEUP1", f"{genes[0]}+ctrl"])
    np.testing.assert_allclose(out.X[1], out.X[2], atol=1e-6)
