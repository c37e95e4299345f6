"""Training interrupted and resumed from a checkpoint ends with the weights of uninterrupted training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import genohoption as gh
from genohoption.model import EpochSeed, RestoreBestWeights, TrainingCheckpoint

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}
TRAIN = {"max_epochs": 4, "batch_size": 25, "lr": 3e-3, "enable_progress_bar": False}


class Interrupted(Exception):
    """Stands for a killed job."""


class InterruptAt(Callback):
    """Raise at the start of epoch ``epoch`` (after the checkpoint of the epoch before was written)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted


@pytest.fixture(scope="module")
def cells():
    adata = gh.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    rows = np.sort(np.concatenate([np.flatnonzero(labels == t)[:30] for t in ("Dendritic", "CD14+ Monocyte",
                                                                               "CD19+ B")]))
    adata = adata[rows].copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str).astype("category")
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.2)
    return adata


def _model(cells, seed: int = 0):
    import scvi

    scvi.settings.seed = seed
    adata = cells.copy()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="bulk_labels")
    return gh.GenoHoptionModel(adata, **SMALL)


@pytest.mark.parametrize("best", ["last epochs", "before the interruption"])
def test_interrupted_and_resumed_training_ends_with_the_same_weights(cells, tmp_path, best):
    # "before the interruption": keep the epoch with the *highest* validation loss, the first one, so that the
    # resumed run must take the best weights from the checkpoint
    extra = (lambda: [RestoreBestWeights("validation_loss", "max")]) if best != "last epochs" else list
    reference = _model(cells)
    reference.train(**TRAIN, callbacks=extra())

    interrupted = _model(cells)
    with pytest.raises(Interrupted):
        interrupted.train(**TRAIN, callbacks=[TrainingCheckpoint(tmp_path), InterruptAt(2), *extra()])
    checkpoint = TrainingCheckpoint(tmp_path)
    assert checkpoint.path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    resumed = _model(cells)
    resumed.train(**TRAIN, callbacks=[checkpoint, *extra()], ckpt_path=checkpoint.path)
    expected, got = reference.module.state_dict(), resumed.module.state_dict()
    assert list(expected) == list(got)
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert differ == [], f"{len(differ)} of {len(expected)} tensors differ: {differ[:5]}"
    # the resumed history holds the epochs run after the checkpoint, with the same losses
    np.testing.assert_array_equal(resumed.history_["validation_loss"].to_numpy().ravel(),
                                  reference.history_["validation_loss"].to_numpy().ravel()[2:])
    q = cells.copy()
    np.testing.assert_array_equal(resumed.get_latent_representation(q), reference.get_latent_representation(q))


def test_epoch_seed_makes_epochs_independent_of_the_process_state(cells):
    """Whatever ran before in the process, the same seed gives the same weights."""
    weights = []
    for noise in (0, 1000):
        model = _model(cells)
        torch.rand(noise)  # draws from the global generator between set-up and training
        np.random.rand(noise)
        model.train(max_epochs=2, batch_size=25, enable_progress_bar=False)
        weights.append(model.module.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(isinstance(c, EpochSeed) for c in model.trainer.callbacks)


def test_training_checkpoint_arguments(tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        TrainingCheckpoint(tmp_path, every_n_epochs=0)
    assert TrainingCheckpoint(tmp_path).path == tmp_path / "last.ckpt"


@pytest.fixture(scope="module")
def screen():
    adata = gh.datasets.simulate_perturbation(
        n_genes=30, n_regulators=10, n_perturbed=5, n_combos=2, n_control=40, cells_per_condition=8,
        library_size=1500, seed=0,
    )
    gh.pp.build_gene_graph(adata)
    return adata


def _perturbation_model(screen):
    import scvi

    scvi.settings.seed = 0
    adata = screen.copy()
    gh.GenoHoptionModel.setup_anndata(adata, perturbation_key="condition", gene_symbols="gene_name")
    return gh.GenoHoptionModel(adata, d_model=16, n_heads=2, n_layers=1, d_hid=32, n_hops=3)


def test_interrupted_perturbation_training_resumes_bit_exactly(screen, tmp_path):
    """Each epoch pairs cells with other control cells; the pairing of an epoch depends on (seed, epoch) only."""
    train = {**TRAIN, "batch_size": 16}
    reference = _perturbation_model(screen)
    reference.train(**train)

    interrupted = _perturbation_model(screen)
    with pytest.raises(Interrupted):
        interrupted.train(**train, callbacks=[TrainingCheckpoint(tmp_path), InterruptAt(2)])
    checkpoint = TrainingCheckpoint(tmp_path)
    resumed = _perturbation_model(screen)
    resumed.train(**train, callbacks=[checkpoint], ckpt_path=checkpoint.path)

    expected, got = reference.module.state_dict(), resumed.module.state_dict()
    assert list(expected) == list(got)
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert differ == [], f"{len(differ)} of {len(expected)} tensors differ: {differ[:5]}"
    np.testing.assert_array_equal(resumed.history_["train_loss"].to_numpy().ravel(),
                                  reference.history_["train_loss"].to_numpy().ravel()[2:])
    np.testing.assert_array_equal(resumed.history_["validation_loss"].to_numpy().ravel(),
                                  reference.history_["validation_loss"].to_numpy().ravel()[2:])
