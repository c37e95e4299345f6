"""Cell-type annotation: registration, module, training plan, prediction and embeddings."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalObsField

from .. import _constants as K
from .._utils import companion_key
from .._validate import check_key, check_labels, get_matrix, matrix_name, uns_entry
from ..module import AnnotationModule
from ._batch import adapted_batch_norms, batch_field, iter_query, n_batches
from ._pretrained import load_pretrained_weights
from ._query import Query, RowOutputs
from ._task import BuiltModule, Task, backbone_kwargs, graph_tensors
from ._training import ClassificationTrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


class AnnotationTask(Task):
    """Cell-type annotation (``setup_anndata(adata, labels_key=...)``)."""

    name = "annotation"
    categorical_field = ("labels_key", REGISTRY_KEYS.LABELS_KEY)
    supports_batch = True
    wrong_method_hint = (
        "this model classifies cells; predict_perturbation needs a model set up with "
        "GenoHoptionModel.setup_anndata(adata, perturbation_key='condition')."
    )

    # ---------------------------------------------------------------- set-up
    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, layer: str | None = None,
                     labels_key: str = "cell_type", graph_key: str | None = K.GRAPH_KEY,
                     batch_key: str | None = None, **_) -> list:
        """Validate and return the fields: expression (``layer``), cell types (``labels_key``), batches (``batch_key``)."""
        expression = cls.expression_field(adata, transfer=transfer, layer=layer, graph_key=graph_key)
        check_labels(adata, labels_key, min_classes=1 if transfer else 2)
        return [expression, CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key), *batch_field(adata, batch_key)]

    @classmethod
    def backbone_config(cls, config, checkpoint, registry) -> dict | None:
        """Decide the classifier head of a pretrained backbone: reuse scGPT's when it fits, else a new one.

        scGPT's ``cls_decoder`` is reused as it is when it has one output per cell type (no input
        normalisation); a new head normalises its input (BatchNorm). Official checkpoints' classifier
        layers read the CLS embedding; a backbone pretrained with this package gets the ``"cls+expr"``
        head of a model trained here.
        """
        if config is None or checkpoint is None:
            return super().backbone_config(config, checkpoint, registry)
        n_labels = len(registry["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]["categorical_mapping"])
        head = checkpoint.state_dict.get("cls_decoder.out_layer.weight")
        reuse_head = head is not None and head.shape[0] == n_labels
        own = checkpoint.config.get("format") == "genohoption"
        return {**config, "cls_input_norm": None if reuse_head else "batch",
                "cell_emb": "cls+expr" if own and not reuse_head else "cls"}

    # ---------------------------------------------------------------- model
    @property
    def labels(self) -> np.ndarray:
        """Cell types the classifier predicts, in logit order."""
        state = self.registry["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]
        return np.asarray(state["categorical_mapping"])

    def build_module(self, adata, graph, checkpoint=None, genes=None) -> BuiltModule:
        """:class:`~genohoption.module.AnnotationModule`, with pretrained weights when given."""
        params = self.params
        config = params.get("backbone_config") or {}
        indptr, indices = graph_tensors(graph, self.n_vars)
        module = AnnotationModule(
            n_genes=self.n_vars,
            n_labels=len(self.labels),
            graph_indptr=indptr,
            graph_indices=indices,
            max_seq_len=params["max_seq_len"],
            n_cls_layers=config.get("n_cls_layers", params["n_cls_layers"]),
            cls_input_norm=config.get("cls_input_norm", params["cls_input_norm"]),
            backbone=params["backbone"],
            backbone_config=params.get("backbone_config"),
            cell_emb=params.get("cell_emb") or config.get("cell_emb", "cls+expr"),
            gene_tokens=params.get("gene_tokens", "expressed"),
            n_batches=n_batches(self.registry),
            batch_representation=params.get("batch_representation"),
            batch_adversarial=params.get("batch_adversarial", 0.0),
            conventions=params.get("conventions"),
            **backbone_kwargs(params),
        )
        report = load_pretrained_weights(module, checkpoint, genes) if checkpoint is not None else None
        if params["backbone"] == "geneformer" and adata is not None:
            sample = get_matrix(adata, self.setup_args["layer"])[:200]
            sample = sample.data if sp.issparse(sample) else np.asarray(sample)
            if sample.size and not np.allclose(sample, np.round(sample)):
                warnings.warn(
                    "backbone='geneformer' ranks genes by normalised raw counts, but the registered matrix is "
                    "not integer: register a counts layer with setup_anndata(adata, layer='counts').",
                    UserWarning,
                    stacklevel=4,
                )
        return BuiltModule(module, report)

    def training_plan(self, module, adata_manager, **plan_kwargs) -> ClassificationTrainingPlan:
        """Cross-entropy plan with accuracy and macro F1.

        ``class_weight="balanced"`` (the default) weighs each cell type by
        ``n_cells / (n_types * n_cells_of_type)`` over the registered cells (scikit-learn's "balanced"), so
        that rare types count; ``class_weight=None`` weighs all cells equally.

        Raises
        ------
        ValueError
            For a ``class_weight`` string other than ``"balanced"``.
        """
        n_labels = len(self.labels)
        plan_kwargs.setdefault("class_weight", "balanced")
        if isinstance(plan_kwargs.get("class_weight"), str):
            if plan_kwargs["class_weight"] != "balanced":
                raise ValueError(f"class_weight={plan_kwargs['class_weight']!r}: use 'balanced', weights or None.")
            codes = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
            counts = np.bincount(codes.astype(np.int64), minlength=n_labels).astype(np.float64)
            plan_kwargs["class_weight"] = torch.as_tensor(
                np.where(counts > 0, counts.sum() / (n_labels * np.maximum(counts, 1)), 0.0), dtype=torch.float32)
        return ClassificationTrainingPlan(module, n_classes=n_labels, **plan_kwargs)

    def describe(self, module) -> dict[str, Any]:
        """Cell types."""
        return {"cell types": len(self.labels)}

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def _forward(self, module, query: Query, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n_obs, d_latent)`` and class logits ``(n_obs, n_labels)`` of the query's cells.

        Raises
        ------
        ValueError
            For outputs that are not finite (naming the damaged weights when there are).
        """
        module.eval()
        rows = RowOutputs(query.X.shape[0])  # filled in place: memory flat in the number of cells
        rng = module.inference_random()  # one pass: the same random draws whatever the batch size
        with adapted_batch_norms(module, query, batch_size):
            for x, b in iter_query(query, batch_size, module.device, matrix_name(query.layer)):
                out = module(x, batch_index=b, rng=rng)
                z, s = out["latent"].float(), out["logits"].float()
                if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(s).all())):
                    raise _not_finite(module)
                rows.add(z, s)
        return rows.arrays

    def get_latent_representation(self, module, query: Query, *, batch_size: int = 128) -> np.ndarray:
        """Cell embeddings ``(n_obs, d_latent)`` (see :meth:`GenoHoptionModel.get_latent_representation`)."""
        return self._forward(module, query, batch_size)[0]

    def label_codes(self, labels: pd.Series) -> np.ndarray:
        """Logit index of each label of ``labels`` (cell types of the model).

        Raises
        ------
        ValueError
            For missing labels or cell types the model does not know (naming them).
        """
        if labels.isna().any():
            raise ValueError(f"{int(labels.isna().sum())} cells have no label; drop them first.")
        names = pd.Index([str(c) for c in self.labels])
        codes = names.get_indexer(labels.astype(str))
        if (codes < 0).any():
            new = pd.Index(labels.astype(str)[codes < 0].unique())
            raise ValueError(f"cell types the model was not trained on ({new[:3].tolist()}): calibration needs "
                             "held-out cells of the reference's types; drop the others.")
        return codes

    def calibrate(self, module, query: Query, codes: np.ndarray, *, false_unknown_rate: float = 0.05,
                  batch_size: int = 128) -> dict[str, Any]:
        """Fit the temperature and the "Unknown" threshold on labelled held-out cells of the reference's types.

        See :meth:`GenoHoptionModel.calibrate`; returns its record (nothing is written).
        """
        _, logits = self._forward(module, query, batch_size)
        return calibration_record(logits, codes, false_unknown_rate=false_unknown_rate)

    def predict(self, module, query: Query, *, batch_size: int = 128, key_added: str = K.PREDICTION_KEY,
                temperature: float = 1.0, unknown_threshold: float | None = None) -> pd.Series:
        """Predict cell types and write them to ``query.adata`` (see :meth:`GenoHoptionModel.predict`).

        ``temperature`` divides the logits (calibration); cells whose uncertainty exceeds
        ``unknown_threshold`` (when given) get :data:`~genohoption._constants.UNKNOWN_LABEL`.
        """
        check_predict_args(key_added, unknown_threshold)
        uns_entry(query.adata)
        _, logits = self._forward(module, query, batch_size)
        return write_predictions(query, logits, self.labels, key_added=key_added, temperature=temperature,
                                 unknown_threshold=unknown_threshold, record={"attention": self.params["attention"]})


