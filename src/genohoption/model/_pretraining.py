"""Self-supervised pretraining: a task of its own (unlabelled data) and the runner behind ``model.pretrain``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import LayerField
from scvi.dataloaders import DataSplitter
from scvi.train import TrainRunner

from .. import _constants as K
from .._validate import check_graph, check_unique_var_names, check_values, get_matrix, matrix_name
from ..module import PretrainingModule
from ._backed import GenoHoptionDataManager
from ._distributed import distributed_splitter_kwargs, pin_split
from ._query import BackedRows, RowOutputs, aligned_matrix, is_backed, iter_rows
from ._task import Task, backbone_kwargs, graph_tensors
from ._training import MaskedExpressionTrainingPlan, RestoreBestWeights

if TYPE_CHECKING:
    from ._model import GenoHoptionModel

logger = logging.getLogger(__name__)


class PretrainingTask(Task):
    """Masked expression modelling on unlabelled cells (``setup_anndata(adata, labels_key=None)``).

    ``model.train()`` pretrains the backbone; ``model.save(dir)`` writes it, and
    ``GenoHoptionModel(reference, pretrained=dir)`` fine-tunes it for annotation.
    """

    name = "pretraining"
    wrong_method_hint = (
        "this model is set up for self-supervised pretraining (labels_key=None): save it with model.save(dir) "
        "and fine-tune with GenoHoptionModel(reference, pretrained=dir) after setup_anndata(reference, labels_key=...)."
    )

    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, layer: str | None = None,
                     graph_key: str | None = K.GRAPH_KEY, **_) -> list:
        """Validate and return the one field: expression (``layer``)."""
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), matrix_name(layer))
        if graph_key is not None and not transfer:
            check_graph(adata, graph_key)
        return [LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False)]

    @classmethod
    def can_register(cls, adata: AnnData, registry: dict) -> bool:
        """``adata`` has the model's genes in order and its layer."""
        layer = registry["setup_args"]["layer"]
        genes = registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
        return (not adata.is_view and (layer is None or layer in adata.layers)
                and list(adata.var_names.astype(str)) == [str(g) for g in genes]
                and (not adata.isbacked or cls.backed_ok(adata, layer)))

    def build_module(self, adata, graph, params: dict[str, Any], checkpoint=None, genes=None) -> PretrainingModule:
        """:class:`~genohoption.module.PretrainingModule` around a new scGPT-style backbone."""
        if params["backbone"] != "scgpt" or checkpoint is not None:
            raise ValueError("Pretraining builds a new scGPT-style backbone: drop backbone= / pretrained=.")
        n_genes = self.model.summary_stats.n_vars
        indptr, indices = graph_tensors(graph, n_genes)
        self.model.pretrained_report_ = None
        return PretrainingModule(
            n_genes, indptr, indices, max_seq_len=params["max_seq_len"], **backbone_kwargs(params),
        )

    def training_plan(self, **plan_kwargs) -> MaskedExpressionTrainingPlan:
        """Masked-expression plan."""
        return MaskedExpressionTrainingPlan(self.model.module, **plan_kwargs)

    def summary(self) -> str:
        """Attention and sizes."""
        p = self.model.params
        return (
            f"GenoHoptionModel (pretraining): attention={p['attention']}, n_hops={p['n_hops']}, alpha={p['alpha']}, "
            f"t={p['t']}, d_model={p['d_model']}, n_layers={p['n_layers']}, genes={self.model.summary_stats.n_vars}, "
            f"graph edges={self.model.module.n_edges}"
        )

    @torch.inference_mode()
    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 128) -> np.ndarray:
        """Cell embeddings ``(n_obs, d_model)`` of the pretrained backbone (no value hidden)."""
        model = self.model
        adata = model._query(adata)
        X = aligned_matrix(adata, model.var_names, model.registry_["setup_args"]["layer"])
        model.module.eval()
        rows = RowOutputs(X.shape[0], ((model.module.backbone.d_model,),))  # memory flat in the number of cells
        for x in iter_rows(X, batch_size, model.device):
            rows.add(model.module(x, mask=False)["z"].float())
        return rows.arrays[0]


def _backed_handle(adata: AnnData, X, var_names: pd.Index) -> AnnData:
    """Return a light AnnData whose ``X`` is the backed ``adata``'s matrix on disk (nothing is read here).

    Raises
    ------
    ValueError
        If the file's genes are not the model's genes in order (they would have to be realigned row by row
        inside the data loader), naming the fixes.
    """
    if isinstance(X, BackedRows):
        raise ValueError(
            f"pretrain() on a backed AnnData (file {adata.filename}) reads its rows as stored, so its genes must be "
            "the model's genes in the model's order; write the data with them (adata[:, model.var_names] after "
            "loading, then write_h5ad) or load it with adata.to_memory()."
        )
    return AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names.astype(str)), var=pd.DataFrame(index=var_names))


class _Run:
    """What scvi-tools' :class:`~scvi.train.TrainRunner` reads and writes on a model, for a side training."""

    def __init__(self, module: torch.nn.Module, adata: AnnData):
        self.module, self.adata = module, adata
        self.history_, self.is_trained_ = None, False
        self.train_indices = self.validation_indices = self.test_indices = None
        self.run_name, self.run_id = "pretrain", ""

    def to_device(self, device) -> None:
        self.module.to(device)


def pretrain_backbone(
    model: GenoHoptionModel,
    adata: AnnData,
    *,
    mask_ratio: float,
    max_epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    train_size: float,
    early_stopping: bool,
    early_stopping_patience: int,
    accelerator: str,
    devices,
    plan_kwargs: dict | None,
    trainer_kwargs: dict,
) -> dict:
    """Pretrain ``model.module.backbone`` in place on ``adata`` (genes aligned by name); return the history."""
    # a light AnnData around the (aligned) expression: the caller's object gets no scvi-tools keys
    X = aligned_matrix(adata, model.var_names, model.registry_["setup_args"]["layer"])
    if is_backed(X):  # the same matrix on disk, read a minibatch at a time by the data loader
        data = _backed_handle(adata, X, model.var_names)
    else:
        data = AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                       var=pd.DataFrame(index=model.var_names))
    manager = GenoHoptionDataManager(fields=[LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False)])
    manager.register_fields(data)
    base = model.module
    module = PretrainingModule(
        base.n_genes, base.graph_indptr, base.graph_indices, max_seq_len=base.max_seq_len,
        mask_ratio=mask_ratio, backbone=base.backbone,
    ).to(base.device)
    plan = MaskedExpressionTrainingPlan(module, **{"lr": lr, "weight_decay": weight_decay, **(plan_kwargs or {})})
    splitter = DataSplitter(manager, train_size=train_size, batch_size=batch_size,
                            **distributed_splitter_kwargs(trainer_kwargs.get("strategy"), None))
    pin_split(splitter, trainer_kwargs.get("strategy"))
    has_validation = train_size < 1
    callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
    if has_validation:
        callbacks.append(RestoreBestWeights("validation_loss", "min"))
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
    trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
    trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
    trainer_kwargs.setdefault("log_every_n_steps", 1)
    run = _Run(module, data)
    module.train()
    TrainRunner(run, training_plan=plan, data_splitter=splitter, max_epochs=max_epochs, accelerator=accelerator,
                devices=devices, early_stopping=early_stopping and has_validation, callbacks=callbacks,
                **trainer_kwargs)()
    base.eval()
    return run.history_
