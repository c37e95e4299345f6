"""Genetic perturbation prediction: registration, module, training plan and ``predict_perturbation``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import LayerField

from .. import _constants as K
from .._conditions import condition_gene_indices, control_mask
from .._validate import check_graph, check_key, check_unique_var_names, check_values, get_matrix, matrix_name
from ..module import PerturbationModule
from ._perturbation_data import PerturbationDataSplitter, PerturbationField
from ._query import aligned_matrix, iter_rows
from ._task import Task, graph_tensors
from ._training import RegressionTrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def check_perturbation_setup(
    adata: AnnData, perturbation_key: str, control_value: str, gene_symbols: str | None
) -> None:
    """Validate GEARS-style perturbation data before anything is registered.

    Raises
    ------
    KeyError
        If ``perturbation_key`` / ``gene_symbols`` is missing, or a perturbed gene is not measured.
    ValueError
        For missing or malformed conditions, or no control cell.
    """
    if perturbation_key not in adata.obs:
        raise KeyError(
            f"perturbation_key={perturbation_key!r} is not a column of adata.obs; available: "
            f"{list(adata.obs.columns)}. GEARS data keep conditions in obs['condition']."
        )
    if gene_symbols is not None and gene_symbols not in adata.var:
        raise KeyError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.var; available: {list(adata.var.columns)} "
            "(GEARS files: 'gene_name'; pass None to match conditions against var_names)."
        )
    conditions = adata.obs[perturbation_key]
    if conditions.isna().any():
        raise ValueError(
            f"adata.obs[{perturbation_key!r}] has {int(conditions.isna().sum())} missing conditions; drop those "
            "cells or fill them."
        )
    if not control_mask(conditions, control_value).any():
        found = pd.Series(conditions).astype(str).value_counts().index[:5].tolist()
        raise ValueError(
            f"No control cells: no cell has adata.obs[{perturbation_key!r}] == {control_value!r} (most frequent "
            f"values: {found}). Pass control_value= naming the control condition; control cells are the "
            "inputs of every prediction."
        )
    symbols = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
    categories = list(pd.unique(np.asarray(conditions.astype(str))))
    condition_gene_indices(categories, np.asarray(symbols, dtype=str), control_value,
                           what=f"adata.obs[{perturbation_key!r}]")


class PerturbationTask(Task):
    """Genetic perturbation prediction (``setup_anndata(adata, perturbation_key=...)``)."""

    name = "perturbation"
    data_splitter_cls = PerturbationDataSplitter
    categorical_field = ("perturbation_key", K.PERT_KEY)
    wrong_method_hint = (
        "this is a perturbation model (set up with perturbation_key=): use "
        "model.predict_perturbation(ctrl_adata, 'A+B')."
    )

    # ---------------------------------------------------------------- set-up
    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, layer: str | None = None,
                     graph_key: str | None = K.GRAPH_KEY, perturbation_key: str = "condition",
                     control_value: str = "ctrl", gene_symbols: str | None = None, **_) -> list:
        """Validate and return the fields: expression (``layer``) and conditions (``perturbation_key``)."""
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), matrix_name(layer))
        check_perturbation_setup(adata, perturbation_key, control_value, gene_symbols)
        if graph_key is not None and not transfer:
            check_graph(adata, graph_key)
        return [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            PerturbationField(K.PERT_KEY, perturbation_key, gene_symbols, control_value),
        ]

    # ---------------------------------------------------------------- model
    @property
    def gene_symbols(self) -> np.ndarray:
        """Symbols of the model's genes, used to read perturbation conditions."""
        return np.asarray(self.model.registry_["field_registries"][K.PERT_KEY]["state_registry"]["gene_symbols"],
                          dtype=str)

    def build_module(self, adata, graph, params: dict[str, Any], checkpoint=None, genes=None) -> PerturbationModule:
        """:class:`~genohoption.module.PerturbationModule` (scGPT backbone trained from scratch)."""
        if params["backbone"] != "scgpt" or checkpoint is not None:
            raise ValueError(
                "Perturbation models use backbone='scgpt' trained from scratch; drop backbone= / pretrained=."
            )
        control_mean = None
        setup = self.model.registry_["setup_args"]
        if adata is not None:
            X = get_matrix(adata, setup["layer"])
            ctrl = control_mask(adata.obs[setup["perturbation_key"]], setup["control_value"])
            control_mean = torch.as_tensor(np.asarray(X[np.flatnonzero(ctrl)].mean(0)).ravel(), dtype=torch.float32)
        n_genes = self.model.summary_stats.n_vars
        indptr, indices = graph_tensors(graph, n_genes)
        self.model.pretrained_report_ = None
        return PerturbationModule(
            n_genes=n_genes,
            graph_indptr=indptr,
            graph_indices=indices,
            control_mean=control_mean,
            max_seq_len=params["max_seq_len"],
            loss=params["loss"],
            d_model=params["d_model"],
            n_heads=params["n_heads"],
            n_layers=params["n_layers"],
            d_hid=params["d_hid"],
            dropout=params["dropout"],
            attention=params["attention"],
            n_hops=params["n_hops"],
            alpha=params["alpha"],
            t=params["t"],
            normalize=params["normalize_heat"],
        )

    def training_plan(self, **plan_kwargs) -> RegressionTrainingPlan:
        """Regression plan (the module's MSE or GEARS loss)."""
        return RegressionTrainingPlan(self.model.module, **plan_kwargs)

    def summary(self) -> str:
        """Attention, sizes and loss."""
        p = self.model.params
        n_conditions = len(self.model.registry_["field_registries"][K.PERT_KEY]["state_registry"]["categorical_mapping"])
        return (
            f"GenoHoptionModel (perturbation): attention={p['attention']}, n_hops={p['n_hops']}, "
            f"alpha={p['alpha']}, t={p['t']}, d_model={p['d_model']}, n_layers={p['n_layers']}, loss={p['loss']}, "
            f"genes={self.model.summary_stats.n_vars}, conditions={n_conditions}, "
            f"graph edges={self.model.module.n_edges}"
        )

    # ---------------------------------------------------------------- prediction
    @torch.inference_mode()
    def _predict_condition(self, X, pert_genes: np.ndarray, batch_size: int) -> np.ndarray:
        """``(n_obs, n_genes)`` predicted expression for one condition, in model gene order."""
        model = self.model
        model.module.eval()
        out = np.empty(X.shape, dtype=np.float32)
        pg = torch.as_tensor(pert_genes, dtype=torch.int64, device=model.device)
        start = 0
        for x in iter_rows(X, batch_size, model.device):
            res = model.module(x, pg.expand(x.shape[0], -1))
            pred = x.clone()  # genes left out of a too-long sequence keep their input value
            genes = res["genes"]
            valid = genes >= 0
            row_idx = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(genes)
            pred[row_idx[valid], genes[valid]] = res["pred"][valid].float()
            out[start : start + x.shape[0]] = pred.cpu().numpy()
            start += x.shape[0]
        return out

    def predict_perturbation(self, adata: AnnData, conditions: str | Sequence[str], *, batch_size: int = 128,
                             key_prefix: str = K.PERTURBATION_LAYER_PREFIX) -> np.ndarray | AnnData:
        """Predict perturbed expression (see :meth:`GenoHoptionModel.predict_perturbation`)."""
        from anndata import AnnData

        model = self.model
        adata = model._query(adata)
        single = isinstance(conditions, str)
        conds = [conditions] if single else (list(conditions) if isinstance(conditions, Sequence) else None)
        if not conds or not all(isinstance(c, str) for c in conds):
            raise TypeError(f"conditions must be a condition string or a list of them, got {conditions!r}.")
        if single:
            check_key(f"{key_prefix}{conds[0]}", "the layer name key_prefix + condition")
        uns = adata.uns.get(K.UNS_KEY, {})
        if not isinstance(uns, dict):
            raise TypeError(
                f"adata.uns[{K.UNS_KEY!r}] is a {type(uns).__name__}, not a dict; rename or delete it first."
            )
        setup = model.registry_["setup_args"]
        control_value = setup["control_value"]
        table = condition_gene_indices(conds, self.gene_symbols, control_value, what="conditions")
        layer = setup["layer"]
        X = aligned_matrix(adata, model.var_names, layer)
        query_genes = adata.var_names.astype(str)
        same_genes = query_genes.equals(model.var_names)
        if not same_genes:
            pos = model.var_names.get_indexer(query_genes)  # adata gene -> model gene (-1: absent)
            base = get_matrix(adata, layer)
        results = []
        for row in table:
            pred = self._predict_condition(X, row[None, :], batch_size)
            if not same_genes:
                full = base.toarray() if sp.issparse(base) else np.array(base, dtype=np.float32, copy=True)
                full = full.astype(np.float32, copy=False)
                has = pos >= 0
                full[:, has] = pred[:, pos[has]]
                pred = full
            results.append(pred if single else pred.mean(0))
            del pred
        record = {
            "conditions": conds,
            "attention": model.params["attention"],
            "n_genes_matched": int(query_genes.isin(model.var_names).sum()),
            "control_value": control_value,
        }
        uns = adata.uns.setdefault(K.UNS_KEY, {})
        if single:
            key = f"{key_prefix}{conds[0]}"
            adata.layers[key] = results[0]
            uns[K.UNS_PREDICT_PERTURBATION] = {**record, "layer": key}
            logger.info("wrote adata.layers[%r]", key)
            return results[0]
        uns[K.UNS_PREDICT_PERTURBATION] = {**record, "layer": None}
        obs = pd.DataFrame({"n_cells": np.full(len(conds), adata.n_obs)}, index=pd.Index(conds, name="condition"))
        return AnnData(X=np.vstack(results).astype(np.float32), obs=obs, var=adata.var.copy())


__all__ = ["PerturbationTask", "check_perturbation_setup"]