def check_predict_args(key_added: str, unknown_threshold) -> None:
    """Check ``predict``'s ``key_added`` and ``unknown_threshold`` (a number in [0, 1] or None) before any work.

    Raises
    ------
    ValueError
        For a key that cannot be an obs column, or a threshold that is not a number in [0, 1].
    """
    check_key(key_added)
    if unknown_threshold is not None and not (isinstance(unknown_threshold, int | float | np.floating)
                                              and not isinstance(unknown_threshold, bool)
                                              and 0.0 <= unknown_threshold <= 1.0):
        raise ValueError(f"unknown_threshold must be a number in [0, 1], 'calibrated' or None, got "
                         f"{unknown_threshold!r}.")


def calibrated_settings(unknown_threshold, calibration: dict[str, Any] | None, owner: str) -> tuple[Any, float]:
    """Resolve ``unknown_threshold="calibrated"`` with a calibration record; return (threshold, temperature).

    ``owner`` names the object in the error (``"model"``, ``"ensemble"``). Without a record the temperature is 1.

    Raises
    ------
    ValueError
        For a string other than "calibrated", or "calibrated" without a calibration record.
    """
    if isinstance(unknown_threshold, str):
        if unknown_threshold != "calibrated":
            raise ValueError(f"unknown_threshold={unknown_threshold!r}: give a number in [0, 1], 'calibrated' or None.")
        if calibration is None:
            raise ValueError(f"unknown_threshold='calibrated' needs a calibrated {owner}: call "
                             f"{owner}.calibrate(held_out_cells) first, or give a number in [0, 1].")
        unknown_threshold = calibration["threshold"]
    return unknown_threshold, (calibration["temperature"] if calibration is not None else 1.0)


