"""Genetic perturbation prediction: registration, module, training plan and ``predict_perturbation``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as K
from .._conditions import (
    GeneUniverse,
    condition_gene_indices,
    condition_list,
    control_mask,
    gene_universe,
    perturbation_result,
)
from .._validate import check_key, get_matrix, uns_entry
from ..module import PerturbationModule
from ..tl._perturbation_baselines import TargetGeneBaseline
from ._perturbation_data import PerturbationDataSplitter, PerturbationField, registry_universe
from ._pretrained import load_pretrained_weights
from ._query import Query, iter_rows
from ._task import BuiltModule, Task, backbone_kwargs, graph_tensors
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
    (:func:`genohoption.pp.read_prior`) and ``extra_genes``.

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
        expression = cls.expression_field(adata, transfer=transfer, layer=layer, graph_key=graph_key)
        universe = None  # transfer: the saved universe decides which genes can be perturbed
        if not transfer:
            universe = check_perturbation_setup(adata, perturbation_key, control_value, gene_symbols, prior,
                                                extra_genes)
        return [expression, PerturbationField(K.PERT_KEY, perturbation_key, gene_symbols, control_value, universe)]

    # ---------------------------------------------------------------- model
    @property
    def _state(self) -> dict:
        return self.registry["field_registries"][K.PERT_KEY]["state_registry"]

    @property
    def gene_symbols(self) -> np.ndarray:
        """Symbols of the model's genes, used to read perturbation conditions."""
        return np.asarray(self._state["gene_symbols"], dtype=str)

    @property
    def universe(self) -> GeneUniverse:
        """The genes the model can perturb: measured genes, then unmeasured genes with their edges."""
        return registry_universe(self._state)

    def build_module(self, adata, graph, checkpoint=None, genes=None) -> BuiltModule:
        """:class:`~genohoption.module.PerturbationModule`, from scratch or with a pretrained scGPT backbone.

        Raises
        ------
        ValueError
            For a backbone other than scGPT: Geneformer's rank-value tokens carry no expression values to
            predict a perturbed profile from; :func:`genohoption.tl.in_silico_perturbation` is its perturbation.
        """
        params = self.params
        if params["backbone"] != "scgpt":
            raise ValueError(
                "Perturbation models use backbone='scgpt' (from scratch or pretrained=); drop backbone=. A Geneformer "
                "backbone reads only the rank order of a cell's genes, not their values, so it has no expression "
                "output to predict a perturbed profile from (GenoHoption's perturbation results use scGPT). For "
                "Geneformer's own in silico deletion / overexpression (shifts of the embeddings), train an "
                "annotation or pretraining model with backbone='geneformer' and use gh.tl.in_silico_perturbation."
            )
        control_mean = shift = None
        ratio = 1.0
        setup = self.setup_args
        if adata is not None:
            X = get_matrix(adata, setup["layer"])
            ctrl = control_mask(adata.obs[setup["perturbation_key"]], setup["control_value"])
            control_mean = torch.as_tensor(np.asarray(X[np.flatnonzero(ctrl)].mean(0)).ravel(), dtype=torch.float32)
            base = training_baseline(adata, setup)
            shift = torch.as_tensor(base.effect(setup["control_value"]), dtype=torch.float32)
            ratio = base.ratio
        indptr, indices = graph_tensors(graph, self.n_vars)
        universe = self.universe
        table = condition_gene_indices(list(self._state["categorical_mapping"]), universe, setup["control_value"])
        own = np.unique(table[table >= self.n_vars]) - self.n_vars  # unmeasured genes perturbed in the training data
        module = PerturbationModule(
            n_genes=self.n_vars,
            graph_indptr=indptr,
            graph_indices=indices,
            control_mean=control_mean,
            universe_indptr=torch.as_tensor(universe.indptr),
            universe_indices=torch.as_tensor(universe.indices),
            own_genes=torch.as_tensor(own, dtype=torch.int64),
            max_seq_len=params["max_seq_len"],
            loss=params["loss"],
            backbone_config=params.get("backbone_config"),
            perturbation_shift=shift,
            target_ratio=ratio,
            residual=params.get("residual", False),
            **backbone_kwargs(params),
        )
        report = _load_pretrained(module, checkpoint, genes, universe) if checkpoint is not None else None
        return BuiltModule(module, report)

    def training_plan(self, module, adata_manager, **plan_kwargs) -> RegressionTrainingPlan:
        """Regression plan (the module's MSE or GEARS loss)."""
        return RegressionTrainingPlan(module, **plan_kwargs)

    def describe(self, module) -> dict[str, Any]:
        """Conditions, loss and the unmeasured genes that can be perturbed."""
        return {"conditions": len(self._state["categorical_mapping"]), "unmeasured genes": module.n_extra,
                "loss": self.params["loss"], "residual": module.residual}

    # ---------------------------------------------------------------- prediction
    @torch.inference_mode()
    def _predict_condition(self, module, X, pert_genes: np.ndarray, batch_size: int, fall_back: bool = False
                           ) -> np.ndarray:
        """``(n_obs, n_genes)`` predicted expression of every gene for one condition, in model gene order.

        ``pert_genes`` ``(1, max_genes)``; ``fall_back``: the fallback ``x + Δ`` instead of the model.
        """
        module.eval()
        out = np.empty(X.shape, dtype=np.float32)
        pg = torch.as_tensor(pert_genes, dtype=torch.int64, device=module.device)
        start = 0
        for x in iter_rows(X, batch_size, module.device):
            pred = module.fallback(x) if fall_back else module.predict(x, pg.expand(x.shape[0], -1))
            out[start : start + x.shape[0]] = pred.float().cpu().numpy()
            start += x.shape[0]
        return out

    def _uninformative(self, module, conds: list[str], table: np.ndarray, fallback: bool
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Warn about perturbed genes the model knows nothing about; with ``fallback``, drop them from ``table``.

        Returns the table to predict with (``-1`` = no gene) and which conditions fall back to ``x + Δ``
        (those whose every gene was dropped; never the control condition).
        """
        pos = torch.as_tensor(table, dtype=torch.int64, device=module.device)
        known = module.informative(pos).cpu().numpy() | (table < 0)
        none = np.zeros(len(conds), dtype=bool)
        if known.all():
            return table, none
        universe = self.universe
        names = sorted({str(universe.extra[p - universe.n_measured]) for p in table[~known]})
        hit = [c for c, row in zip(conds, known, strict=True) if not row.all()]
        if fallback:
            had_genes = (table >= 0).any(1)
            table = np.where(known, table, -1)
            falls = had_genes & (table < 0).all(1)
            whole = [c for c, f in zip(conds, falls, strict=True) if f]
            rule = (f"{len(whole)} of them ({whole[:5]!r}{' …' if len(whole) > 5 else ''}) are predicted by the fallback "
                    "rule, input + the mean change of the training perturbations (the mean baseline); in the others "
                    "these genes are left out")
        else:
            falls = none
            rule = "they are predicted from a generic token joined to every measured gene (fallback=False)"
        warnings.warn(
            f"The model has no information about the perturbed genes {names[:10]!r}{' …' if len(names) > 10 else ''}: "
            "not measured, no prior edge to a measured gene, not perturbed in the training data, not in a pretrained "
            f"vocabulary. They occur in {len(hit)} conditions; {rule}.",
            UserWarning,
            stacklevel=4,
        )
        return table, falls

    def predict_perturbation(self, module, query: Query, conditions: str | Sequence[str], *, batch_size: int = 128,
                             key_prefix: str = K.PERTURBATION_LAYER_PREFIX, fallback: bool = True
                             ) -> np.ndarray | AnnData:
        """Predict perturbed expression (see :meth:`GenoHoptionModel.predict_perturbation`)."""
        adata = query.adata
        conds, single = condition_list(conditions)
        if single:
            check_key(f"{key_prefix}{conds[0]}", "the layer name key_prefix + condition")
        uns_entry(adata)
        setup = self.setup_args
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
        table, falls = self._uninformative(module, conds, table, fallback)
        query_genes = adata.var_names.astype(str)
        same_genes = query_genes.equals(query.var_names)
        if not same_genes:
            pos = query.var_names.get_indexer(query_genes)  # adata gene -> model gene (-1: absent)
            base = get_matrix(adata, query.layer)
        results = []
        for row, fall_back in zip(table, falls, strict=True):
            pred = self._predict_condition(module, query.X, row[None, :], batch_size, fall_back)
            if not same_genes:
                full = base.toarray() if sp.issparse(base) else np.array(base, dtype=np.float32, copy=True)
                full = full.astype(np.float32, copy=False)
                has = pos >= 0
                full[:, has] = pred[:, pos[has]]
                pred = full
            results.append(pred if single else pred.mean(0, dtype=np.float64))
            del pred
        record = {"conditions": conds, "attention": self.params["attention"],
                  "n_genes_matched": query.n_genes_matched, "control_value": control_value,
                  "fallback": [c for c, f in zip(conds, falls, strict=True) if f]}
        result = perturbation_result(adata, conds, single, results, key_prefix=key_prefix, record=record,
                                     record_path=(K.UNS_PREDICT_PERTURBATION,))
        if single:
            logger.info("wrote adata.layers[%r]", f"{key_prefix}{conds[0]}")
        return result


def training_baseline(adata: AnnData, setup: dict) -> TargetGeneBaseline:
    """Fit the target-gene baseline (``on="mean"``) on the training data: the base of residual learning and fallback."""
    return TargetGeneBaseline(on="mean").fit(
        adata, perturbation_key=setup["perturbation_key"], control_value=setup["control_value"],
        gene_symbols=setup.get("gene_symbols"), layer=setup["layer"])


HEAD_PREFIXES = ("decoder.", "pert_encoder.")
"""Keys of an scGPT checkpoint loaded into the perturbation head when their shapes fit (expression decoder,
``TransformerGenerator.pert_encoder``)."""


def _load_pretrained(module: PerturbationModule, checkpoint, genes, universe: GeneUniverse):
    """Load a pretrained scGPT backbone (strictly), its expression decoder and perturbation embedding when they fit.

    The unmeasured genes of the universe that are in the checkpoint's vocabulary take its gene embedding
    (see :class:`~genohoption.module.PerturbationModule`).
    """
    report = load_pretrained_weights(module, checkpoint, genes, heads=HEAD_PREFIXES)
    vocab = {k: v for k, v in checkpoint.vocab.items() if not k.startswith("<")}
    upper = {k.upper(): v for k, v in vocab.items()}
    tokens = [vocab.get(g, upper.get(g.upper(), -1)) for g in universe.extra]
    module.extra_to_token.copy_(torch.as_tensor(tokens, dtype=torch.int64))
    logger.info("pretrained vocabulary: %d of %d unmeasured universe genes have an embedding",
                sum(t >= 0 for t in tokens), len(tokens))
    return report


__all__ = ["PerturbationTask", "check_perturbation_setup"]
