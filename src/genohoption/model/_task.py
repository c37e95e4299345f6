"""What a task (annotation, perturbation) provides to :class:`~genohoption.GenoHoptionModel`.

The task is chosen once, from the arguments of ``setup_anndata`` (``perturbation_key`` given or not),
and the model delegates to it: registration fields, module, data splitter, training plan, and the
task's inference methods. A method of the other task raises a ``TypeError`` that names the right one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter

from .._validate import check_row_access, get_matrix, matrix_name

if TYPE_CHECKING:
    from anndata import AnnData
    from lightning.pytorch import LightningModule
    from scipy import sparse

    from ..module._base import TaskModule
    from ._model import GenoHoptionModel


class Task:
    """Base class of the per-task behaviour of :class:`~genohoption.GenoHoptionModel`.

    Parameters
    ----------
    model
        The model this task serves.
    """

    name: ClassVar[str] = "task"
    data_splitter_cls: ClassVar[type] = DataSplitter
    wrong_method_hint: ClassVar[str] = ""
    #: whether the task trains and infers on a backed AnnData (``anndata.read_h5ad(path, backed="r")``),
    #: reading minibatches of cells from disk
    supports_backed: ClassVar[bool] = True

    def __init__(self, model: GenoHoptionModel):
        self.model = model

    # ---------------------------------------------------------------- set-up (class level)
    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, **setup_args) -> list:
        """Validate ``adata`` for this task and return the scvi-tools fields to register.

        ``transfer`` is true when the registration copies a saved model's registry (load): then the
        training-only checks (labels, graph) are skipped or relaxed.
        """
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
    def backed_ok(cls, adata: AnnData, layer: str | None) -> bool:
        """Whether :meth:`check_backed` accepts ``adata``."""
        try:
            cls.check_backed(adata, layer)
        except (KeyError, TypeError, ValueError):
            return False
        return True

    #: ``(setup argument naming the obs column, registry field key)`` of the task's categorical field
    categorical_field: ClassVar[tuple[str, str]] = ("", "")

    @classmethod
    def can_register(cls, adata: AnnData, registry: dict) -> bool:
        """Whether ``adata`` can take a saved model's registry (so that training can go on).

        It must not be a view, must have the model's genes in order and its layer, and its categorical
        column (cell types or conditions) must hold only categories the model was trained on.
        """
        setup = registry["setup_args"]
        setup_key, field_key = cls.categorical_field
        obs_key, layer = setup[setup_key], setup["layer"]
        fields = registry["field_registries"]
        genes = fields[REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
        known = fields[field_key]["state_registry"]["categorical_mapping"]
        if adata.is_view or obs_key not in adata.obs or (layer is not None and layer not in adata.layers):
            return False
        if adata.isbacked and not cls.backed_ok(adata, layer):
            return False
        values = adata.obs[obs_key]
        return (
            not values.isna().any()
            and bool(pd.Index(values.astype(str).unique()).isin(np.asarray(known, dtype=str)).all())
            and adata.var_names.astype(str).equals(pd.Index(np.asarray(genes, dtype=str)))
        )

    # ---------------------------------------------------------------- model construction
    def build_module(self, adata: AnnData | None, graph: sparse.csr_matrix | None, params: dict[str, Any]
                     ) -> TaskModule:
        """Create the task's module (``graph`` is ``None`` when loading: the saved weights bring it)."""
        raise NotImplementedError

    def training_plan(self, **plan_kwargs) -> LightningModule:
        """Lightning module that trains :attr:`model.module`."""
        raise NotImplementedError

    def summary(self) -> str:
        """One-line description of the model (printed by ``repr(model)``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- inference (per task)
    def _wrong(self, method: str) -> TypeError:
        return TypeError(f"{method}() does not apply to this model: {self.wrong_method_hint}")

    def predict(self, *args, **kwargs):
        """Cell types (annotation models)."""
        raise self._wrong("predict")

    def get_latent_representation(self, *args, **kwargs):
        """Cell embeddings (annotation models)."""
        raise self._wrong("get_latent_representation")

    def predict_perturbation(self, *args, **kwargs):
        """Perturbed expression (perturbation models)."""
        raise self._wrong("predict_perturbation")


def task_class(setup_args: dict) -> type[Task]:
    """Return the task class chosen by the arguments of ``setup_anndata``.

    ``perturbation_key`` given: perturbation; else ``labels_key`` given: annotation; else pretraining.
    """
    from ._annotation import AnnotationTask
    from ._perturbation import PerturbationTask
    from ._pretraining import PretrainingTask

    if setup_args.get("perturbation_key"):
        return PerturbationTask
    return AnnotationTask if setup_args.get("labels_key") is not None else PretrainingTask


def graph_tensors(graph: sparse.csr_matrix | None, n_genes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR index tensors of the gene graph; empty placeholders when saved weights will bring them."""
    if graph is None:
        return torch.zeros(n_genes + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(graph.indptr.astype(np.int64)), torch.from_numpy(graph.indices.astype(np.int64))


def backbone_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Return the backbone's sizes, dropout and attention arguments, from the model's parameters."""
    return {
        "d_model": params["d_model"], "n_heads": params["n_heads"], "n_layers": params["n_layers"],
        "d_hid": params["d_hid"], "dropout": params["dropout"], "attention": params["attention"],
        "n_hops": params["n_hops"], "alpha": params["alpha"], "t": params["t"], "normalize": params["normalize_heat"],
    }