def check_false_unknown_rate(false_unknown_rate) -> None:
    """Raise ``ValueError`` unless ``calibrate``'s ``false_unknown_rate`` is in ``(0, 1)``."""
    if not 0.0 < float(false_unknown_rate) < 1.0:
        raise ValueError(f"false_unknown_rate must be in (0, 1), got {false_unknown_rate!r}.")


def calibration_labels(task: AnnotationTask, adata, labels_key: str | None, registry: dict):
    """Return ``calibrate``'s cells as an AnnData and the logit index of each one's label.

    ``labels_key`` defaults to the ``labels_key`` of ``registry``'s set-up. Used by the model and the ensemble.

    Raises
    ------
    ValueError
        For labels the model does not know.
    TypeError
        If ``adata`` is not an AnnData / MuData.
    KeyError
        If ``labels_key`` is not a column of ``adata.obs``.
    """
    from .._validate import as_anndata

    adata = as_anndata(adata, allow_backed=True)
    labels_key = labels_key or registry["setup_args"]["labels_key"]
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key={labels_key!r} is not a column of adata.obs; available: "
                       f"{list(adata.obs.columns)}.")
    return adata, task.label_codes(adata.obs[labels_key])


def calibration_record(logits: np.ndarray, codes: np.ndarray, *, false_unknown_rate: float) -> dict[str, Any]:
    """Temperature, Unknown threshold and calibration errors from held-out cells' ``logits`` and true ``codes``.

    The record of :meth:`GenoHoptionModel.calibrate` (without ``source``).
    """
    from ..tl._calibration import (
        expected_calibration_error,
        fit_temperature,
        scaled_probabilities,
        uncertainty_from_probabilities,
        unknown_threshold,
    )

    temperature = fit_temperature(logits, codes)
    raw, scaled = scaled_probabilities(logits), scaled_probabilities(logits, temperature)
    rows = np.arange(len(codes))
    return {
        "temperature": temperature,
        "threshold": unknown_threshold(uncertainty_from_probabilities(scaled), false_unknown_rate=false_unknown_rate),
        "false_unknown_rate": float(false_unknown_rate),
        "n_cells": len(codes),
        "accuracy": float((logits.argmax(1) == codes).mean()),
        "ece_before": expected_calibration_error(raw, codes),
        "ece_after": expected_calibration_error(scaled, codes),
        "nll_before": float(-np.log(np.maximum(raw[rows, codes], 1e-300)).mean()),
        "nll_after": float(-np.log(np.maximum(scaled[rows, codes], 1e-300)).mean()),
    }


