"""Self-supervised pretraining (masked expression modelling): the task of a model set up without labels.

There is one way to pretrain: a :class:`~genohoption.module.PretrainingModule` around a scGPT-style
backbone, trained by :class:`~genohoption.model.MaskedExpressionTrainingPlan` through
:func:`~genohoption.model._fit.fit`. A model set up with ``labels_key=None`` pretrains its own new
backbone with ``train()``; ``GenoHoptionModel.pretrain`` pretrains an annotation model's backbone in
place, on any cells, with :func:`pretraining_run` (the same module, plan and trainer set-up).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import LayerField

from .. import _constants as K
from ..data import TokenRandom
from ..module import PretrainingModule
from ._backed import GenoHoptionDataManager
from ._batch import (
    adapted_batch_norms,
    batch_field,
    iter_query,
    n_batches,
    pretraining_batch_fields,
    pretraining_batch_obs,
)
from ._query import BackedRows, Query, RowOutputs
from ._task import BuiltModule, Task, backbone_kwargs, graph_tensors
from ._training import MaskedExpressionTrainingPlan

if TYPE_CHECKING:
    from scvi.data import AnnDataManager
    from torch import nn

logger = logging.getLogger(__name__)


class PretrainingTask(Task):
    """Masked expression modelling on unlabelled cells (``setup_anndata(adata, labels_key=None)``).

    ``model.train()`` pretrains the backbone; ``model.save(dir)`` writes it, and
    ``GenoHoptionModel(reference, pretrained=dir)`` fine-tunes it for annotation.
    """

    name = "pretraining"
    supports_batch = True
    wrong_method_hint = (
        "this model is set up for self-supervised pretraining (labels_key=None): save it with model.save(dir) "
        "and fine-tune with GenoHoptionModel(reference, pretrained=dir) after setup_anndata(reference, labels_key=...)."
    )

    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, layer: str | None = None,
                     graph_key: str | None = K.GRAPH_KEY, batch_key: str | None = None, **_) -> list:
        """Validate and return the fields: expression (``layer``) and batches (``batch_key``)."""
        return [cls.expression_field(adata, transfer=transfer, layer=layer, graph_key=graph_key),
                *batch_field(adata, batch_key)]

    def build_module(self, adata, graph, checkpoint=None, genes=None) -> BuiltModule:
        """:class:`~genohoption.module.PretrainingModule` around a new scGPT-style backbone.

        Raises
        ------
        ValueError
            For a Geneformer backbone or a checkpoint (pretraining builds a new scGPT-style backbone).
        """
        if self.params["backbone"] != "scgpt" or checkpoint is not None:
            raise ValueError("Pretraining builds a new scGPT-style backbone: drop backbone= / pretrained=.")
        indptr, indices = graph_tensors(graph, self.n_vars)
        module = PretrainingModule(self.n_vars, indptr, indices, max_seq_len=self.params["max_seq_len"],
                                   n_batches=n_batches(self.registry),
                                   batch_representation=self.params.get("batch_representation"),
                                   batch_adversarial=self.params.get("batch_adversarial", 0.0),
                                   conventions=self.params.get("conventions"), **backbone_kwargs(self.params))
        return BuiltModule(module)

    def training_plan(self, module, adata_manager, **plan_kwargs) -> MaskedExpressionTrainingPlan:
        """Masked-expression plan."""
        return MaskedExpressionTrainingPlan(module, **plan_kwargs)

    @torch.inference_mode()
    def get_latent_representation(self, module, query: Query, *, batch_size: int = 128) -> np.ndarray:
        """Cell embeddings ``(n_obs, d_model)`` of the pretrained backbone (no value hidden)."""
        module.eval()
        rows = RowOutputs(query.X.shape[0], ((module.backbone.d_model,),))  # memory flat in the number of cells
        rng = TokenRandom(module.conventions.seed)  # one pass: the same draws whatever the batch size
        with adapted_batch_norms(module, query, batch_size):
            for x, b in iter_query(query, batch_size, module.device):
                rows.add(module(x, mask=False, batch_index=b, rng=rng)["latent"].float())
        return rows.arrays[0]


@dataclass
class TrainingRun:
    """One training run of a module on registered data (what scvi-tools' TrainRunner reads and writes).

    :meth:`GenoHoptionModel.train` runs on the model itself; :meth:`GenoHoptionModel.pretrain` runs the
    pretraining of an annotation model's backbone on a run of its own, so that the model's own training
    state (``history_``, ``is_trained_``, split indices) is not touched, and reads the history from it.

    Attributes
    ----------
    module
        The module trained.
    adata_manager
        The registered data it reads.
    history_
        Per-epoch metrics after training (dict of DataFrames).
    """

    module: nn.Module
    adata_manager: AnnDataManager
    history_: dict | None = None
    is_trained_: bool = False
    train_indices: Any = None
    validation_indices: Any = None
    test_indices: Any = None
    trainer: Any = None
    run_name: str = "pretrain"
    run_id: str = ""

    @property
    def adata(self) -> AnnData:
        """The registered AnnData."""
        return self.adata_manager.adata

    def to_device(self, device) -> None:
        """Move the module to ``device``."""
        self.module.to(device)


def pretraining_run(query: Query, base: nn.Module, registry: dict, *,
                    mask_ratio: float) -> tuple[TrainingRun, PretrainingTask]:
    """Set up the pretraining of ``base.backbone`` (shared, trained in place) on the query's cells.

    A light AnnData is registered around the query's expression in the model's gene order (the caller's
    object gets no scvi-tools keys), with the cells' batches for a model set up with ``batch_key``; for a
    backed query the matrix stays on disk and is read a minibatch at a time. A model with batches shares
    its batch embedding and input normalisation (``base.batch``) with the pretraining module; an adversarial
    discriminator of its own (on the CLS embedding) is trained with it when ``base`` has one.

    Parameters
    ----------
    query
        The cells, resolved by the model (genes aligned).
    base
        The model's module (:class:`~genohoption.module.AnnotationModule`): its backbone, gene graph,
        token cap and batch parts are used.
    registry
        The model's registry (its batch categories).
    mask_ratio
        Fraction of gene tokens whose value is hidden, in ``(0, 1)``.

    Returns
    -------
    The run (module and registered data) and the pretraining task whose plan trains it.

    Raises
    ------
    ValueError
        For a backbone that is not scGPT-style, a ``mask_ratio`` outside ``(0, 1)``, backed data whose
        genes are not the model's in order, or cells of batches the model was not trained on.
    """
    X = query.X
    if isinstance(X, BackedRows):
        raise ValueError(
            f"pretrain() on a backed AnnData (file {query.adata.filename}) reads its rows as stored, so its genes "
            "must be the model's genes in the model's order; write the data with them (adata[:, model.var_names] "
            "after loading, then write_h5ad) or load it with adata.to_memory()."
        )
    data = AnnData(X=X, obs=pretraining_batch_obs(query, registry), var=pd.DataFrame(index=query.var_names))
    manager = GenoHoptionDataManager(fields=[LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
                                             *pretraining_batch_fields(registry)])
    manager.register_fields(data)
    module = PretrainingModule(
        base.n_genes, base.graph_indptr, base.graph_indices, max_seq_len=base.max_seq_len,
        mask_ratio=mask_ratio, backbone=base.backbone, n_batches=getattr(base, "n_batches", 0),  # perturbation: none
        batch_adversarial=getattr(base, "batch_adversarial", 0.0), batch_inputs=getattr(base, "batch", None),
        conventions=getattr(base, "conventions", None),
    ).to(base.device)
    task = PretrainingTask(manager.registry, {"attention": module.attention})
    return TrainingRun(module, manager), task
