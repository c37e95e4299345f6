"""Training behaviour: best-weight restore, minibatches of one cell, checkpointing, the head."""

import numpy as np
import pytest
import scvi
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

import genohoption as gh
from genohoption.model import RestoreBestWeights

SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1, "d_hid": 64}
QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def pbmc():
    adata = gh.datasets.pbmc68k_reduced()
    keep = adata.obs["bulk_labels"].value_counts().index[:4]
    adata = adata[adata.obs["bulk_labels"].isin(keep)].copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str).astype("category")
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.2)
    return adata


class _SpoilLastEpoch(Callback):
    """Scramble the classifier's output layer at the start of the last epoch (a worse final model)."""

    def __init__(self, last_epoch: int):
        self.last_epoch = last_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.last_epoch:
            with torch.no_grad():
                out = pl_module.module.cls_decoder.out_layer
                out.weight.copy_(torch.randn_like(out.weight) * 50)
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 0.0  # keep the scrambled weights for this epoch


def _validation_loss(model, adata) -> float:
    idx = np.sort(model.validation_indices)
    x = torch.as_tensor(adata.X[idx].toarray(), dtype=torch.float32)
    labels = torch.as_tensor(adata.obs["_scvi_labels"].to_numpy()[idx]).long()
    model.module.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model.module(x)["logits"], labels))


def test_best_validation_weights_are_restored(pbmc):
    scvi.settings.seed = 0
    ref = pbmc[:200].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(max_epochs=3, batch_size=32, lr=3e-3, early_stopping=False, callbacks=[_SpoilLastEpoch(2)], **QUIET)
    val = model.history_["validation_loss"].iloc[:, 0].astype(float).to_numpy()
    assert val.argmin() < 2 and val[2] > val.min() + 1.0  # the last epoch is clearly worse
    assert _validation_loss(model, ref) == pytest.approx(val.min(), rel=1e-4)


def test_restore_can_be_switched_off(pbmc):
    scvi.settings.seed = 0
    ref = pbmc[:200].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(max_epochs=3, batch_size=32, lr=3e-3, early_stopping=False, restore_best_weights=False,
                callbacks=[_SpoilLastEpoch(2)], **QUIET)
    val = model.history_["validation_loss"].iloc[:, 0].astype(float).to_numpy()
    assert _validation_loss(model, ref) == pytest.approx(val[-1], rel=1e-4)


def test_restore_best_weights_callback_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        RestoreBestWeights(mode="lowest")


def test_minibatch_of_one_cell_trains_and_predicts(pbmc):
    # 36 cells, train_size 0.9 -> 33 training cells: batches of 32 and 1
    ref = pbmc[:36].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    with pytest.warns(UserWarning, match="small size of 1 samples"):
        model.train(max_epochs=1, batch_size=32, **QUIET)
    assert np.isfinite(model.history_["train_loss"].iloc[:, 0].astype(float)).all()
    one = ref[:1].copy()
    model.predict(one, batch_size=1)
    probs = one.obsm["genohoption_probabilities"].to_numpy()
    assert probs.shape == (1, model.summary_stats.n_labels) and np.isclose(probs.sum(), 1.0)
    # LayerNorm head: a cell's prediction does not depend on its minibatch
    batch = ref[:8].copy()
    model.predict(batch, batch_size=8)
    np.testing.assert_allclose(batch.obsm["genohoption_probabilities"].to_numpy()[:1], probs, rtol=1e-5, atol=1e-6)


def test_scvi_checkpointing_works(pbmc, tmp_path, monkeypatch):
    monkeypatch.setattr(scvi.settings, "logging_dir", tmp_path)  # where scvi's SaveCheckpoint writes
    ref = pbmc[:80].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(max_epochs=2, batch_size=32, enable_checkpointing=True, **QUIET)
    saved = list(tmp_path.rglob("model.safetensors"))
    assert saved, "scvi's SaveCheckpoint wrote no model"
    loaded = gh.GenoHoptionModel.load(saved[0].parent)
    assert loaded.var_names.equals(model.var_names)


def test_train_refuses_bad_arguments(pbmc):
    ref = pbmc[:40].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    for kwargs, match in (({"batch_size": 0}, "batch_size"), ({"max_epochs": 0}, "max_epochs"),
                          ({"train_size": 0.0}, "train_size")):
        with pytest.raises(ValueError, match=match):
            model.train(**kwargs)
    assert not model.is_trained_


def test_untrained_model_warns(pbmc):
    ref = pbmc[:40].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    with pytest.warns(UserWarning, match="not been trained"):
        model.get_latent_representation(ref[:4].copy())


# ------------------------------------------------------------------ the training recipe's options
def test_balanced_class_weights_and_label_smoothing(pbmc):
    ref = pbmc[:120].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    plan = model._task.training_plan(model.module, model.adata_manager, class_weight="balanced",
                                     label_smoothing=0.1)
    codes = ref.obs["_scvi_labels"].to_numpy()
    counts = np.bincount(codes, minlength=model.summary_stats.n_labels)
    np.testing.assert_allclose(plan.class_weight.numpy(), len(codes) / (len(counts) * counts), rtol=1e-6)
    x = torch.as_tensor(ref.X[:16].toarray())
    y = torch.as_tensor(codes[:16]).long()
    model.module.eval()
    out = model.module(x)
    got = model.module.loss(out, y, class_weight=plan.class_weight, label_smoothing=0.1)
    want = F.cross_entropy(out["logits"], y, weight=plan.class_weight, label_smoothing=0.1)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="balanced"):
        model._task.training_plan(model.module, model.adata_manager, class_weight="inverse")
    with pytest.raises(ValueError, match="label_smoothing"):
        model._task.training_plan(model.module, model.adata_manager, label_smoothing=1.0)


def test_cosine_schedule_with_warmup(pbmc):
    ref = pbmc[:100].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    lrs = []

    class _Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model.train(max_epochs=4, batch_size=25, lr=1e-2, train_size=1.0, callbacks=[_Record()],
                plan_kwargs={"lr_schedule": "cosine", "warmup": 0.25}, **QUIET)
    assert len(lrs) == 16  # 4 epochs of 4 minibatches; warm-up over the first 4 steps
    np.testing.assert_allclose(lrs[:4], [2.5e-3, 5e-3, 7.5e-3, 1e-2], rtol=1e-6)
    np.testing.assert_allclose(lrs[4:], [1e-2 * 0.5 * (1 + np.cos(np.pi * k / 12)) for k in range(12)], rtol=1e-6)


def test_expression_path_of_the_classifier(pbmc):
    ref = pbmc[:80].copy()
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, cell_emb="cls+expr", **SMALL)
    assert model.module.expr_proj.weight.shape == (SMALL["d_model"], ref.n_vars)
    model.train(max_epochs=1, batch_size=32, **QUIET)
    z = model.get_latent_representation(ref)
    assert z.shape == (ref.n_obs, 2 * SMALL["d_model"])
    # the second half is the linear projection of the expression
    np.testing.assert_allclose(z[:, SMALL["d_model"]:], ref.X.toarray() @ model.module.expr_proj.weight.detach().numpy().T,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="cell_emb"):
        gh.GenoHoptionModel(ref, cell_emb="mean", **SMALL)
