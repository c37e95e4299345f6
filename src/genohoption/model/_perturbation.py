"""Perturbation side of :class:`~genohoption.GenoHoptionModel`: setup, module choice, prediction.

Kept apart from ``_model.py`` so that the user-facing class stays readable; the model class mixes
:class:`PerturbationMixin` in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField

from .. import _constants as K
from ..data._perturbation import (
    PERT_KEY,
    PerturbationDataSplitter,
    PerturbationField,
    condition_gene_indices,
    control_mask,
    parse_conditions,
)
from ..module import PerturbationModule
from ._validate import check_graph, check_unique_var_names, check_values, get_matrix

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


class PerturbationMixin:
    """Perturbation prediction for :class:`~genohoption.GenoHoptionModel` (GEARS-style data)."""

    # ------------------------------------------------------------------ setup
    @classmethod
    def _setup_perturbation(
        cls,
        adata: AnnData,
        *,
        layer: str | None,
        perturbation_key: str,
        control_value: str,
        gene_symbols: str | None,
        graph_key: str | None,
        setup_method_args: dict,
        **kwargs,
    ) -> None:
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), f"adata.layers[{layer!r}]" if layer else "adata.X")
        check_perturbation_setup(adata, perturbation_key, control_value, gene_symbols)
        if graph_key is not None:
            check_graph(adata, graph_key)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            PerturbationField(PERT_KEY, perturbation_key, gene_symbols, control_value),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    @property
    def is_perturbation_model(self) -> bool:
        """Whether the model predicts perturbations (set up with ``perturbation_key``)."""
        return bool(self.registry_["setup_args"].get("perturbation_key"))

    def _init_perturbation(self, adata: AnnData | None, indptr: torch.Tensor, indices: torch.Tensor,
                           params: dict) -> None:
        """Build the :class:`~genohoption.module.PerturbationModule` (called by ``__init__``)."""
        if params.get("backbone", "scgpt") != "scgpt" or params.get("pretrained") is not None:
            raise ValueError(
                "Perturbation models use backbone='scgpt' trained from scratch; drop backbone= / pretrained=."
            )
        loss = params.get("loss", "mse")
        control_mean = None
        if adata is not None:
            X = get_matrix(adata, self.registry_["setup_args"]["layer"])
            ctrl = control_mask(adata.obs[self.registry_["setup_args"]["perturbation_key"]],
                                self.registry_["setup_args"]["control_value"])
            control_mean = torch.as_tensor(np.asarray(X[np.flatnonzero(ctrl)].mean(0)).ravel(), dtype=torch.float32)
        self.module = PerturbationModule(
            n_genes=self.summary_stats.n_vars,
            graph_indptr=indptr,
            graph_indices=indices,
            control_mean=control_mean,
            max_seq_len=params["max_seq_len"],
            loss=loss,
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
        self._data_splitter_cls = PerturbationDataSplitter
        self.pretrained_report_ = None
        self._model_summary_string = (
            f"GenoHoptionModel (perturbation): attention={params['attention']}, n_hops={params['n_hops']}, "
            f"alpha={params['alpha']}, t={params['t']}, d_model={params['d_model']}, "
            f"n_layers={params['n_layers']}, loss={loss}, genes={self.summary_stats.n_vars}, "
            f"conditions={self.summary_stats.get('n_' + PERT_KEY, '?')}, graph edges={int(indices.numel())}"
        )

    # ------------------------------------------------------------------ prediction
    @property
    def perturbation_gene_symbols(self) -> np.ndarray:
        """Symbols of the model's genes, used to read perturbation conditions (perturbation models)."""
        return np.asarray(self.registry_["field_registries"][PERT_KEY]["state_registry"]["gene_symbols"], dtype=str)

    @torch.inference_mode()
    def _predict_condition(self, X, pert_genes: np.ndarray, batch_size: int) -> np.ndarray:
        """``(n_obs, n_genes)`` predicted expression for one condition, in model gene order."""
        self.module.eval()
        out = np.empty(X.shape, dtype=np.float32)
        pg = torch.as_tensor(pert_genes, dtype=torch.int64, device=self.device)
        for start in range(0, X.shape[0], batch_size):
            rows = X[start : start + batch_size]
            rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
            x = torch.as_tensor(rows, dtype=torch.float32, device=self.device)
            res = self.module.inference(x, pg.expand(x.shape[0], -1))
            pred = x.clone()  # genes left out of a too-long sequence keep their input value
            genes = res["genes"]
            valid = genes >= 0
            row_idx = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(genes)
            pred[row_idx[valid], genes[valid]] = res["pred"][valid].float()
            out[start : start + x.shape[0]] = pred.cpu().numpy()
        return out

    def predict_perturbation(
        self,
        adata: AnnData,
        conditions: str | Sequence[str],
        *,
        batch_size: int = 128,
        key_prefix: str = K.PERTURBATION_LAYER_PREFIX,
    ) -> np.ndarray | AnnData:
        """Predict the expression of control cells under genetic perturbations.

        Each cell of ``adata`` (control cells, genes matched to the model's genes by name) is the input;
        the condition's genes are flagged on their tokens (scGPT-style, Cui et al. 2024) and the model
        predicts every gene's value in the perturbed cell. Conditions follow GEARS (Roohani et al. 2023):
        ``"A+ctrl"`` / ``"ctrl+A"`` (single), ``"A+B"`` (double), written with the symbols of the
        ``gene_symbols`` column given to :meth:`setup_anndata`. The genes need not have been perturbed
        in training, but they must be among the model's genes: the perturbation reaches other genes
        through the perturbed gene's token and the gene graph, so an unmeasured gene raises
        ``KeyError`` (no silent fallback).

        Parameters
        ----------
        adata
            Control cells, ``(n_obs, n_vars)``, same kind of values (layer) as the training data. Genes
            missing from the model keep their input values; model genes missing from ``adata`` count as
            not expressed.
        conditions
            One condition (per-cell predictions written to ``adata.layers``) or a list of conditions
            (mean predicted profiles returned, nothing written to layers).
        batch_size
            Cells per forward pass.
        key_prefix
            Prefix of the layer name.

        Returns
        -------
        For one condition: ``(n_obs, n_vars)`` float32 array, also written to
        ``adata.layers[f"{key_prefix}{condition}"]`` (``genohoption_A+B`` by default). For a list: an
        AnnData ``(n_conditions, n_vars)`` of mean predicted profiles, ``obs_names`` = conditions,
        ``var`` = ``adata.var``, ``obs["n_cells"]``. Either way
        ``adata.uns["genohoption"]["predict_perturbation"]`` records the parameters (conditions, layer
        keys, attention, genes matched).

        Raises
        ------
        TypeError
            If the model was not set up with ``perturbation_key``, or ``conditions`` is not a string or
            a list of strings.
        ValueError
            For malformed conditions or an ``adata`` without genes in common with the model.
        KeyError
            If a perturbed gene is not among the model's genes (message names the genes), or the
            model's layer is missing from ``adata``.
        """
        from anndata import AnnData

        if not self.is_perturbation_model:
            raise TypeError(
                "This model classifies cells; predict_perturbation needs a model set up with "
                "GenoHoptionModel.setup_anndata(adata, perturbation_key='condition')."
            )
        single = isinstance(conditions, str)
        conds = [conditions] if single else list(conditions)
        if not conds or not all(isinstance(c, str) for c in conds):
            raise TypeError(f"conditions must be a condition string or a list of them, got {conditions!r}.")
        control_value = self.registry_["setup_args"]["control_value"]
        table = condition_gene_indices(conds, self.perturbation_gene_symbols, control_value, what="conditions")
        layer = self.registry_["setup_args"]["layer"]
        X = self._aligned_matrix(adata, layer)
        same_genes = adata.var_names.equals(self.var_names)
        if not same_genes:
            pos = self.var_names.get_indexer(adata.var_names)  # adata gene -> model gene (-1: absent)
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
        params = {
            "conditions": conds,
            "attention": {**self.init_params_["non_kwargs"], **self.init_params_["kwargs"]}.get("attention"),
            "n_genes_matched": int(adata.var_names.isin(self.var_names).sum()),
            "control_value": control_value,
        }
        uns = adata.uns.setdefault(K.UNS_KEY, {})
        if single:
            key = f"{key_prefix}{conds[0]}"
            adata.layers[key] = results[0]
            uns["predict_perturbation"] = {**params, "layer": key}
            logger.info("wrote adata.layers[%r]", key)
            return results[0]
        uns["predict_perturbation"] = {**params, "layer": None}
        obs = pd.DataFrame({"n_cells": np.full(len(conds), adata.n_obs)}, index=pd.Index(conds, name="condition"))
        return AnnData(X=np.vstack(results).astype(np.float32), obs=obs, var=adata.var.copy())


__all__ = ["PerturbationMixin", "check_perturbation_setup", "parse_conditions"]
