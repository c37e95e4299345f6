"""Train a tiny annotation model with ``strategy="ddp"`` on 2 CPU processes (gloo); run by test_ddp.py.

Usage: ``python ddp_train.py OUT_DIR EPOCHS``. Lightning's launcher starts rank 1 by running this script
again; both ranks run every line, and only rank 0 writes (``model.save`` checks the rank). Rank 0 writes
``OUT_DIR/init`` (the untrained model and its data, graph included), ``OUT_DIR/model_rank0`` (the trained
model) and ``OUT_DIR/history.json``; a rank-1 file would mean that a non-zero rank wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
import torch
from scipy import sparse

import genohoption as gh
from genohoption.model._distributed import global_rank, is_global_zero

N_CELLS, N_GENES = 64, 40
MODEL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32, "cls_input_norm": "layer", "dropout": 0.0}
# full-batch gradient descent: one process with batch N_CELLS and two with N_CELLS / 2 each take the same steps
TRAIN = {"lr": 3e-3, "train_size": 1.0, "early_stopping": False, "enable_progress_bar": False,
         "plan_kwargs": {"class_weight": None}}


def make_data() -> ad.AnnData:
    rng = np.random.default_rng(0)
    types = np.repeat(["t0", "t1", "t2", "t3"], N_CELLS // 4)
    X = rng.poisson(0.5, size=(N_CELLS, N_GENES)).astype(np.float32)
    for k in range(4):
        X[types == f"t{k}", 6 * k : 6 * k + 6] += rng.poisson(3.0, size=(N_CELLS // 4, 6))
    adata = ad.AnnData(
        sparse.csr_matrix(np.log1p(X)),
        obs=pd.DataFrame({"cell_type": pd.Categorical(types)}, index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)]),
    )
    gh.pp.build_gene_graph(adata, prior=None, min_corr=0.1, n_neighbors=4)
    return adata


def main(out: Path, epochs: int) -> None:
    torch.set_num_threads(1)
    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    adata = make_data()
    gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    model = gh.GenoHoptionModel(adata, **MODEL)
    model.save(out / "init", save_anndata=True, overwrite=True)
    model.train(max_epochs=epochs, batch_size=N_CELLS // 2, accelerator="cpu", devices=2, strategy="ddp", **TRAIN)
    rank = global_rank()
    model.save(out / f"model_rank{rank}")  # rank 0 writes, rank 1 returns without writing
    if is_global_zero():
        hist = {k: v.iloc[:, 0].astype(float).tolist() for k, v in model.history_.items()}
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        (out / "history.json").write_text(json.dumps({"history": hist, "world_size": world}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
