"""GenoHoptionModel: the user-facing model (scvi-tools conventions)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.utils import setup_anndata_dsp

from .. import _constants as K
from ..module import AnnotationModule
from ._callbacks import PreciseBatchNorm
from ._io import load_model_files, save_model_files
from ._perturbation import PerturbationMixin
from ._pretrained import load_pretrained_weights, map_genes, read_pretrained
from ._validate import check_graph, check_labels, check_unique_var_names, check_values, get_matrix

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

Attention = Literal["ppr", "heat", "mask", "dense"]


class GenoHoptionModel(PerturbationMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Single-cell transformer whose attention runs on a gene graph, widened by graph diffusion.

    GenoHoption (Cheng et al., "Bridging Gene Network Graphs and Single-Cell Foundation Models"):
    each cell is a sequence of its expressed genes plus a CLS token; self-attention is restricted to
    the edges of the gene graph induced on the cell's genes (Seq2Graph, eq. 4) and widened by ``n_hops``
    steps of personalized-PageRank (eqs. 6, 8) or heat-kernel (eqs. 7, 10) diffusion over the
    attention matrix. The backbone is scGPT-style (gene embedding + value encoder, post-LN layers,
    classifier on the CLS embedding), trained from scratch.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, ``(n_obs, n_vars)``.
    backbone
        ``"scgpt"`` (gene embedding + value encoder, CLS embedding) or ``"geneformer"`` (BERT on
        rank-value encoded genes, mean-pooled embedding; expects raw counts).
    attention
        ``"ppr"`` (GenoHoption-p), ``"heat"`` (GenoHoption-h), ``"mask"`` (one hop of masked attention,
        the paper's "w/o iter" ablation) or ``"dense"`` (ordinary full attention, the baseline).
    n_hops
        Diffusion steps ``K`` (default 6).
    alpha
        PPR teleport probability ``α`` (default 0.25).
    t
        Heat-kernel diffusion time (default 5.0).
    normalize_heat
        Rescale the truncated heat-kernel weights ``e^{-t} Σ_{k≤K} t^k/k!`` to sum to 1.
    d_model, n_heads, n_layers, d_hid
        Width, attention heads, layers and feed-forward width of the backbone. The defaults are a
        small model that trains on 2 CPU cores in minutes.
    dropout
        Dropout probability (default 0: with a model trained from scratch on a few hundred cells,
        dropout's noise on the shared CLS embedding drowned the ~1% differences between cells and
        slowed learning; scGPT fine-tunes pretrained weights with 0.2).
    max_seq_len
        Maximum tokens per cell, CLS included; cells with more expressed genes keep a random subset
        during training and their most expressed genes at inference.
    n_cls_layers
        Layers of the classifier head.
    loss
        Perturbation models only: ``"mse"`` (scGPT, default) or ``"gears"`` (GEARS autofocus +
        direction loss); see :class:`~genohoption.module.PerturbationModule`.
    pretrained
        Directory of an official checkpoint of ``backbone`` (scGPT: ``best_model.pt``, ``args.json``,
        ``vocab.json``; Geneformer: Hugging Face BERT directory with its token and gene-median
        dictionaries), read safely by :func:`genohoption.model.read_pretrained`. Every pretrained weight
        is reused, only the attention pattern changes; the architecture sizes (``d_model``, ``n_heads``,
        ``n_layers``, ``d_hid``, ``n_cls_layers``) come from the checkpoint and the arguments are
        ignored. What was loaded is in :attr:`pretrained_report_`. scGPT's classifier
        (``cls_decoder``) is reused when it has one output per cell type; otherwise a new head is
        trained, with its input standardised (see :class:`~genohoption.nn.ClsDecoder`).
    gene_symbols
        Column of ``adata.var`` with the gene identifiers to match against the pretrained vocabulary
        (scGPT: symbols; Geneformer: Ensembl ids, or symbols translated with ``gene_name_id_dict.pkl``);
        default ``var_names``. Unmatched genes are dropped from the token sequences.
    backbone_config
        Architecture of a pretrained backbone; set by ``pretrained`` and restored by :meth:`load`, not
        meant to be given by hand.

    Attributes
    ----------
    pretrained_report_
        :class:`~genohoption.model.PretrainedReport` (matched / missing / unexpected keys, shape
        mismatches, genes matched) when ``pretrained`` was given, else ``None``.

    Raises
    ------
    ValueError
        For an unknown ``backbone`` / ``attention``, ``max_seq_len < 2`` or non-positive sizes, or when
        no gene matches the pretrained vocabulary.
    FileNotFoundError
        If a file of the ``pretrained`` checkpoint is missing.
    genohoption.model.CheckpointError
        If the checkpoint does not fit (missing keys, wrong shapes), naming the keys.
    genohoption._safe_pickle.UnsafePickleError
        If a checkpoint file carries code (it is not executed).

    Examples
    --------
    >>> import genohoption as gh
    >>> gh.pp.build_gene_graph(adata)
    >>> gh.GenoHoptionModel.setup_anndata(adata, labels_key="cell_type")
    >>> model = gh.GenoHoptionModel(adata, attention="ppr")
    >>> model.train(max_epochs=10)
    >>> model.predict(query)  # query.obs["genohoption_prediction"]
    """

    _module_cls = AnnotationModule

    def __init__(
        self,
        adata: AnnData | None = None,
        *,
        backbone: Literal["scgpt", "geneformer"] = "scgpt",
        attention: Attention = "ppr",
        n_hops: int = 6,
        alpha: float = 0.25,
        t: float = 5.0,
        normalize_heat: bool = False,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_hid: int = 128,
        dropout: float = 0.0,
        max_seq_len: int = 512,
        n_cls_layers: int = 3,
        pretrained: str | os.PathLike | None = None,
        gene_symbols: str | None = None,
        backbone_config: dict | None = None,
        loss: Literal["mse", "gears"] = "mse",
        registry: dict | None = None,
    ):
        if backbone not in ("scgpt", "geneformer"):
            raise ValueError(f"backbone={backbone!r} is not available; use 'scgpt' or 'geneformer'.")
        if attention not in K.ATTENTIONS:
            raise ValueError(f"attention={attention!r} is unknown; choose one of {K.ATTENTIONS}.")
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2 (CLS plus one gene), got {max_seq_len}.")
        if min(d_model, n_heads, n_layers, d_hid, n_hops) < 1 or d_model % n_heads:
            raise ValueError("d_model, n_heads, n_layers, d_hid and n_hops must be positive, "
                             f"and n_heads must divide d_model (got d_model={d_model}, n_heads={n_heads}).")
        checkpoint = genes = None
        if pretrained is not None:
            if adata is None:
                raise ValueError("pretrained= needs adata: its genes are mapped to the checkpoint's vocabulary.")
            checkpoint = read_pretrained(pretrained, backbone)
            if gene_symbols is not None and gene_symbols not in adata.var:
                raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of adata.var.")
            ids = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
            genes = map_genes(ids, checkpoint, source=f"adata.var[{gene_symbols!r}]" if gene_symbols else "var_names")
            backbone_config = {**checkpoint.backbone_config, "n_genes_matched": genes.n_matched}
        super().__init__(adata, registry=registry)
        self.init_params_ = self._get_init_params(locals())
        self.init_params_["non_kwargs"].pop("registry", None)
        self.init_params_["kwargs"].pop("registry", None)
        self.init_params_["non_kwargs"]["pretrained"] = None  # the architecture travels in backbone_config
        if checkpoint is not None:  # scGPT's classifier is reused as is when it fits; a new head standardises
            head = checkpoint.state_dict.get("cls_decoder.out_layer.weight")
            backbone_config["cls_input_norm"] = head is None or head.shape[0] != self.summary_stats.n_labels
        if adata is not None:
            graph_key = self.registry_["setup_args"]["graph_key"]
            graph = (
                check_graph(adata, graph_key) if graph_key is not None else sp.csr_matrix((adata.n_vars,) * 2)
            )
            indptr, indices = torch.from_numpy(graph.indptr), torch.from_numpy(graph.indices)
        else:  # filled by load()
            indptr, indices = torch.zeros(self.summary_stats.n_vars + 1, dtype=torch.int64), torch.zeros(0)
        if self.is_perturbation_model:  # set up with perturbation_key: PerturbationModule (model/_perturbation.py)
            params = {**self.init_params_["non_kwargs"], **self.init_params_["kwargs"], "pretrained": pretrained}
            self._init_perturbation(adata, indptr, indices, params)
            return
        self.module = self._module_cls(
            n_genes=self.summary_stats.n_vars,
            n_labels=self.summary_stats.n_labels,
            graph_indptr=indptr,
            graph_indices=indices,
            max_seq_len=max_seq_len,
            n_cls_layers=(backbone_config or {}).get("n_cls_layers", n_cls_layers),
            cls_input_norm=(backbone_config or {}).get("cls_input_norm", backbone_config is None),
            backbone=backbone,
            backbone_config=backbone_config,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=n_layers,
            d_hid=d_hid,
            dropout=dropout,
            attention=attention,
            n_hops=n_hops,
            alpha=alpha,
            t=t,
            normalize=normalize_heat,
        )
        self.pretrained_report_ = None
        if checkpoint is not None:
            self.pretrained_report_ = load_pretrained_weights(self.module, checkpoint, genes)
        if backbone == "geneformer" and adata is not None:
            sample = get_matrix(adata, self.registry_["setup_args"]["layer"])[:200]
            sample = sample.data if sp.issparse(sample) else np.asarray(sample)
            if sample.size and not np.allclose(sample, np.round(sample)):
                warnings.warn(
                    "backbone='geneformer' ranks genes by normalised raw counts, but the registered matrix is "
                    "not integer: register a counts layer with setup_anndata(adata, layer='counts').",
                    UserWarning,
                    stacklevel=2,
                )
        source = f", pretrained={backbone_config['source']}" if backbone_config else ""
        self._model_summary_string = (
            f"GenoHoptionModel: backbone={backbone}{source}, attention={attention}, n_hops={n_hops}, "
            f"alpha={alpha}, t={t}, d_model={self.module.backbone.d_model}, "
            f"genes={self.summary_stats.n_vars}, cell types={self.summary_stats.n_labels}, "
            f"graph edges={int(indices.numel())}"
        )

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        labels_key: str = "cell_type",
        graph_key: str | None = K.GRAPH_KEY,
        perturbation_key: str | None = None,
        control_value: str = "ctrl",
        gene_symbols: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData for training (scvi-tools ``setup_anndata``).

        Everything is checked before anything is registered, so a failing call leaves ``adata``
        unchanged. On success scvi-tools records the registry in ``adata.uns["_scvi_uuid"]`` and
        ``adata.uns["_scvi_manager_uuid"]``.

        Parameters
        ----------
        adata
            Reference data, ``(n_obs, n_vars)``: counts or log-normalised expression, non-negative.
        layer
            Layer with the expression; ``None`` uses ``adata.X``.
        labels_key
            Column of ``adata.obs`` with the cell types to learn.
        graph_key
            Key of ``adata.varp`` with the gene graph (written by :func:`genohoption.pp.build_gene_graph`);
            ``None`` only for ``attention="dense"``.
        perturbation_key
            Column of ``adata.obs`` with GEARS perturbation conditions (``"ctrl"``, ``"A+ctrl"``,
            ``"ctrl+A"``, ``"A+B"``; Roohani et al. 2023). When given, the model predicts perturbed
            expression (:meth:`predict_perturbation`) and ``labels_key`` is not used. Training pairs each
            cell (the target) with a random control cell (the input), drawn anew for every minibatch
            (:class:`~genohoption.data.PerturbationDataSplitter`). Perturbed genes must be among the
            measured genes.
        control_value
            The control condition in ``perturbation_key``.
        gene_symbols
            Column of ``adata.var`` with the gene symbols the conditions use (GEARS files: ``"gene_name"``;
            ``var_names`` are Ensembl ids there); ``None`` matches conditions against ``var_names``.

        Raises
        ------
        KeyError
            If ``labels_key``, ``graph_key``, ``layer``, ``perturbation_key`` or ``gene_symbols`` is
            missing, or a perturbed gene is not measured.
        ValueError
            For duplicated ``var_names``, NaN / inf / negative expression, missing labels, fewer than two
            cell types, an empty graph, malformed conditions or no control cell.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if perturbation_key is not None:  # perturbation model (model/_perturbation.py)
            cls._setup_perturbation(adata, layer=layer, perturbation_key=perturbation_key, control_value=control_value,
                                    gene_symbols=gene_symbols, graph_key=graph_key,
                                    setup_method_args=setup_method_args, **kwargs)
            return
        check_unique_var_names(adata)
        check_values(get_matrix(adata, layer), f"adata.layers[{layer!r}]" if layer else "adata.X")
        check_labels(adata, labels_key)
        if graph_key is not None:
            check_graph(adata, graph_key)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 10,
        *,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        train_size: float = 0.9,
        early_stopping: bool = True,
        early_stopping_patience: int = 3,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train with scvi-tools' :class:`~scvi.train.TrainRunner` and Lightning.

        A random ``1 - train_size`` of the cells is held out for validation; training stops early when
        ``validation_loss`` (cross-entropy) stops improving. Losses and accuracies per epoch are in
        :attr:`history_` (``train_loss``, ``validation_loss``, ``accuracy_train``,
        ``accuracy_validation``). The statistics of the classifier's input BatchNorm are re-estimated with
        the current weights before every validation and at the end (:class:`~genohoption.model.PreciseBatchNorm`;
        the moving averages lag a model trained from scratch and made its predictions erratic).

        Parameters
        ----------
        max_epochs
            Maximum passes through the training cells.
        batch_size
            Cells per minibatch.
        lr, weight_decay
            AdamW learning rate and weight decay.
        train_size
            Fraction of cells used for training, the rest validates.
        early_stopping, early_stopping_patience
            Stop when the validation loss has not improved for this many epochs.
        accelerator, devices
            Lightning accelerator and devices (``strategy=`` and other Trainer arguments go in
            ``trainer_kwargs``).
        plan_kwargs
            Extra arguments of :class:`scvi.train.TrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (Lightning).
        """
        plan = {"lr": lr, "weight_decay": weight_decay, "optimizer": "AdamW", **(plan_kwargs or {})}
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, PreciseBatchNorm) for c in callbacks):
            callbacks.append(PreciseBatchNorm())
        trainer_kwargs["callbacks"] = callbacks
        if train_size < 1:  # no validation loader otherwise
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        return super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            batch_size=batch_size,
            early_stopping=early_stopping and train_size < 1,
            plan_kwargs=plan,
            **trainer_kwargs,
        )

    # ------------------------------------------------------------------ inference
    @property
    def var_names(self) -> pd.Index:
        """Genes the model was trained on, in model order."""
        names = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
        return pd.Index(np.asarray(names, dtype=str))

    @property
    def labels(self) -> np.ndarray:
        """Cell types the classifier predicts, in logit order."""
        state = self.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]
        return np.asarray(state["categorical_mapping"])

    def _aligned_matrix(self, adata: AnnData, layer: str | None):
        """Expression of ``adata`` in the model's gene order; genes missing from ``adata`` are zero."""
        check_unique_var_names(adata)
        X = get_matrix(adata, layer)
        check_values(X, f"adata.layers[{layer!r}]" if layer else "adata.X")
        ref = self.var_names
        if adata.var_names.equals(ref):
            return X
        pos = adata.var_names.get_indexer(ref)
        present = np.flatnonzero(pos >= 0)
        if present.size == 0:
            raise ValueError(
                "The query has no gene in common with the genes the model was trained on "
                f"(e.g. {ref[:3].tolist()} vs {adata.var_names[:3].tolist()}); check that both use the same "
                "identifiers (symbols or Ensembl ids)."
            )
        if present.size < 0.5 * ref.size:
            warnings.warn(
                f"Only {present.size} of the model's {ref.size} genes are in the query; the rest are "
                "treated as not expressed.",
                UserWarning,
                stacklevel=3,
            )
        # reorder query columns into model order with a selection matrix: no dense copy
        select = sp.csr_matrix(
            (np.ones(present.size, np.float32), (np.arange(present.size), present)),
            shape=(present.size, ref.size),
        )
        return sp.csr_matrix(X)[:, pos[present]] @ select

    def _batches(self, adata: AnnData | None, batch_size: int) -> Iterator[torch.Tensor]:
        adata = self._check_query(adata)
        X = self._aligned_matrix(adata, self.registry_["setup_args"]["layer"])
        for start in range(0, X.shape[0], batch_size):
            rows = X[start : start + batch_size]
            rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
            yield torch.as_tensor(rows, dtype=torch.float32, device=self.device)

    def _check_query(self, adata: AnnData | None) -> AnnData:
        if adata is None:
            if self.adata is None:
                raise ValueError("Pass the AnnData to predict on: model.predict(adata).")
            return self.adata
        return adata

    @torch.inference_mode()
    def _forward(self, adata: AnnData | None, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if self.is_perturbation_model:
            raise TypeError(
                "This is a perturbation model (set up with perturbation_key=): use "
                "model.predict_perturbation(ctrl_adata, 'A+B') instead of predict / get_latent_representation."
            )
        self.module.eval()
        latents, probs = [], []
        for x in self._batches(adata, batch_size):
            out = self.module.inference(x)
            latents.append(out["z"].float().cpu().numpy())
            probs.append(torch.softmax(out["logits"].float(), -1).cpu().numpy())
        return np.concatenate(latents), np.concatenate(probs)

    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 128) -> np.ndarray:
        """Cell embeddings: the CLS token's output of the last layer.

        Parameters
        ----------
        adata
            Cells to embed (genes aligned to the model by name); defaults to the training data.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_obs, d_model)`` float32 array; store it as ``adata.obsm["X_genohoption"]`` and use it with
        ``sc.pp.neighbors(adata, use_rep="X_genohoption")``.
        """
        return self._forward(adata, batch_size)[0]

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        batch_size: int = 128,
        key_added: str = K.PREDICTION_KEY,
    ) -> pd.Series:
        """Predict cell types and write them to ``adata.obs``.

        Genes are matched to the model's genes by name: a query with reordered genes or a subset of
        them is aligned (missing genes count as not expressed).

        Parameters
        ----------
        adata
            Query cells, ``(n_obs, n_vars)``, same kind of values (layer) as the reference; defaults to
            the training data.
        batch_size
            Cells per forward pass.
        key_added
            Column of ``adata.obs`` for the predicted cell type.

        Returns
        -------
        Predicted cell types, categorical, indexed by ``adata.obs_names``. Also writes

        - ``adata.obs[key_added]``: predicted cell type (categorical);
        - ``adata.obs[f"{key_added[:-len('prediction')]}confidence"]`` (``genohoption_confidence`` by
          default): probability of the predicted type, in [0, 1];
        - ``adata.obsm["genohoption_probabilities"]``: ``(n_obs, n_classes)`` DataFrame of class
          probabilities;
        - ``adata.uns["genohoption"]["predict"]``: the parameters of this call.

        Raises
        ------
        ValueError
            If the query shares no gene with the model or holds NaN / negative values.
        KeyError
            If the model's layer is missing from the query.
        """
        adata = self._check_query(adata)
        _, probs = self._forward(adata, batch_size)
        labels = self.labels
        pred = pd.Categorical(labels[probs.argmax(1)], categories=labels)
        series = pd.Series(pred, index=adata.obs_names, name=key_added)
        confidence_key = (
            key_added.removesuffix("prediction") + "confidence"
            if key_added.endswith("prediction") else f"{key_added}_confidence"
        )
        adata.obs[key_added] = series
        adata.obs[confidence_key] = probs.max(1)
        adata.obsm[K.PROBABILITIES_KEY] = pd.DataFrame(probs, index=adata.obs_names, columns=labels.astype(str))
        adata.uns.setdefault(K.UNS_KEY, {})["predict"] = {
            "key_added": key_added,
            "confidence_key": confidence_key,
            "attention": {**self.init_params_["non_kwargs"], **self.init_params_["kwargs"]}.get("attention"),
            "n_genes_matched": int(adata.var_names.isin(self.var_names).sum()),
        }
        logger.info("wrote adata.obs[%r], adata.obs[%r], adata.obsm[%r]", key_added, confidence_key,
                    K.PROBABILITIES_KEY)
        return series

    # ------------------------------------------------------------------ save / load
    def save(self, dir_path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save weights (``model.safetensors``) and settings (``model.json``); no pickle.

        Parameters
        ----------
        dir_path
            Directory to write; created if needed.
        overwrite
            Replace a model already saved there.

        Raises
        ------
        FileExistsError
            If a model is already saved in ``dir_path`` and ``overwrite`` is false.
        """
        meta = {"class": type(self).__name__, "init_params": self.init_params_, "registry": self.registry_,
                "history": None}
        save_model_files(dir_path, self.module.state_dict(), meta, overwrite=overwrite)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: AnnData | None = None, *, accelerator: str = "cpu"
             ) -> GenoHoptionModel:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        dir_path
            Directory holding ``model.safetensors`` and ``model.json``.
        adata
            Optional data to attach as the model's default for :meth:`predict`. Its genes may be in
            another order or a subset: predictions align them by name. If it carries the training
            ``labels_key`` and the training genes in the same order, it is registered so that
            :meth:`train` can go on.
        accelerator
            ``"cpu"``, or ``"cuda"`` / ``"gpu"`` to move the model to the GPU.

        Returns
        -------
        The model, in evaluation mode.

        Raises
        ------
        FileNotFoundError
            If the files are missing.
        ValueError
            If the files were not written by this class.
        """
        state, meta = load_model_files(dir_path)
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{dir_path} holds a {meta.get('class')!r}, not a {cls.__name__}.")
        kwargs = {**meta["init_params"]["non_kwargs"], **meta["init_params"]["kwargs"]}
        model = cls(None, registry=meta["registry"], **kwargs)
        model.module.graph_indices = state["graph_indices"].clone()
        model.module.graph_indptr = state["graph_indptr"].clone()
        model.module.load_state_dict(state, strict=True)
        model.module.eval()
        model.is_trained_ = True
        if adata is not None:
            setup = meta["registry"]["setup_args"]
            trainable = (
                (setup.get("perturbation_key") or setup["labels_key"]) in adata.obs
                and adata.var_names.equals(model.var_names)
                and (setup["graph_key"] is None or setup["graph_key"] in adata.varp)
            )
            if trainable:
                cls.setup_anndata(adata, **setup)
                model._adata_manager = model._get_most_recent_anndata_manager(adata, required=True)
                model._register_manager_for_instance(model._adata_manager)
            model._adata = adata
        if accelerator in ("cuda", "gpu") and torch.cuda.is_available():
            model.to_device("cuda")
        return model
