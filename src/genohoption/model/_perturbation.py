"""Genetic perturbation prediction: registration, module, training plan and ``predict_perturbation``."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import LayerField

from .. import _constants as K
from .._conditions import GeneUniverse, condition_gene_indices, control_mask, gene_universe
from .._validate import check_graph, check_key, check_unique_var_names, check_values, get_matrix, matrix_name
from ..module import PerturbationModule
from ._perturbation_data import PerturbationDataSplitter, PerturbationField, registry_universe
from ._pretrained import load_pretrained_weights
from ._query import aligned_matrix, iter_rows
from ._task import Task, backbone_kwargs, graph_tensors
from ._training import RegressionTrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def check_perturbation_setup(
    adata: AnnData, perturbation_key: str, control_value: str, gene_symbols: str | None,
    prior: pd.DataFrame | str | os.PathLike | Sequence | None = "default", extra_genes: Sequence[str] | None = None,
) -> GeneUniverse:
    """Validate GEARS-style perturbation data before anything is registered; return the gene universe.

    The universe is the measured genes (``gene_symbols``), the genes of the ``prior`` network
    (:func:`genohoption.pp.read_prior`) and ``extra_genes`` (:func:`genohoption._conditions.gene_universe`).

    Raises
    ------
    KeyError
        If ``perturbation_key`` / ``gene_symbols`` is missing, or a perturbed gene is not in the universe.
    ValueError
        For missing or malformed conditions, no control cell, or a malformed prior network.
    TypeError
        If ``extra_genes`` is not a list of strings.
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
    if extra_genes is not None and (isinstance(extra_genes, str) or not all(isinstance(g, str) for g in extra_genes)):
        raise TypeError(f"extra_genes must be a list of gene symbols, got {extra_genes!r}.")
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
    network = None
    if prior is not None:
        from ..pp import read_prior

        network = read_prior(prior)
    universe = gene_universe(np.asarray(symbols, dtype=str), network, extra_genes or ())
    categories = list(pd.unique(np.asarray(conditions.astype(str))))
    condition_gene_indices(categories, universe, control_value, what=f"adata.obs[{perturbation_key!r}]")
    return universe


