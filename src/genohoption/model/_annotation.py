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
from scvi.data.fields import CategoricalObsField, LayerField

from .. import _constants as K
from .._validate import (
    check_graph,
    check_key,
    check_labels,
    check_unique_var_names,
    check_value_scale,
    check_values,
    get_matrix,
    matrix_name,
    value_scale,
)
from ..module import AnnotationModule
from ._pretrained import load_pretrained_weights
from ._query import RowOutputs, aligned_matrix, iter_rows
from ._task import Task, backbone_kwargs, graph_tensors
from ._training import ClassificationTrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


class AnnotationTask(Task):
    """Cell-type annotation (``setup_anndata(adata, labels_key=...)``)."""

    name = "annotation"
    categorical_field = ("labels_key", REGISTRY_KEYS.LABELS_KEY)
    wrong_method_hint = (
        "this model classifies cells; predict_perturbation needs a model set up with "
        "GenoHoptionModel.setup_anndata(adata, perturbation_key='condition')."
    )

    # ---------------------------------------------------------------- set-up
    @classmethod
    def setup_fields(cls, adata: AnnData, *, transfer: bool, layer: str | None = None,
                     labels_key: str = "cell_type", graph_key: str | None = K.GRAPH_KEY, **_) -> list:
        """Validate and return the fields: expression (``layer``) and cell types (``labels_key``)."""
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), matrix_name(layer))
        check_labels(adata, labels_key, min_classes=1 if transfer else 2)
        if graph_key is not None and not transfer:
            check_graph(adata, graph_key)
        return [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]

    # ---------------------------------------------------------------- model
    @property
    def labels(self) -> np.ndarray:
        """Cell types the classifier predicts, in logit order."""
        state = self.model.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]
        return np.asarray(state["categorical_mapping"])

    def build_module(self, adata, graph, params: dict[str, Any], checkpoint=None, genes=None) -> AnnotationModule:
        """:class:`~genohoption.module.AnnotationModule`, with pretrained weights when given."""
        config = params.get("backbone_config")
        n_labels = self.model.summary_stats.n_labels
        if checkpoint is not None:  # scGPT's classifier is reused as is when it fits; a new head normalises
            head = checkpoint.state_dict.get("cls_decoder.out_layer.weight")
            reuse_head = head is not None and head.shape[0] == n_labels
            config["cls_input_norm"] = None if reuse_head else "batch"
            # official checkpoints: their classifier layers read the CLS embedding; a backbone pretrained here
            # gets the head of a model trained here
            own = checkpoint.config.get("format") == "genohoption"
            config["cell_emb"] = "cls+expr" if own and not reuse_head else "cls"
        n_genes = self.model.summary_stats.n_vars
        indptr, indices = graph_tensors(graph, n_genes)
        module = AnnotationModule(
            n_genes=n_genes,
            n_labels=n_labels,
            graph_indptr=indptr,
            graph_indices=indices,
            max_seq_len=params["max_seq_len"],
            n_cls_layers=(config or {}).get("n_cls_layers", params["n_cls_layers"]),
            cls_input_norm=(config or {}).get("cls_input_norm", params["cls_input_norm"]),
            backbone=params["backbone"],
            backbone_config=config,
            cell_emb=params.get("cell_emb") or (config or {}).get("cell_emb", "cls+expr"),
            gene_tokens=params.get("gene_tokens", "expressed"),
            **backbone_kwargs(params),
        )
        self.model.pretrained_report_ = (
            load_pretrained_weights(module, checkpoint, genes) if checkpoint is not None else None
        )
        if params["backbone"] == "geneformer" and adata is not None:
            sample = get_matrix(adata, self.model.registry_["setup_args"]["layer"])[:200]
            sample = sample.data if sp.issparse(sample) else np.asarray(sample)
            if sample.size and not np.allclose(sample, np.round(sample)):
                warnings.warn(
                    "backbone='geneformer' ranks genes by normalised raw counts, but the registered matrix is "
                    "not integer: register a counts layer with setup_anndata(adata, layer='counts').",
                    UserWarning,
                    stacklevel=4,
                )
        return module

    def training_plan(self, **plan_kwargs) -> ClassificationTrainingPlan:
        """Cross-entropy plan with accuracy and macro F1.

        ``class_weight="balanced"`` (the default) weighs each cell type by
        ``n_cells / (n_types * n_cells_of_type)`` over the registered cells (scikit-learn's "balanced"), so
        that rare types count; ``class_weight=None`` weighs all cells equally.
        """
        n_labels = self.model.summary_stats.n_labels
        plan_kwargs.setdefault("class_weight", "balanced")
        if isinstance(plan_kwargs.get("class_weight"), str):
            if plan_kwargs["class_weight"] != "balanced":
                raise ValueError(f"class_weight={plan_kwargs['class_weight']!r}: use 'balanced', weights or None.")
            codes = np.asarray(self.model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
            counts = np.bincount(codes.astype(np.int64), minlength=n_labels).astype(np.float64)
            plan_kwargs["class_weight"] = torch.as_tensor(
                np.where(counts > 0, counts.sum() / (n_labels * np.maximum(counts, 1)), 0.0), dtype=torch.float32)
        return ClassificationTrainingPlan(self.model.module, n_classes=n_labels, **plan_kwargs)

    def summary(self) -> str:
        """Backbone, attention and sizes."""
        p = self.model.params
        config = p.get("backbone_config") or {}
        source = f", pretrained={config['source']}" if "source" in config else ""
        return (
            f"GenoHoptionModel (annotation): backbone={p['backbone']}{source}, attention={p['attention']}, "
            f"n_hops={p['n_hops']}, alpha={p['alpha']}, t={p['t']}, d_model={self.model.module.backbone.d_model}, "
            f"genes={self.model.summary_stats.n_vars}, cell types={self.model.summary_stats.n_labels}, "
            f"graph edges={self.model.module.n_edges}"
        )

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def _forward(self, adata: AnnData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and class probabilities of ``adata``'s cells (an AnnData already checked by ``_query``).

        Raises
        ------
        ValueError
            For a query without cells or genes in common, bad values, or outputs that are not finite
            (naming the damaged weights when there are).
        """
        model = self.model
        if adata.n_obs == 0:
            raise ValueError("The query has no cells (n_obs = 0); pass at least one cell (check the filter that "
                             "selected them).")
        layer = model.registry_["setup_args"]["layer"]
        X = aligned_matrix(adata, model.var_names, layer)  # on disk (backed): read below, a minibatch at a time
        check_value_scale(getattr(model, "value_scale_", None), value_scale(X), "The query", stacklevel=4)
        model.module.eval()
        rows = RowOutputs(X.shape[0])  # filled in place: memory flat in the number of cells
        for x in iter_rows(X, batch_size, model.device, matrix_name(layer)):
            out = model.module(x)
            z, p = out["z"].float(), torch.softmax(out["logits"].float(), -1)
            if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(p).all())):
                raise _not_finite(model.module)
            rows.add(z, p)
        return rows.arrays

    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 128) -> np.ndarray:
        """Cell embeddings ``(n_obs, d_latent)`` (see :meth:`GenoHoptionModel.get_latent_representation`)."""
        return self._forward(self.model._query(adata), batch_size)[0]

    def predict(self, adata: AnnData | None = None, *, batch_size: int = 128,
                key_added: str = K.PREDICTION_KEY) -> pd.Series:
        """Predict cell types and write them (see :meth:`GenoHoptionModel.predict`)."""
        check_key(key_added)
        adata = self.model._query(adata)
        uns = adata.uns.get(K.UNS_KEY, {})
        if not isinstance(uns, dict):
            raise TypeError(
                f"adata.uns[{K.UNS_KEY!r}] is a {type(uns).__name__}, not a dict; rename or delete it before predicting."
            )
        _, probs = self._forward(adata, batch_size)
        labels = self.labels
        pred = pd.Categorical(labels[probs.argmax(1)], categories=labels)
        series = pd.Series(pred, index=adata.obs_names, name=key_added)
        confidence_key = confidence_key_for(key_added)
        columns = probability_columns(labels)
        record = {
            "key_added": key_added,
            "confidence_key": confidence_key,
            "probabilities_key": K.PROBABILITIES_KEY,
            "classes": [str(c) for c in labels],
            "attention": self.model.params["attention"],
            "n_genes_matched": int(adata.var_names.astype(str).isin(self.model.var_names).sum()),
        }
        if adata.is_view:  # as scanpy does: the view becomes an AnnData of its own (its parent is not written)
            warnings.warn(
                "predict received a view of an AnnData: it is made an AnnData of its own before the results are "
                "written (its parent is unchanged); pass adata.copy() to avoid this warning.",
                UserWarning,
                stacklevel=3,
            )
            adata._init_as_actual(adata.copy())
        # everything is computed: write
        adata.obs[key_added] = series
        adata.obs[confidence_key] = probs.max(1)
        adata.obsm[K.PROBABILITIES_KEY] = pd.DataFrame(probs, index=adata.obs_names, columns=columns)
        adata.uns.setdefault(K.UNS_KEY, {})[K.UNS_PREDICT] = record
        logger.info("wrote adata.obs[%r], adata.obs[%r], adata.obsm[%r]", key_added, confidence_key,
                    K.PROBABILITIES_KEY)
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
    if key_added == K.PREDICTION_KEY:
        return K.CONFIDENCE_KEY
    return key_added.removesuffix("prediction") + "confidence" if key_added.endswith("prediction") else (
        f"{key_added}_confidence")


__all__ = ["PROBABILITY_COLUMN_SLASH", "AnnotationTask", "confidence_key_for", "probability_columns"]