def write_predictions(query: Query, logits: np.ndarray, classes, *, key_added: str, temperature: float,
                      unknown_threshold: float | None, record: dict[str, Any], stacklevel: int = 4) -> pd.Series:
    """Write the predictions of class scores ``logits`` ``(n_obs, n_classes)`` to ``query.adata``; return them.

    The outputs of :meth:`GenoHoptionModel.predict` (obs, obsm, ``uns["genohoption"]["predict"]``, which also
    gets ``record``). The arguments are checked (:func:`check_predict_args`) by the caller; ``stacklevel`` points
    the warning for a view at the user's call.
    """
    from ..tl._calibration import scaled_probabilities, uncertainty_from_probabilities

    adata = query.adata
    probs = scaled_probabilities(logits, temperature).astype(np.float32)
    uncertainty = uncertainty_from_probabilities(probs)
    labels = [str(c) for c in classes]
    names = np.asarray(labels, dtype=object)[probs.argmax(1)]
    categories = list(labels)
    if unknown_threshold is not None:
        names = np.where(uncertainty > unknown_threshold, K.UNKNOWN_LABEL, names)
        if K.UNKNOWN_LABEL not in labels:
            categories.append(K.UNKNOWN_LABEL)
    pred = pd.Categorical(names, categories=categories)
    series = pd.Series(pred, index=adata.obs_names, name=key_added)
    confidence_key = confidence_key_for(key_added)
    uncertainty_key = uncertainty_key_for(key_added)
    columns = probability_columns(classes)
    record = {
        "key_added": key_added,
        "confidence_key": confidence_key,
        "uncertainty_key": uncertainty_key,
        "probabilities_key": K.PROBABILITIES_KEY,
        "classes": labels,
        **record,
        "n_genes_matched": query.n_genes_matched,
        "temperature": float(temperature),
        "unknown_threshold": None if unknown_threshold is None else float(unknown_threshold),
        "n_unknown": int((series == K.UNKNOWN_LABEL).sum()) if unknown_threshold is not None else 0,
    }
    if adata.is_view:  # as scanpy does: the view becomes an AnnData of its own (its parent is not written)
        warnings.warn(
            "predict received a view of an AnnData: it is made an AnnData of its own before the results are "
            "written (its parent is unchanged); pass adata.copy() to avoid this warning.",
            UserWarning,
            stacklevel=stacklevel,
        )
        adata._init_as_actual(adata.copy())
    # everything is computed: write
    adata.obs[key_added] = series
    adata.obs[confidence_key] = probs.max(1)
    adata.obs[uncertainty_key] = uncertainty.astype(np.float32)
    adata.obsm[K.PROBABILITIES_KEY] = pd.DataFrame(probs, index=adata.obs_names, columns=columns)
    uns_entry(adata, create=True)[K.UNS_PREDICT] = record
    logger.info("wrote adata.obs[%r], adata.obs[%r], adata.obs[%r], adata.obsm[%r]", key_added, confidence_key,
                uncertainty_key, K.PROBABILITIES_KEY)
    return series


def _not_finite(module: torch.nn.Module) -> ValueError:
    """Return the error for NaN / infinite outputs, naming the module's non-finite weights when there are."""
    bad = [name for name, t in [*module.named_parameters(), *module.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        return ValueError(
            f"The model's weights hold NaN or infinite values ({bad[:5]}{' …' if len(bad) > 5 else ''}), so its "
            "outputs are not finite: the model is damaged (or its training diverged); retrain it (e.g. with a "
            "lower lr) or load an intact copy."
        )
    return ValueError(
        "The model's outputs are not finite although its weights are: check that the query holds values on the "
        "reference's scale (e.g. log-normalised, not huge raw values)."
    )


PROBABILITY_COLUMN_SLASH = "|"
"""Replaces ``/`` in cell-type names used as column names of ``obsm["genohoption_probabilities"]`` (h5ad group
names cannot hold ``/``); ``uns["genohoption"]["predict"]["classes"]`` keeps the true names."""


def probability_columns(labels) -> list[str]:
    """Column names of the probability table: the cell types as strings, ``/`` replaced (kept unique)."""
    columns, seen = [], set()
    for label in labels:
        name = base = str(label).replace("/", PROBABILITY_COLUMN_SLASH)
        k = 2
        while name in seen:
            name, k = f"{base} ({k})", k + 1
        seen.add(name)
        columns.append(name)
    return columns


def confidence_key_for(key_added: str) -> str:
    """``adata.obs`` column of the confidence that goes with the prediction column ``key_added``."""
    return K.CONFIDENCE_KEY if key_added == K.PREDICTION_KEY else companion_key(key_added, "confidence")


def uncertainty_key_for(key_added: str) -> str:
    """``adata.obs`` column of the uncertainty that goes with the prediction column ``key_added``."""
    return K.UNCERTAINTY_KEY if key_added == K.PREDICTION_KEY else companion_key(key_added, "uncertainty")


__all__ = ["PROBABILITY_COLUMN_SLASH", "AnnotationTask", "confidence_key_for", "probability_columns",
           "uncertainty_key_for"]
