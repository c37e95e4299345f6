"""What a task (annotation, perturbation, pretraining) provides to :class:`~genohoption.GenoHoptionModel`.

The task is chosen once, from the arguments of ``setup_anndata`` (:func:`task_class` in ``_model.py``),
and the model hands it what it needs: a task object holds the model's fixed facts (its registry and
construction parameters, read-only), gets the module and the resolved query as arguments, and returns
results. It never holds the model and never writes onto it. A method of another task raises a
``TypeError`` that names the right one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import LayerField
from scvi.dataloaders import DataSplitter

from .._validate import (
    check_graph,
    check_row_access,
    check_unique_var_names,
    check_values,
    get_matrix,
    matrix_name,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from lightning.pytorch import LightningModule
    from scipy import sparse

    from ..module._base import TaskModule
    from ._pretrained import GeneMapping, PretrainedCheckpoint, PretrainedReport
    from ._query import Query


@dataclass(frozen=True)
class BuiltModule:
    """What :meth:`Task.build_module` returns.

    Attributes
    ----------
    module
        The task's module, with pretrained weights loaded when a checkpoint was given.
    report
        What was loaded from the checkpoint (:class:`~genohoption.model.PretrainedReport`), or ``None``.
    """

    module: TaskModule
    report: PretrainedReport | None = None


class Task:
    """Base class of the per-task behaviour of :class:`~genohoption.GenoHoptionModel`.

    Parameters
    ----------
    registry
        The model's scvi-tools registry (``model.registry_``).
    params
        The model's construction parameters (``model.init_params_`` flattened); kept read-only.
    """

    name: ClassVar[str] = "task"
    data_splitter_cls: ClassVar[type] = DataSplitter
    wrong_method_hint: ClassVar[str] = ""
    #: whether the task trains and infers on a backed AnnData (``anndata.read_h5ad(path, backed="r")``),
    #: reading minibatches of cells from disk
    supports_backed: ClassVar[bool] = True
    #: ``(setup argument naming the obs column, registry field key)`` of the task's categorical field,
    #: or ``None`` for a task without one
    categorical_field: ClassVar[tuple[str, str] | None] = None
    #: whether ``setup_anndata(..., batch_key=...)`` applies (the cells' batch enters the model)
    supports_batch: ClassVar[bool] = False

    def __init__(self, registry: dict, params: Mapping[str, Any]):
        self.registry = registry
        self.params = MappingProxyType(dict(params))

    # ---------------------------------------------------------------- facts of the model
    @property
    def setup_args(self) -> dict:
        """Arguments given to ``setup_anndata``."""
        return self.registry["setup_args"]

    @property
    def var_names(self) -> pd.Index:
        """Genes of the model, in model order (as strings)."""
        names = self.registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
        return pd.Index(np.asarray(names, dtype=str))

    @property
    def n_vars(self) -> int:
        """Number of genes of the model."""
        return len(self.var_names)

    # ---------------------------------------------------------------- set-up (class level)
    @classmethod
    def expression_field(cls, adata: AnnData, *, transfer: bool, layer: str | None,
                         graph_key: str | None) -> LayerField:
        """Check what every task registers (unique genes, values, gene graph) and return the expression field.

        ``transfer`` is true when a saved model's registry is copied (load): the graph is then not
        required (the saved weights bring it).

        Raises
        ------
        ValueError
            For duplicated ``var_names``, NaN / negative / non-finite values, or an invalid graph.
        KeyError
            If ``layer`` or ``graph_key`` is missing.
        """
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), matrix_name(layer))
        if graph_key is not None and not transfer:
            check_graph(adata, graph_key)
        return LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False)

    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, **setup_args) -> list:
        """Validate ``adata`` for this task and return the scvi-tools fields to register."""
        raise NotImplementedError

    @classmethod
    def check_backed(cls, adata: AnnData, layer: str | None) -> None:
        """Raise unless this task can read ``adata``, a backed AnnData, a minibatch of cells at a time.

        Raises
        ------
        ValueError
            If the task needs its data in memory, ``adata`` is a view of a backed AnnData, or its matrix
            is a backed CSC matrix; each message names the fix.
        """
        if not cls.supports_backed:
            raise ValueError(
                f"adata is backed (file {adata.filename}), but {cls.name} models need their data in memory "
                "(predictions are written as whole layers); load it with adata = adata.to_memory() or "
                "anndata.read_h5ad(path) without backed=."
            )
        if adata.is_view:
            raise ValueError(
                f"adata is a view of a backed AnnData (file {adata.filename}); write the selected cells to a file of "
                "their own (adata.write_h5ad(path), then anndata.read_h5ad(path, backed='r')) or load them with "
                "adata.to_memory()."
            )
        check_row_access(get_matrix(adata, layer), matrix_name(layer))

    @classmethod
    def registration_problems(cls, adata: AnnData, registry: dict) -> list[str]:
        """Why ``adata`` cannot take a saved model's registry (empty: it can, so training can go on).

        It must not be a view, must have the model's genes in the model's order and its layer, and its
        categorical columns (cell types or conditions; batches) must hold only categories the model was
        trained on.
        """
        setup = registry["setup_args"]
        fields = registry["field_registries"]
        genes = pd.Index(np.asarray(fields[REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"], dtype=str))
        layer = setup["layer"]
        problems = []
        if adata.is_view:
            problems.append("it is a view (pass adata.copy())")
        if layer is not None and layer not in adata.layers:
            problems.append(f"it has no layer {layer!r}")
        if not adata.var_names.astype(str).equals(genes):
            problems.append("its genes are not the model's genes in the model's order")
        categorical = [cls.categorical_field] if cls.categorical_field is not None else []
        if setup.get("batch_key"):
            categorical.append(("batch_key", REGISTRY_KEYS.BATCH_KEY))
        for setup_key, field_key in categorical:
            obs_key = setup[setup_key]
            known = np.asarray(fields[field_key]["state_registry"]["categorical_mapping"], dtype=str)
            if obs_key not in adata.obs:
                problems.append(f"adata.obs has no column {obs_key!r}")
            else:
                values = adata.obs[obs_key]
                new = pd.Index(values.dropna().astype(str).unique()).difference(known)
                if values.isna().any():
                    problems.append(f"adata.obs[{obs_key!r}] has missing values")
                if len(new):
                    problems.append(f"adata.obs[{obs_key!r}] holds categories the model does not know "
                                    f"({new[:3].tolist()})")
        if adata.isbacked and not problems:
            try:
                cls.check_backed(adata, layer)
            except (KeyError, TypeError, ValueError) as e:
                problems.append(str(e.args[0] if e.args else e))
        return problems

    @classmethod
    def backbone_config(cls, config: dict | None, checkpoint: PretrainedCheckpoint | None,
                        registry: dict) -> dict | None:
        """Return the architecture of a pretrained backbone as saved with the model (a new dict; default: as read)."""
        return None if config is None else dict(config)

    # ---------------------------------------------------------------- model construction
    def build_module(self, adata: AnnData | None, graph: sparse.csr_matrix | None,
                     checkpoint: PretrainedCheckpoint | None = None,
                     genes: GeneMapping | None = None) -> BuiltModule:
        """Create the task's module (``graph`` is ``None`` when loading: the saved weights bring it)."""
        raise NotImplementedError

    def training_plan(self, module: TaskModule, adata_manager, **plan_kwargs) -> LightningModule:
        """Lightning module that trains ``module`` on the registered data of ``adata_manager``."""
        raise NotImplementedError

    def describe(self, module: TaskModule) -> dict[str, Any]:
        """Facts shown by ``repr(model)``: task-specific sizes (name → value)."""
        return {}

    # ---------------------------------------------------------------- inference (per task)
    def _wrong(self, method: str) -> TypeError:
        return TypeError(f"{method}() does not apply to this model: {self.wrong_method_hint}")

    def require(self, method: str) -> None:
        """Raise the ``TypeError`` naming the right method unless this task provides ``method``.

        The model calls it before it reads any data, so a wrong call fails at once.
        """
        if getattr(type(self), method) is getattr(Task, method):
            raise self._wrong(method)

    def predict(self, module: TaskModule, query: Query, **kwargs):
        """Cell types (annotation models)."""
        raise self._wrong("predict")

    def get_latent_representation(self, module: TaskModule, query: Query, **kwargs) -> np.ndarray:
        """Cell embeddings (annotation and pretraining models)."""
        raise self._wrong("get_latent_representation")

    def predict_perturbation(self, module: TaskModule, query: Query, conditions, **kwargs):
        """Perturbed expression (perturbation models)."""
        raise self._wrong("predict_perturbation")


def graph_tensors(graph: sparse.csr_matrix | None, n_genes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR index tensors of the gene graph; empty placeholders when saved weights will bring them."""
    if graph is None:
        return torch.zeros(n_genes + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(graph.indptr.astype(np.int64)), torch.from_numpy(graph.indices.astype(np.int64))


def backbone_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the backbone's sizes, dropout and attention arguments, from the model's parameters."""
    return {
        "d_model": params["d_model"], "n_heads": params["n_heads"], "n_layers": params["n_layers"],
        "d_hid": params["d_hid"], "dropout": params["dropout"], "attention": params["attention"],
        "n_hops": params["n_hops"], "alpha": params["alpha"], "t": params["t"], "normalize": params["normalize_heat"],
    }