class PerturbationTask(Task):
    """Genetic perturbation prediction (``setup_anndata(adata, perturbation_key=...)``)."""

    name = "perturbation"
    data_splitter_cls = PerturbationDataSplitter
    categorical_field = ("perturbation_key", K.PERT_KEY)
    supports_backed = False  # control cells are paired at random and predictions are whole layers
    wrong_method_hint = (
        "this is a perturbation model (set up with perturbation_key=): use "
        "model.predict_perturbation(ctrl_adata, 'A+B')."
    )

    # ---------------------------------------------------------------- set-up
    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, layer: str | None = None,
                     graph_key: str | None = K.GRAPH_KEY, perturbation_key: str = "condition",
                     control_value: str = "ctrl", gene_symbols: str | None = None, prior="default",
                     extra_genes: Sequence[str] | None = None, **_) -> list:
        """Validate and return the fields: expression (``layer``) and conditions (``perturbation_key``).

        The gene universe (measured genes, ``prior`` network genes, ``extra_genes``) is built here and
        saved in the condition field's registry; a transferred registry (``transfer``) keeps its own.
        """
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), matrix_name(layer))
        universe = None  # transfer: the saved universe decides which genes can be perturbed
        if not transfer:
            universe = check_perturbation_setup(adata, perturbation_key, control_value, gene_symbols, prior,
                                                extra_genes)
        if graph_key is not None and not transfer:
            check_graph(adata, graph_key)
        return [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            PerturbationField(K.PERT_KEY, perturbation_key, gene_symbols, control_value, universe),
        ]

    # ---------------------------------------------------------------- model
    @property
    def _state(self) -> dict:
        return self.model.registry_["field_registries"][K.PERT_KEY]["state_registry"]

    @property
    def gene_symbols(self) -> np.ndarray:
        """Symbols of the model's genes, used to read perturbation conditions."""
        return np.asarray(self._state["gene_symbols"], dtype=str)

    @property
    def universe(self) -> GeneUniverse:
        """The genes the model can perturb: measured genes, then unmeasured genes with their edges."""
        return registry_universe(self._state)

    def build_module(self, adata, graph, params: dict[str, Any], checkpoint=None, genes=None) -> PerturbationModule:
        """:class:`~genohoption.module.PerturbationModule`, from scratch or with a pretrained scGPT backbone."""
        if params["backbone"] != "scgpt":
            raise ValueError("Perturbation models use backbone='scgpt' (from scratch or pretrained=); drop backbone=.")
        control_mean = None
        setup = self.model.registry_["setup_args"]
        if adata is not None:
            X = get_matrix(adata, setup["layer"])
            ctrl = control_mask(adata.obs[setup["perturbation_key"]], setup["control_value"])
            control_mean = torch.as_tensor(np.asarray(X[np.flatnonzero(ctrl)].mean(0)).ravel(), dtype=torch.float32)
        n_genes = self.model.summary_stats.n_vars
        indptr, indices = graph_tensors(graph, n_genes)
        universe = self.universe
        table = condition_gene_indices(list(self._state["categorical_mapping"]), universe, setup["control_value"])
        own = np.unique(table[table >= n_genes]) - n_genes  # unmeasured genes perturbed in the training data
        module = PerturbationModule(
            n_genes=n_genes,
            graph_indptr=indptr,
            graph_indices=indices,
            control_mean=control_mean,
            universe_indptr=torch.as_tensor(universe.indptr),
            universe_indices=torch.as_tensor(universe.indices),
            own_genes=torch.as_tensor(own, dtype=torch.int64),
            max_seq_len=params["max_seq_len"],
            loss=params["loss"],
            backbone_config=params.get("backbone_config"),
            **backbone_kwargs(params),
        )
        self.model.pretrained_report_ = (
            _load_pretrained(module, checkpoint, genes, universe) if checkpoint is not None else None
        )
        return module

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
            f"genes={self.model.summary_stats.n_vars} (+{self.model.module.n_extra} unmeasured genes that can be "
            f"perturbed), conditions={n_conditions}, graph edges={self.model.module.n_edges}"
        )

    # ---------------------------------------------------------------- prediction
    @torch.inference_mode()
    def _predict_condition(self, X, pert_genes: np.ndarray, batch_size: int) -> np.ndarray:
        """``(n_obs, n_genes)`` predicted expression of every gene for one condition, in model gene order."""
        model = self.model
        model.module.eval()
        out = np.empty(X.shape, dtype=np.float32)
        pg = torch.as_tensor(pert_genes, dtype=torch.int64, device=model.device)
        start = 0
        for x in iter_rows(X, batch_size, model.device):
            pred = model.module.predict(x, pg.expand(x.shape[0], -1))
            out[start : start + x.shape[0]] = pred.float().cpu().numpy()
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
        pert_key = setup.get("perturbation_key")
        if pert_key in adata.obs and not control_mask(adata.obs[pert_key], control_value).all():
            n_other = int((~control_mask(adata.obs[pert_key], control_value)).sum())
            warnings.warn(
                f"predict_perturbation perturbs control cells, but {n_other} of the {adata.n_obs} cells given are not "
                f"controls (adata.obs[{pert_key!r}] != {control_value!r}); pass "
                f"adata[adata.obs[{pert_key!r}] == {control_value!r}].",
                UserWarning,
                stacklevel=3,
            )
        table = condition_gene_indices(conds, self.universe, control_value, what="conditions")
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


HEAD_PREFIXES = ("decoder.", "pert_encoder.")
"""Keys of an scGPT checkpoint loaded into the perturbation head when their shapes fit (expression decoder,
``TransformerGenerator.pert_encoder``)."""


def _load_pretrained(module: PerturbationModule, checkpoint, genes, universe: GeneUniverse):
    """Load a pretrained scGPT backbone (strictly), its expression decoder and perturbation embedding when they fit.

    The unmeasured genes of the universe that are in the checkpoint's vocabulary take its gene embedding
    (see :class:`~genohoption.module.PerturbationModule`).
    """
    state = checkpoint.state_dict
    heads = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    rest = dataclasses.replace(checkpoint, state_dict={k: v for k, v in state.items() if k not in heads})
    report = load_pretrained_weights(module, rest, genes)
    target = module.state_dict()
    fit = {k: v.to(target[k].dtype) for k, v in heads.items() if k in target and v.shape == target[k].shape}
    module.load_state_dict(fit, strict=False)
    report.matched = sorted([*report.matched, *fit])
    report.shape_mismatches += [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in heads.items()
                                if k in target and k not in fit]
    report.unexpected = sorted([*report.unexpected, *(k for k in heads if k not in target)])
    report.missing = sorted([*report.missing, *(k for k in target if k.startswith(HEAD_PREFIXES) and k not in fit)])
    vocab = {k: v for k, v in checkpoint.vocab.items() if not k.startswith("<")}
    upper = {k.upper(): v for k, v in vocab.items()}
    tokens = [vocab.get(g, upper.get(g.upper(), -1)) for g in universe.extra]
    module.extra_to_token.copy_(torch.as_tensor(tokens, dtype=torch.int64))
    logger.info("pretrained vocabulary: %d of %d unmeasured universe genes have an embedding",
                sum(t >= 0 for t in tokens), len(tokens))
    return report


__all__ = ["PerturbationTask", "check_perturbation_setup"]
