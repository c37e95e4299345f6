"""Multi-process training with Lightning's DDP on CPU (gloo), issue 15 item 1.

Two processes, each with half of the cells as one minibatch, take the same full-batch gradient steps as
one process with all cells in one minibatch (DDP averages the gradients): same data, same initial
weights, no dropout, no BatchNorm (whose batch statistics would be per process), unweighted loss (a
class-weighted mean is not the mean of the two halves' means). So the model saved by rank 0 must predict
what the one-process model predicts, to float round-off, and the logged (synchronised) epoch losses
must agree too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.strategies import DDPStrategy

import genohoption as gh
from genohoption.model._distributed import distributed_splitter_kwargs, global_rank, is_global_zero, uses_ddp

SCRIPT = Path(__file__).with_name("ddp_train.py")
EPOCHS = 5


def _script():
    spec = importlib.util.spec_from_file_location("_ddp_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _script()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out / "out"), str(EPOCHS)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "out", proc


def test_ddp_trains_on_two_processes_and_rank0_alone_writes(ddp_run):
    out, proc = ddp_run
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    res = json.loads((out / "history.json").read_text())
    assert res["world_size"] == 2
    loss = res["history"]["train_loss"]
    assert len(loss) == EPOCHS and loss[-1] < loss[0]
    assert (out / "model_rank0" / "model.safetensors").is_file()
    assert not (out / "model_rank1").exists()  # rank 1 called save() too, and wrote nothing


def test_ddp_model_predicts_as_one_process(ddp_run):
    out, _ = ddp_run
    ref = gh.GenoHoptionModel.load(out / "init")  # rank 0's initial weights and its data (graph included)
    adata = ref.adata
    ref.train(max_epochs=EPOCHS, batch_size=S.N_CELLS, accelerator="cpu", devices=1, **S.TRAIN)
    ddp = gh.GenoHoptionModel.load(out / "model_rank0", adata=adata)
    # the synchronised epoch losses of the two processes are the one-process losses
    hist = json.loads((out / "history.json").read_text())["history"]
    np.testing.assert_allclose(hist["train_loss"], ref.history_["train_loss"].iloc[:, 0].astype(float), rtol=1e-4)
    np.testing.assert_allclose(hist["train_accuracy"], ref.history_["train_accuracy"].iloc[:, 0].astype(float))
    a, b = adata.copy(), adata.copy()
    ref.predict(a)
    ddp.predict(b)
    np.testing.assert_allclose(b.obsm["genohoption_probabilities"].to_numpy(),
                               a.obsm["genohoption_probabilities"].to_numpy(), atol=1e-4)
    assert (a.obs["genohoption_prediction"] == b.obs["genohoption_prediction"]).all()
    np.testing.assert_allclose(ddp.get_latent_representation(adata), ref.get_latent_representation(adata), atol=1e-3)


@pytest.mark.parametrize(
    ("strategy", "ddp"),
    [("ddp", True), ("ddp_spawn", True), ("ddp_find_unused_parameters_true", True), (DDPStrategy(), True),
     (None, False), ("auto", False), ("single_device", False)],
)
def test_distributed_sampler_only_under_ddp(strategy, ddp):
    assert uses_ddp(strategy) is ddp
    assert distributed_splitter_kwargs(strategy, {"drop_last": True}) == (
        {"drop_last": True, "distributed_sampler": True} if ddp else {"drop_last": True}
    )
    assert distributed_splitter_kwargs(strategy, {"distributed_sampler": False}) == {"distributed_sampler": False}


def test_rank_from_launcher_variables_and_save_on_rank0_only(monkeypatch, tmp_path):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert global_rank() == 0 and is_global_zero()
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's launcher on a second node, before training
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not is_global_zero()
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.delenv("LOCAL_RANK")
    adata = S.make_data()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, **S.MODEL)
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert global_rank() == 3 and not is_global_zero()
    model.save(tmp_path / "rank3")
    assert not (tmp_path / "rank3").exists()
    monkeypatch.setenv("RANK", "0")  # torchrun's global rank comes first
    model.save(tmp_path / "rank0")
    assert (tmp_path / "rank0" / "model.json").is_file()


def test_pin_split_gives_every_process_the_one_process_split(monkeypatch):
    import scvi
    from scvi.dataloaders import DataSplitter

    from genohoption.model._distributed import pin_split

    adata = S.make_data()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, **S.MODEL)
    monkeypatch.setattr(scvi.settings, "seed", 0)
    alone = DataSplitter(model.adata_manager, train_size=0.75, batch_size=16)
    alone.setup()
    pinned = pin_split(DataSplitter(model.adata_manager, train_size=0.75, batch_size=16), "ddp_spawn")
    # a process started by ddp_spawn / ddp_notebook has scvi-tools' default seed (None: a random split)
    monkeypatch.setattr(scvi.settings, "seed", None)
    for _ in range(2):
        pinned.setup()
        np.testing.assert_array_equal(pinned.train_idx, alone.train_idx)
        np.testing.assert_array_equal(pinned.val_idx, alone.val_idx)
    assert len(pinned.val_idx) == 16 and not set(pinned.val_idx) & set(pinned.train_idx)
    untouched = DataSplitter(model.adata_manager, train_size=0.75, batch_size=16)
    assert pin_split(untouched, None).external_indexing is None
    assert pin_split(untouched, "auto").external_indexing is None
