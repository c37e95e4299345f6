"""GenoHoptionModel: the user-facing model (scvi-tools conventions)."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import rich
import rich.console
import rich.pretty  # scvi-tools' printing of setup arguments uses it without importing it
import scvi
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass

from .. import _constants as K
from .._validate import as_anndata, check_csr_structure, check_graph, value_scale
from ..module._annotation import CELL_EMBEDDINGS, GENE_TOKENS
from ..module._inputs import resolve_conventions
from ..nn._heads import INPUT_NORMS
from ._annotation import AnnotationTask, calibrated_settings, calibration_labels, check_false_unknown_rate
from ._backed import GenoHoptionDataManager
from ._batch import check_batch_params, n_batches, resolve_batches
from ._distributed import is_global_zero
from ._fit import fit
from ._io import file_paths, load_meta, load_model_files, save_model_files
from ._network import check_network_model, gene_network
from ._perturbation import PerturbationTask
from ._pretrained import map_genes, read_pretrained
from ._pretraining import PretrainingTask, pretraining_run
from ._query import Query, resolve_query
from ._task import Task

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

Attention = Literal["ppr", "heat", "mask", "dense"]


def task_class(setup_args: dict) -> type[Task]:
    """Return the task chosen by the arguments of ``setup_anndata``.

    ``perturbation_key`` given: perturbation; else ``labels_key`` given: annotation; else pretraining.
    """
    if setup_args.get("perturbation_key"):
        return PerturbationTask
    return AnnotationTask if setup_args.get("labels_key") is not None else PretrainingTask


class GenoHoptionModel(BaseModelClass):
    """Single-cell transformer whose attention runs on a gene graph, widened by graph diffusion.

    GenoHoption (Cheng et al., "Bridging Gene Network Graphs and Single-Cell Foundation Models"):
    each cell is a sequence of its expressed genes plus a CLS token; self-attention is restricted to
    the edges of the gene graph induced on the cell's genes (Seq2Graph, eq. 4) and widened by ``n_hops``
    steps of personalized-PageRank (eqs. 6, 8) or heat-kernel (eqs. 7, 10) diffusion over the
    attention matrix. The backbone is scGPT-style (gene embedding + value encoder, post-LN layers) or
    Geneformer-style, trained from scratch or loaded from an official checkpoint (``pretrained=``).

    The task is chosen by :meth:`setup_anndata`: cell-type annotation (``labels_key``; :meth:`predict`,
    :meth:`get_latent_representation`, :meth:`pretrain`), genetic perturbation prediction
    (``perturbation_key``; :meth:`predict_perturbation`), or self-supervised pretraining of a backbone
    (``labels_key=None``; :meth:`train` pretrains, :meth:`save` writes a backbone that ``pretrained=``
    reads).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, ``(n_obs, n_vars)`` (or a MuData whose ``"rna"``
        modality was registered).
    backbone
        ``"scgpt"`` (gene embedding + value encoder, CLS embedding) or ``"geneformer"`` (BERT on
        rank-value encoded genes; expects raw counts). Perturbation models use ``"scgpt"``: they read a
        value on every gene's token and predict one for every gene, while Geneformer's input is only the
        rank order of the genes a cell expresses (no value, no token for an unexpressed or unmeasured gene,
        positions tied to ranks); Geneformer's own in silico perturbation deletes or moves a gene's token
        and measures the shift of the embedding, it predicts no expression.
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
    d_model
        Width of the backbone (embedding and attention). The size defaults are a small model that
        trains on 2 CPU cores in minutes.
    n_heads
        Attention heads per layer; must divide ``d_model``.
    n_layers
        Transformer layers.
    d_hid
        Width of each layer's feed-forward block.
    dropout
        Dropout probability (default 0, for small models trained from scratch; scGPT fine-tunes
        pretrained weights with 0.2).
    max_seq_len
        Maximum tokens per cell, CLS included; ``None`` (default): every expressed gene of a cell is a
        token (whole cells; the sparse attention's cost grows with the graph's edges among them). With a
        cap, cells with more expressed genes keep a random subset during training and their most
        expressed genes at inference.
    gene_tokens
        Which genes of a cell are tokens (annotation models): ``"expressed"`` (default, the genes it
        expresses) or ``"all"`` (every gene of the panel, expressed or not, scGPT's
        ``include_zero_gene="all"``: the whole transcriptome is one sequence, and the graph diffusion
        also runs through the unexpressed genes; scGPT backbone only). Perturbation models always use
        every gene.
    n_cls_layers
        Layers of the classifier head.
    cls_input_norm
        Normalisation of the cell embedding before the classifier (:class:`~genohoption.nn.ClsDecoder`):
        ``"batch"`` (default; BatchNorm whose statistics :class:`~genohoption.model.PreciseBatchNorm`
        re-estimates during training; any minibatch size works), ``"layer"`` (per cell) or ``None``.
    cell_emb
        What the classifier reads and :meth:`get_latent_representation` returns: ``"cls+expr"``
        (the backbone's cell embedding concatenated with a learned linear projection of the expression
        vector, see :class:`~genohoption.module.AnnotationModule`) or ``"cls"`` (the cell embedding
        alone, as scGPT). Default ``None``: ``"cls"`` with an official scGPT / Geneformer checkpoint
        (whose classifier layers read the CLS embedding), else ``"cls+expr"``. The direct expression
        path lets a small model trained from scratch use what a linear classifier sees while the
        graph-diffusion layers add what it cannot.
    pretrained
        Directory of an official checkpoint of ``backbone`` (scGPT: ``best_model.pt``, ``args.json``,
        ``vocab.json``; Geneformer: Hugging Face BERT directory with its token and gene-median
        dictionaries), read safely by :func:`genohoption.model.read_pretrained`. Every pretrained weight
        is reused, only the attention pattern changes; the architecture sizes (``d_model``, ``n_heads``,
        ``n_layers``, ``d_hid``, ``n_cls_layers``) come from the checkpoint and the arguments are
        ignored. What was loaded is in :attr:`pretrained_report_`. scGPT's classifier
        (``cls_decoder``) is reused when it has one output per cell type; otherwise a new head is
        trained, with a normalised input.
    gene_symbols
        Column of ``adata.var`` with the gene identifiers to match against the pretrained vocabulary
        (scGPT: symbols; Geneformer: Ensembl ids, or symbols translated with ``gene_name_id_dict.pkl``);
        default ``var_names``. Unmatched genes are dropped from the token sequences.
    backbone_config
        Architecture of a pretrained backbone; set by ``pretrained`` and restored by :meth:`load`, not
        meant to be given by hand.
    conventions
        Annotation and pretraining models: how cells become tokens and how the cell embedding is read out,
        a dict of any of ``cls_value``, ``n_bins``, ``bin_ties``, ``sampling`` (scGPT backbone),
        ``emb_layer``, ``emb_mode``, ``emb_norm`` and ``seed`` (see :class:`~genohoption.module.Conventions`).
        Those not given take their defaults: with an official checkpoint, its original pipeline's (scGPT:
        ``<cls>`` value = ``pad_value``, ties binned at random, random gene subset above ``max_seq_len``,
        ``<cls>`` embedding L2-normalised; Geneformer: second-to-last layer, mean of the gene tokens for
        V1, ``<cls>`` for V2); from scratch (scGPT-style), ``<cls>`` value 0, the registered values unbinned,
        the most expressed genes above ``max_seq_len`` and the last layer's ``<cls>`` output, not normalised
        (Geneformer-style: the last layer's mean of the gene tokens); ``seed`` defaults to
        ``scvi.settings.seed`` (0 when unset). The complete set is saved with the
        model (``model.params["conventions"]``).
    loss
        Perturbation models only: ``"mse"`` (scGPT, default) or ``"gears"`` (GEARS autofocus +
        direction loss); see :class:`~genohoption.module.PerturbationModule`.
    batch_representation
        How the cells' batch enters a model whose data were set up with ``batch_key`` (annotation and
        pretraining; scGPT's integration, Cui et al. 2024); ignored without ``batch_key``:

        - ``"token"``: a learned batch embedding (:class:`~genohoption.nn.BatchEncoder`) that the decoders of
          masked-expression pretraining read beside the transformer outputs (concatenated, as scGPT's
          ``use_batch_labels``), so that the cell embedding need not carry the batch. The classifier of an
          annotation model does not read it: it acts through pretraining (a pretraining model's
          :meth:`train`, an annotation model's :meth:`pretrain`).
        - ``"dsbn"``: domain-specific batch normalisation (:class:`~genohoption.nn.DomainSpecificBatchNorm`):
          each batch's gene-token input embeddings are standardised with that batch's own statistics
          (scGPT backbone; scGPT's ``domain_spec_batchnorm``), and for annotation models with
          ``cls_input_norm="batch"`` also the cell embedding before the classifier (shared affine); that
          normalised embedding is what :meth:`get_latent_representation` returns.
        - ``"token+dsbn"`` (default, scGPT's integration set-up), or ``None`` (batch registered, not used).

        Cells of a batch not seen in training: with ``"dsbn"``, a new batch with at least
        ``MIN_CELLS_TO_ADAPT`` (10) cells in the query is normalised with its own statistics, estimated from
        those cells before they are run (AdaBN, Li et al. 2016), so its cells' outputs depend on the other
        cells of their batch in the query; a smaller one with the pooled statistics of the training batches.
        The batch embedding is used in training only (the unknown batch reads its zero padding row). The batch
        parts of a backbone saved by a pretraining model are not carried over by ``pretrained=``: the
        fine-tuned model learns its own.
    batch_adversarial
        Weight of an adversarial batch loss (default 0: none; scGPT's ``dab_weight`` is 1): a discriminator
        (:class:`~genohoption.nn.AdversarialDiscriminator`) predicts each training cell's batch from its cell
        embedding through a gradient-reversal layer, so the encoder learns embeddings from which the batch
        cannot be told (Ganin & Lempitsky 2015). Needs ``batch_key`` with at least two batches. The
        validation loss that early stopping reads leaves it out; it is logged as ``train_batch_loss``.
    residual
        Perturbation models only: predict on top of the target-gene baseline of the training data (the
        mean change of the training perturbations, the perturbed measured genes scaled by their mean
        knock-down ratio; :class:`~genohoption.tl.TargetGeneBaseline` with ``on="mean"``), so that the
        network learns what that baseline misses (default ``False``).

    Attributes
    ----------
    pretrained_report_
        :class:`~genohoption.model.PretrainedReport` (matched / missing / unexpected keys, shape
        mismatches, genes matched) when ``pretrained`` was given, else ``None``.
    value_scale_
        Scale of the registered expression values (``max``, ``mean_nonzero``, ``integer``: the
        largest value, the mean of the non-zero values and whether all are integers), saved with the model; :meth:`predict` and
        :meth:`get_latent_representation` warn when a query's values are clearly on another scale.
    history_
        Per-epoch training metrics (dict of DataFrames): ``train_loss``, ``validation_loss``, and for
        annotation ``train_accuracy``, ``validation_accuracy``, ``validation_macro_f1``; for
        perturbation ``train_mse``, ``validation_mse``.
    calibration_
        Annotation models: the record of :meth:`calibrate` (temperature, "Unknown" threshold, calibration
        errors), saved with the model; ``None`` until calibrated, and again after training.

    Raises
    ------
    ValueError
        For an unknown ``backbone`` / ``attention`` / ``batch_representation``, ``max_seq_len < 2`` or
        non-positive sizes, a sparse attention without a gene graph, when no gene matches the pretrained
        vocabulary, or for ``batch_adversarial`` without ``batch_key`` (or with a single batch).
    FileNotFoundError
        If a file of the ``pretrained`` checkpoint is missing.
    genohoption.model.CheckpointError
        If the checkpoint does not fit (missing keys, wrong shapes), naming the keys.
    pickle.UnpicklingError
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
        max_seq_len: int | None = None,
        gene_tokens: Literal["expressed", "all"] = "expressed",
        n_cls_layers: int = 3,
        cls_input_norm: Literal["batch", "layer"] | None = "batch",
        cell_emb: Literal["cls", "cls+expr"] | None = None,
        pretrained: str | os.PathLike | None = None,
        gene_symbols: str | None = None,
        backbone_config: dict | None = None,
        conventions: dict | None = None,
        loss: Literal["mse", "gears"] = "mse",
        batch_representation: Literal["token", "dsbn", "token+dsbn"] | None = "token+dsbn",
        batch_adversarial: float = 0.0,
        residual: bool = False,
        registry: dict | None = None,
    ):
        _check_init_args(backbone, attention, max_seq_len, d_model, n_heads, n_layers, d_hid, n_hops,
                         cls_input_norm)
        if cell_emb is not None and cell_emb not in CELL_EMBEDDINGS:
            raise ValueError(f"cell_emb={cell_emb!r} is unknown; choose one of {CELL_EMBEDDINGS}.")
        if gene_tokens not in GENE_TOKENS or (gene_tokens == "all" and backbone == "geneformer"):
            raise ValueError(f"gene_tokens={gene_tokens!r}: choose one of {GENE_TOKENS} "
                             "('all' with the scGPT backbone).")
        if adata is not None:
            adata = as_anndata(adata, allow_backed=True)  # registered by setup_anndata, which checked it
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
            pretrained = None  # the architecture (with the head chosen below) travels in backbone_config
        super().__init__(adata, registry=registry)
        check_batch_params({"batch_representation": batch_representation, "batch_adversarial": batch_adversarial},
                           self.registry_)
        task = task_class(self.registry_["setup_args"])
        backbone_config = task.backbone_config(backbone_config, checkpoint, self.registry_)
        conventions = resolve_conventions(backbone, backbone_config, conventions, seed=scvi.settings.seed)
        self.init_params_ = self._get_init_params(locals())  # read once, never changed afterwards
        self._task = task(self.registry_, self.params)
        graph = None
        if adata is not None:
            graph_key = self.registry_["setup_args"]["graph_key"]
            if graph_key is None and attention != "dense":
                raise ValueError(
                    f"attention={attention!r} runs on a gene graph, but setup_anndata was called with graph_key=None; "
                    "build one with gh.pp.build_gene_graph(adata) and set up again, or use attention='dense'."
                )
            graph = check_graph(adata, graph_key) if graph_key is not None else None
        built = self._task.build_module(adata, graph, checkpoint, genes)
        self.module = built.module
        self.pretrained_report_ = built.report
        self.pretrain_history_: dict | None = None
        self.calibration_: dict | None = None  # written by calibrate(), saved with the model
        # scale of the registered values (raw counts or log-normalised), compared with queries' at inference
        self.value_scale_ = (value_scale(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))
                             if adata is not None else None)
        self._model_summary_string = self._summary()

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        labels_key: str | None = "cell_type",
        graph_key: str | None = K.GRAPH_KEY,
        perturbation_key: str | None = None,
        control_value: str = "ctrl",
        gene_symbols: str | None = None,
        prior: pd.DataFrame | str | os.PathLike | Sequence | None = "default",
        extra_genes: Sequence[str] | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData for training and choose the task (scvi-tools ``setup_anndata``).

        Everything is checked before anything is registered, so a failing call leaves ``adata``
        unchanged. On success scvi-tools records the registry in ``adata.uns["_scvi_uuid"]`` and
        ``adata.uns["_scvi_manager_uuid"]`` and the label codes in ``adata.obs``.

        Parameters
        ----------
        adata
            Reference data, ``(n_obs, n_vars)``: counts or log-normalised expression, non-negative. A
            MuData stands for its ``"rna"`` modality. It may be backed (``anndata.read_h5ad(path,
            backed="r")``, CSR or dense ``X`` on disk; annotation and pretraining): nothing is loaded, the
            values and sparse structure are checked in chunks, and :meth:`train` reads minibatches from
            the file (``docs/scale.md``). The registry goes to the backed object's in-memory ``uns`` / ``obs``.
        layer
            Layer with the expression; ``None`` uses ``adata.X``.
        labels_key
            Column of ``adata.obs`` with the cell types to learn (annotation task). ``None`` (and no
            ``perturbation_key``): the data are for self-supervised pretraining (masked expression);
            ``model.train()`` then pretrains a backbone that ``GenoHoptionModel(..., pretrained=dir)``
            fine-tunes after ``model.save(dir)``.
        graph_key
            Key of ``adata.varp`` with the gene graph (written by :func:`genohoption.pp.build_gene_graph`);
            ``None`` only for ``attention="dense"``.
        perturbation_key
            Column of ``adata.obs`` with GEARS perturbation conditions (``"ctrl"``, ``"A+ctrl"``,
            ``"ctrl+A"``, ``"A+B"``; Roohani et al. 2023). When given, the task is perturbation
            prediction (:meth:`predict_perturbation`) and ``labels_key`` is not used. Training pairs each
            cell (the target) with a random control cell (the input), drawn anew for every minibatch.
            Perturbed genes may be any gene of the gene universe (measured genes, ``prior`` network
            genes, ``extra_genes``), measured or not.
        control_value
            The control condition in ``perturbation_key``.
        gene_symbols
            Column of ``adata.var`` with the gene symbols the conditions use (GEARS files: ``"gene_name"``;
            ``var_names`` are Ensembl ids there); ``None`` matches conditions against ``var_names``.
        prior
            Perturbation models: the regulatory network whose genes can be perturbed although not
            measured (as for :func:`genohoption.pp.build_gene_graph`: ``"default"``, the packaged OmniPath
            network, a DataFrame with ``source`` / ``target``, a file, a list of these, or ``None``). Its
            edges between unmeasured and measured genes carry an unmeasured gene's perturbation
            (:class:`~genohoption.module.PerturbationModule`); the model saves the genes and edges it
            used, not the table.
        extra_genes
            Perturbation models: more gene symbols that may be perturbed although neither measured nor
            in ``prior`` (e.g. every target of a screen); having no regulatory edge, each is joined to every
            measured gene.
        batch_key
            Column of ``adata.obs`` with each cell's batch (donor, sample, technology), for annotation and
            pretraining models: registered as scvi-tools' batch field (``REGISTRY_KEYS.BATCH_KEY``; its
            categories, in code order, are saved with the model) and entering the model as chosen by its
            ``batch_representation`` and ``batch_adversarial``. Queries given to :meth:`predict` and
            :meth:`get_latent_representation` then need this column too; batches not seen in training are
            allowed. ``None`` (default): cells are not told apart by batch.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields` (``source_registry`` when a saved
            model's registry is transferred by :meth:`load`).

        Raises
        ------
        TypeError
            If ``adata`` is not an AnnData / MuData.
        KeyError
            If ``labels_key``, ``graph_key``, ``layer``, ``perturbation_key``, ``gene_symbols`` or
            ``batch_key`` is missing, or a perturbed gene is not in the gene universe.
        ValueError
            For duplicated ``var_names``, NaN / inf / negative expression, missing labels or batches, fewer
            than two cell types, an invalid graph, malformed conditions or no control cell, ``batch_key`` with
            ``perturbation_key``; for a backed AnnData
            whose ``X`` is CSC, a view of a backed AnnData, or a backed AnnData with ``perturbation_key``
            (each message names the fix).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        adata = as_anndata(adata, allow_backed=True)
        setup_args = setup_method_args["setup_args"]
        task = task_class(setup_args)
        if batch_key is not None and not task.supports_batch:
            raise ValueError(f"batch_key applies to annotation and pretraining models, not to {task.name} models; "
                             "drop batch_key.")
        if adata.isbacked:
            task.check_backed(adata, layer)
        fields = task.setup_fields(adata, transfer="source_registry" in kwargs, **setup_args)
        if not isinstance(prior, str | os.PathLike | None):  # the registry keeps the universe, not the table
            setup_args["prior"] = f"{type(prior).__name__} (not saved)"
        manager = GenoHoptionDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    # ------------------------------------------------------------------ properties
    @property
    def params(self) -> dict[str, Any]:
        """The model's construction parameters (``init_params_`` flattened; a copy, changing it changes nothing)."""
        return copy.deepcopy({**self.init_params_["non_kwargs"], **self.init_params_["kwargs"]})

    @property
    def task(self) -> str:
        """``"annotation"`` or ``"perturbation"`` (chosen by :meth:`setup_anndata`)."""
        return self._task.name

    @property
    def var_names(self) -> pd.Index:
        """Genes the model was trained on, in model order (as strings)."""
        names = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
        return pd.Index(np.asarray(names, dtype=str))

    @property
    def labels(self) -> np.ndarray:
        """Cell types the classifier predicts, in logit order (annotation models).

        Raises
        ------
        TypeError
            For a model of another task.
        """
        if not isinstance(self._task, AnnotationTask):
            raise self._task._wrong("labels")
        return self._task.labels

    def _resolve(self, adata: AnnData | None, *, warn_untrained: bool = True) -> Query:
        """Check ``adata`` (default: the model's data) once and align its genes: what every task method gets.

        Raises
        ------
        ValueError
            If the model holds no data and none is given, or the query cannot be used (see
            :func:`~genohoption.model._query.resolve_query`).
        """
        if adata is None:
            if self.adata is None:
                raise ValueError("This model holds no data: pass the AnnData to use, e.g. model.predict(adata).")
            adata = self.adata
        query = resolve_query(adata, self.var_names, self.registry_["setup_args"]["layer"],
                              reference_scale=self.value_scale_, check_backed=self._task.check_backed)
        query = resolve_batches(query, self.registry_)  # each cell's batch code (models set up with batch_key)
        if warn_untrained and not self.is_trained_ and self.pretrained_report_ is None:
            warnings.warn(
                "The model has not been trained (its weights are random): call model.train() first.",
                UserWarning,
                stacklevel=3,
            )
        return query

    def _summary(self) -> str:
        """Return what ``repr(model)`` shows, one group of facts per line (scvi-tools adds the training status)."""
        p = self.params
        config = p.get("backbone_config") or {}
        source = f", pretrained from {config['source']}" if "source" in config else ""
        attention = {"ppr": f"ppr (n_hops={p['n_hops']}, alpha={p['alpha']})",
                     "heat": f"heat (n_hops={p['n_hops']}, t={p['t']}{', normalised' if p['normalize_heat'] else ''})",
                     }.get(p["attention"], p["attention"])
        bb = self.module.backbone
        stack = bb.transformer_encoder.layers if hasattr(bb, "transformer_encoder") else bb.encoder.layer
        sizes = f"d_model={bb.d_model}, layers={len(stack)}"
        facts = {"genes": self.summary_stats.n_vars, **self._task.describe(self.module),
                 "gene graph edges": self.module.n_edges}
        if n_batches(self.registry_):
            facts["batches"] = f"{n_batches(self.registry_)} ({p.get('batch_representation')}" + (
                f", adversarial {p['batch_adversarial']})" if p.get("batch_adversarial") else ")")
        return "\n".join([
            f"{type(self).__name__} ({self._task.name})",
            f"  backbone: {p['backbone']}{source}, {sizes}",
            f"  attention: {attention}",
            "  " + ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in facts.items()),
        ])

    def __repr__(self) -> str:
        return self.summary_string

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 10,
        *,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int = 3,
        restore_best_weights: bool = True,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train with scvi-tools' :class:`~scvi.train.TrainRunner` and Lightning.

        A random ``1 - train_size`` of the cells is held out for validation (split seeded by
        ``scvi.settings.seed``). Training stops early when ``validation_loss`` has not improved for
        ``early_stopping_patience`` epochs, and the weights of the best validation epoch are restored
        at the end. The statistics of the classifier's BatchNorm are re-estimated with the current
        weights before every validation and at the end (:class:`~genohoption.model.PreciseBatchNorm`).
        Per-epoch metrics are in :attr:`history_`. When the cells are too few to hold any out (e.g. 3 cells
        with ``train_size=0.9``), training runs on all of them without validation, with a warning.
        Registered data that are backed (on disk) are read a minibatch at a time, with the same weights
        as in memory for the same seed.

        Every epoch starts by seeding torch, NumPy and :mod:`random` from ``(scvi.settings.seed, epoch)``
        (:class:`~genohoption.model.EpochSeed`), so training interrupted and resumed from a checkpoint ends
        with the same weights as uninterrupted training: pass
        ``callbacks=[genohoption.model.TrainingCheckpoint(dir)]`` to write ``dir/last.ckpt`` after every
        epoch, and to resume, set up the same data with the same ``scvi.settings.seed``, create the model
        with the same arguments and call ``train`` with the same arguments plus
        ``ckpt_path=f"{dir}/last.ckpt"``. :attr:`history_` then holds the resumed epochs only.

        Parameters
        ----------
        max_epochs
            Maximum passes through the training cells.
        batch_size
            Cells per minibatch.
        lr, weight_decay
            AdamW learning rate and weight decay.
        train_size, validation_size
            Fractions of cells for training and validation (scvi-tools
            :class:`~scvi.dataloaders.DataSplitter`); ``train_size=1`` trains on every cell, with no
            validation, early stopping or restore.
        early_stopping, early_stopping_patience
            Stop when the validation loss has not improved for this many epochs.
        restore_best_weights
            End with the weights of the epoch with the lowest validation loss
            (:class:`~genohoption.model.RestoreBestWeights`).
        accelerator, devices
            Lightning accelerator and devices (``strategy=`` and other Trainer arguments go in
            ``trainer_kwargs``). Several processes: ``devices=N, strategy="ddp"`` (``accelerator="cpu"``
            trains with the gloo backend); each process then reads its shard of the cells (distributed
            sampler, ``batch_size`` cells per process and step), gradients and logged metrics are averaged
            over the processes, and only rank 0 writes with :meth:`save`. scvi-tools turns early stopping
            off under DDP; see ``docs/scale.md`` for several GPUs and nodes.
        datasplitter_kwargs
            Extra arguments of the data splitter.
        plan_kwargs
            Extra arguments of the training plan (:class:`~genohoption.model.ClassificationTrainingPlan`,
            :class:`~genohoption.model.RegressionTrainingPlan` or
            :class:`~genohoption.model.MaskedExpressionTrainingPlan`): ``optimizer``, ``lr_schedule``,
            ``warmup``, and for annotation ``class_weight`` (default ``"balanced"``; ``None`` for equal
            weights) and ``label_smoothing``.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (Lightning), e.g. ``enable_progress_bar``,
            ``callbacks``; ``ckpt_path`` (a checkpoint of :class:`~genohoption.model.TrainingCheckpoint`)
            resumes training from it.

        Raises
        ------
        ValueError
            If the model holds no registered data (loaded without trainable data), or for non-positive
            ``max_epochs`` / ``batch_size``, a ``train_size`` outside ``(0, 1]`` or a ``validation_size``
            outside ``[0, 1 - train_size]``.
        FileNotFoundError
            If ``ckpt_path`` is not a file.
        """
        if self.adata_manager is None:
            raise ValueError(
                "This model holds no registered training data (it was loaded without them): load it with "
                "GenoHoptionModel.load(dir_path, adata=reference) where reference has the model's genes and labels."
            )
        fit(self, self._task, max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            train_size=train_size, validation_size=validation_size, early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience, restore_best_weights=restore_best_weights,
            accelerator=accelerator, devices=devices, datasplitter_kwargs=datasplitter_kwargs,
            plan_kwargs=plan_kwargs, trainer_kwargs=trainer_kwargs)
        self.calibration_ = None  # new weights: an earlier calibration no longer holds

    def pretrain(
        self,
        adata: AnnData | None = None,
        *,
        max_epochs: int = 10,
        mask_ratio: float = 0.4,
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
    ) -> None:
        """Pretrain the backbone on unlabelled cells by masked expression modelling, before :meth:`train`.

        A random ``mask_ratio`` of each cell's gene tokens have their value hidden; the backbone
        predicts them from the other tokens through the graph-diffusion layers and from the cell
        embedding (scGPT's GEP and GEPC objectives, Cui et al. 2024;
        :class:`~genohoption.module.PretrainingModule`). Any cells serve, labelled or not: the reference,
        the query itself (transductive), or a larger corpus; genes are matched to the model's by name
        (missing ones count as not expressed). For a model set up with ``batch_key`` the cells need that
        column, with batches the model was trained on; the batch embedding and normalisation are shared with
        the pretraining (``batch_representation``), and with ``batch_adversarial`` a discriminator of its own
        is trained on the CLS embedding. The backbone is changed in place; the classifier (a perturbation
        model's perturbation embedding and decoder) is not touched. A perturbation model is pretrained on
        control cells (e.g. the screen's), before :meth:`train`: the backbone learns gene-gene covariation
        from the cells that are plentiful. The history is in :attr:`pretrain_history_` (``train_loss``, ``validation_loss``,
        ``*_mse_token``, ``*_mse_cell``), the weights of the best validation epoch are restored.

        To pretrain once and fine-tune many times, set up the corpus without labels
        (``setup_anndata(corpus, labels_key=None)``), train that model, ``save`` it and pass its directory
        as ``pretrained=``.

        Parameters
        ----------
        adata
            Cells to pretrain on, ``(n_obs, n_vars)``, same kind of values (layer) as the model's data;
            default: the model's own data. A backed AnnData is read a minibatch at a time when its genes
            are the model's, in order.
        max_epochs, batch_size, lr, weight_decay, train_size, early_stopping, early_stopping_patience
            As in :meth:`train` (early stopping on the masked-value loss of held-out cells).
        mask_ratio
            Fraction of gene tokens whose value is hidden, in ``(0, 1)`` (default 0.4).
        accelerator, devices, plan_kwargs, **trainer_kwargs
            As in :meth:`train`.

        Raises
        ------
        TypeError
            For a model set up for pretraining (its ``train`` pretrains).
        ValueError
            For a Geneformer backbone (only the scGPT-style backbone is pretrained here), a
            ``mask_ratio`` outside ``(0, 1)``, data that share no gene with the model, backed data whose
            genes are not the model's in order, or cells of batches the model was not trained on.
        KeyError
            If the model was set up with ``batch_key`` and the cells lack that column.
        """
        if not isinstance(self._task, AnnotationTask | PerturbationTask):
            hint = ("call model.train() to pretrain it" if isinstance(self._task, PretrainingTask)
                    else self._task.wrong_method_hint)
            raise TypeError(f"pretrain() applies to annotation and perturbation models: {hint}")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}.")
        run, task = pretraining_run(self._resolve(adata, warn_untrained=False), self.module, self.registry_,
                                    mask_ratio=mask_ratio)
        fit(run, task, max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            train_size=train_size, validation_size=None, early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience, restore_best_weights=True, accelerator=accelerator,
            devices=devices, datasplitter_kwargs=None, plan_kwargs=plan_kwargs, trainer_kwargs=trainer_kwargs)
        self.module.eval()
        self.pretrain_history_ = run.history_
        self.calibration_ = None

    # ------------------------------------------------------------------ inference
    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 128) -> np.ndarray:
        """Cell embeddings, read out as the ``conventions`` say (for a loaded checkpoint, its original's).

        scGPT-style: the ``<cls>`` output of the last layer, L2-normalised with an official checkpoint
        (scGPT's ``get_batch_cell_embeddings``). Geneformer: the mean of the gene tokens' outputs (V1) or
        the ``<cls>`` output (V2) of the second-to-last layer with an official checkpoint (Geneformer's
        ``EmbExtractor`` defaults), of the last layer from scratch. With ``cell_emb="cls+expr"`` the
        projection of the expression follows.

        Parameters
        ----------
        adata
            Cells to embed (genes aligned to the model by name); defaults to the training data. A backed
            AnnData (``backed="r"``, CSR or dense ``X``) is read ``batch_size`` cells at a time. For a model
            set up with ``batch_key``, ``adata.obs`` needs that column; see ``batch_representation`` for
            batches not seen in training.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_obs, d)`` float32 array (``d = d_model``, twice that with ``cell_emb="cls+expr"``; with a
        domain-specific normalisation of the classifier's input, the normalised embedding); store it as
        ``adata.obsm["X_genohoption"]`` and use it with ``sc.pp.neighbors(adata, use_rep="X_genohoption")``.

        Raises
        ------
        TypeError
            For a perturbation model, or if ``adata`` is not an AnnData / MuData.
        KeyError
            If the model was set up with ``batch_key`` and ``adata.obs`` lacks that column.
        ValueError
            If the query has no cells, shares no gene with the model, holds NaN / negative values or
            values beyond float32, has cells without a batch, or if the outputs are not finite (the message
            names the damaged weights).

        Warns
        -----
        UserWarning
            If the model is untrained, or the query's values are clearly on another scale than the
            reference's (raw counts into a model trained on log-normalised data, or the reverse; see
            :attr:`value_scale_`).
        """
        self._task.require("get_latent_representation")
        return self._task.get_latent_representation(self.module, self._resolve(adata), batch_size=batch_size)

    def get_gene_network(self, adata: AnnData | None = None, groupby: str | None = None, *,
                         key_added: str = K.GENE_NETWORK_KEY, batch_size: int = 64,
                         min_weight: float = 1e-4) -> pd.DataFrame:
        """Gene networks from the graph attention, averaged over cells (per group when asked).

        Every cell is encoded as in :meth:`get_latent_representation`; the attention weights of every head
        of every layer on the edges of its induced gene graph (the softmax of eq. 4 of Cheng et al.,
        ``a_ij``: how much gene ``i`` attends to gene ``j``) are averaged over heads and layers and then
        over the cells in which the edge occurs (both genes are tokens), accumulated a minibatch at a time
        over the graph's edges (memory linear in edges, not cells). The K-hop receptive field is the
        model's diffusion (PPR, heat or mask, with its ``n_hops``, ``alpha``, ``t``) applied to the averaged
        attention with rows renormalised over genes: ``M[i, j]`` is the weight with which gene ``j``'s value
        reaches gene ``i``, non-zero also for gene pairs that are not graph edges but within ``n_hops``.
        Edges to the CLS token are left out. The forward pass itself is unchanged: the attention is
        recomputed by hooks that exist only during this call.

        Parameters
        ----------
        adata
            Cells (genes aligned to the model by name); defaults to the training data. A backed AnnData is
            read ``batch_size`` cells at a time.
        groupby
            Column of ``adata.obs``: one network per category (e.g. cell type). ``None``: one network of all
            cells.
        key_added
            ``adata.varp`` key of the averaged attention (with ``groupby``: ``f"{key_added}_{group}"``, ``/`` in
            a group's name written ``|``); the
            receptive field goes to the same key + ``"_diffusion"``; parameters to ``adata.uns[key_added]``.
        batch_size
            Cells per forward pass.
        min_weight
            Entries of the receptive field below this are dropped after each hop (bounds its memory).

        Returns
        -------
        Edge list of the averaged attention (decoupler style), one row per graph edge seen in at least one
        cell (and per group): ``source`` (the attended gene ``j``; a regulator in a TF → target prior),
        ``target`` (gene ``i``), ``attention`` (mean weight), ``n_cells``, and ``group`` with ``groupby``.
        Written to ``adata``:

        ``adata.varp[key]``
            ``(n_vars, n_vars)`` CSR, ``[i, j]`` = mean attention of ``i`` on ``j`` (the gene graph's
            orientation); genes of ``adata`` the model lacks have empty rows.
        ``adata.varp[key + "_diffusion"]``
            ``(n_vars, n_vars)`` CSR, the K-hop receptive field.
        ``adata.uns[key_added]``
            ``"params"`` (``groupby``, ``batch_size``, the diffusion's ``method``, ``n_hops``, ``alpha``, ``t``,
            ``normalize``, ``min_weight``), ``"groups"``, ``"varp_keys"`` (group → its two varp keys) and
            ``"n_cells"`` per group.

        Raises
        ------
        TypeError
            For a perturbation model (encode the control cells with a pretrained model instead), or if
            ``adata`` is not an AnnData / MuData.
        ValueError
            For a dense-attention model (no graph edges), a bad ``batch_size`` / ``min_weight`` /
            ``key_added``, or a query without cells or shared genes.
        KeyError
            If ``groupby`` is not a column of ``adata.obs``.

        Examples
        --------
        >>> edges = model.get_gene_network(adata, groupby="cell_type")
        >>> gh.pl.gene_graph(adata, "NKG7", key="gene_network_NK")
        """
        check_network_model(self.module, self._task.params)  # before the data are read
        return gene_network(self.module, self._resolve(adata), self._task.params, groupby=groupby,
                            key_added=key_added, batch_size=batch_size, min_weight=min_weight)

    def calibrate(self, adata: AnnData | None = None, labels_key: str | None = None, *,
                  false_unknown_rate: float = 0.05, batch_size: int = 128) -> dict[str, Any]:
        """Calibrate the class probabilities and choose the "Unknown" threshold on held-out reference cells.

        Temperature scaling (:func:`genohoption.tl.fit_temperature`; Guo et al. 2017): one temperature ``T``
        that minimises the negative log-likelihood of ``softmax(logits / T)`` on labelled cells the model did
        not train on. Then each cell's uncertainty ``1 - max_k p_k`` (the calibrated probability that its
        label is wrong) is computed, and the threshold above which :meth:`predict` calls a cell "Unknown" is
        the conformal quantile of those held-out cells' uncertainties that calls at most
        ``false_unknown_rate`` of known-type cells "Unknown" (:func:`genohoption.tl.unknown_threshold`).
        Query cells are never used. :meth:`predict` applies ``T`` from then on; :meth:`save` keeps it.

        Parameters
        ----------
        adata
            Labelled held-out cells of the reference's cell types (genes aligned by name). ``None`` (default):
            the validation cells that :meth:`train` held out from the model's data (``train_size < 1``); a
            model trained on every cell (``train_size=1``) has none, so pass cells it did not train on (e.g.
            a stratified split of the reference kept out of training, as the command line does).
        labels_key
            Column of ``adata.obs`` with their cell types; default the ``labels_key`` of :meth:`setup_anndata`.
        false_unknown_rate
            Largest fraction of known-type cells that ``predict(..., unknown_threshold="calibrated")`` may
            call "Unknown", in ``(0, 1)`` (default 0.05).
        batch_size
            Cells per forward pass.

        Returns
        -------
        The record, also kept as :attr:`calibration_`: ``temperature``, ``threshold`` (on the uncertainty,
        in ``[0, 1]``), ``false_unknown_rate``, ``n_cells``, ``accuracy`` of the held-out cells, ``ece_before``
        / ``ece_after`` (expected calibration error, :func:`genohoption.tl.expected_calibration_error`, with
        ``T = 1`` and with ``T``), ``nll_before`` / ``nll_after``, and ``source`` (``"validation cells"`` or
        ``"given cells"``). Fitted on the same cells it scores, ``ece_after`` is an in-sample figure.

        Raises
        ------
        TypeError
            For a model of another task, or if ``adata`` is not an AnnData / MuData.
        ValueError
            If no held-out cells are given and the model has none, the cells hold types the model does not
            know or missing labels, or ``false_unknown_rate`` is outside ``(0, 1)``.
        KeyError
            If ``labels_key`` is not a column of ``adata.obs``.
        """
        if not isinstance(self._task, AnnotationTask):
            raise self._task._wrong("calibrate")
        check_false_unknown_rate(false_unknown_rate)
        source = "given cells"
        if adata is None:
            held_out = getattr(self, "validation_indices", None)
            if self.adata is None or held_out is None or len(held_out) == 0:
                raise ValueError(
                    "The model has no held-out cells (it was trained on every cell, train_size=1, or loaded): pass "
                    "labelled cells it did not train on, model.calibrate(held_out), or train with train_size < 1."
                )
            adata, source = self.adata[np.sort(np.asarray(held_out))].copy(), "validation cells"
        adata, codes = calibration_labels(self._task, adata, labels_key, self.registry_)
        record = self._task.calibrate(self.module, self._resolve(adata), codes,
                                      false_unknown_rate=false_unknown_rate, batch_size=batch_size)
        self.calibration_ = {**record, "source": source}
        return dict(self.calibration_)

    def predict(self, adata: AnnData | None = None, *, batch_size: int = 128,
                key_added: str = K.PREDICTION_KEY,
                unknown_threshold: float | Literal["calibrated"] | None = None) -> pd.Series:
        """Predict cell types and write them to ``adata.obs``.

        Genes are matched to the model's genes by name: a query with reordered genes or a subset of
        them is aligned (missing genes count as not expressed). Everything is computed before anything
        is written.

        Parameters
        ----------
        adata
            Query cells, ``(n_obs, n_vars)``, same kind of values (layer) as the reference; defaults to
            the training data. A backed AnnData (``backed="r"``, CSR or dense ``X``) is read
            ``batch_size`` cells at a time and never loaded whole; the results below go to its in-memory
            ``obs`` / ``obsm`` / ``uns`` (the file is not changed; with ``backed="r+"``, ``adata.write()``
            stores them). For a model set up with ``batch_key``, ``adata.obs`` needs that column; see
            ``batch_representation`` for batches not seen in training.
        batch_size
            Cells per forward pass.
        key_added
            Column of ``adata.obs`` for the predicted cell type.
        unknown_threshold
            Call cells whose uncertainty exceeds this value ``"Unknown"``:
            a number in ``[0, 1]``, or ``"calibrated"`` for the threshold :meth:`calibrate` chose on held-out
            reference cells. ``None`` (default): every cell gets a reference type.

        Returns
        -------
        pandas.Series
            Predicted cell types, categorical, indexed by ``adata.obs_names``. Also writes:

            - ``adata.obs[key_added]``: predicted cell type (categorical; with ``unknown_threshold``, the
              category ``"Unknown"`` is added);
            - ``adata.obs[f"{key_added[:-len('prediction')]}confidence"]`` (``genohoption_confidence`` by
              default): probability of the predicted type, in [0, 1];
            - ``adata.obs[f"{key_added[:-len('prediction')]}uncertainty"]`` (``genohoption_uncertainty``):
              ``1 -`` that probability. After :meth:`calibrate` the probabilities are temperature-scaled, so the
              uncertainty estimates the chance that the predicted reference type is wrong;
            - ``adata.obsm["genohoption_probabilities"]``: ``(n_obs, n_classes)`` DataFrame of class
              probabilities, one column per cell type; a ``/`` in a cell-type name becomes ``|`` in its column
              name (h5ad files cannot store ``/`` in names);
            - ``adata.uns["genohoption"]["predict"]``: the parameters of this call (``temperature``,
              ``unknown_threshold``, ``n_unknown`` among them), and ``"classes"``, the cell types in column
              order, as named in the reference.

            A view is first made an AnnData of its own (with a warning), as scanpy does.

        Raises
        ------
        TypeError
            For a perturbation model, if ``adata`` is not an AnnData / MuData, or if
            ``adata.uns["genohoption"]`` is not a dict.
        ValueError
            If the query has no cells, shares no gene with the model, holds NaN / negative values or
            values beyond float32, ``key_added`` is empty or contains ``/``, ``batch_size`` is not a
            positive integer, ``unknown_threshold`` is not in ``[0, 1]`` (or is ``"calibrated"`` for a model
            that :meth:`calibrate` has not calibrated), the outputs are not finite (the message names the damaged weights), or the
            query is backed with a CSC ``X`` or is a view of a backed AnnData.
        KeyError
            If the model's layer is missing from the query, or the model's ``batch_key`` column.

        Warns
        -----
        UserWarning
            If the model is untrained, ``adata`` is a view, or the query's values are clearly on another
            scale than the reference's (raw counts into a model trained on log-normalised data, or the
            reverse; see :attr:`value_scale_`).
        """
        self._task.require("predict")
        unknown_threshold, temperature = calibrated_settings(unknown_threshold, self.calibration_, "model")
        return self._task.predict(self.module, self._resolve(adata), batch_size=batch_size, key_added=key_added,
                                  temperature=temperature, unknown_threshold=unknown_threshold)

    def predict_perturbation(
        self,
        adata: AnnData,
        conditions: str | Sequence[str],
        *,
        batch_size: int = 128,
        key_prefix: str = K.PERTURBATION_LAYER_PREFIX,
        fallback: bool = True,
    ) -> np.ndarray | AnnData:
        """Predict the expression of control cells under genetic perturbations.

        Each cell of ``adata`` (control cells, genes matched to the model's genes by name) is the input;
        the condition's genes are flagged on their tokens (scGPT-style, Cui et al. 2024) and the model
        predicts every gene's value in the perturbed cell. Conditions follow GEARS (Roohani et al. 2023):
        ``"A+ctrl"`` / ``"ctrl+A"`` (single), ``"A+B"`` (double), written with the symbols of the
        ``gene_symbols`` column given to :meth:`setup_anndata`. The genes need not have been perturbed
        in training, nor be measured: any gene of the model's gene universe (measured genes, genes of
        the ``prior`` network, ``extra_genes``) works; an unmeasured one gets a token of its own joined to
        its regulatory neighbours (:class:`~genohoption.module.PerturbationModule`). Every measured gene
        is predicted, however long ``max_seq_len``.

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
        fallback
            A perturbed gene the model has no information about (not measured, no prior edge to a
            measured gene, not perturbed in the training data, not in a pretrained vocabulary) is named in a
            warning and left out of its condition; a condition left without genes is predicted by the
            fallback rule, input + the mean change of the training perturbations (the mean baseline,
            which is also what the target-gene and prior-network baselines predict for such a gene). The
            conditions that fell back are recorded. ``False``: such genes get their generic token (joined
            to every measured gene, without an embedding of their own), with the same warning.

        Returns
        -------
        For one condition: ``(n_obs, n_vars)`` float32 array, also written to
        ``adata.layers[f"{key_prefix}{condition}"]`` (``genohoption_A+B`` by default). For a list: an
        AnnData ``(n_conditions, n_vars)`` of mean predicted profiles, ``obs_names`` = conditions,
        ``var`` = ``adata.var``, ``obs["n_cells"]``. Either way
        ``adata.uns["genohoption"]["predict_perturbation"]`` records the parameters (conditions, layer
        keys, attention, genes matched, the conditions predicted by the fallback rule).

        Raises
        ------
        TypeError
            If the model classifies cells, or ``conditions`` is not a string or a list of strings.
        ValueError
            For malformed conditions or an ``adata`` without genes in common with the model.
        KeyError
            If a perturbed gene is not in the model's gene universe (message names the genes), or the
            model's layer is missing from ``adata``.

        Warns
        -----
        UserWarning
            If ``adata.obs`` has the model's perturbation column and some cells are not controls, or a
            perturbed gene is one the model has no information about (see ``fallback``).
        """
        self._task.require("predict_perturbation")
        return self._task.predict_perturbation(self.module, self._resolve(adata), conditions, batch_size=batch_size,
                                               key_prefix=key_prefix, fallback=fallback)

    # ------------------------------------------------------------------ save / load
    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save weights (``model.safetensors``) and settings, registry and history (``model.json``); no pickle.

        The signature is scvi-tools' :meth:`~scvi.model.base.BaseModelClass.save` without ``save_kwargs``
        (scvi-tools passes those to :func:`torch.save`; the weights here are written with safetensors), so
        scvi-tools' checkpointing (``train(enable_checkpointing=True)``) works. ``model.json`` records the
        sha256 of the weights, which :meth:`load` checks. In a multi-process run (``strategy="ddp"``,
        ``torchrun``, SLURM) only the process of global rank 0 writes; the others return without writing.

        Parameters
        ----------
        dir_path
            Directory to write; created if needed.
        prefix
            Prefix of the file names (``{prefix}model.safetensors``, ...).
        overwrite
            Replace a model already saved there with this prefix.
        save_anndata
            Also write the model's AnnData to ``{prefix}adata.h5ad``.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad` (with ``save_anndata=True`` only).

        Raises
        ------
        FileExistsError
            If a model is already saved in ``dir_path`` (with ``prefix``) and ``overwrite`` is false, or
            ``dir_path`` is a file.
        ValueError
            If ``save_anndata`` is true but the model holds no AnnData, or ``prefix`` holds a ``/``.
        TypeError
            If ``save_kwargs`` is given, or AnnData writing arguments without ``save_anndata=True``.
        """
        if "save_kwargs" in anndata_write_kwargs:
            raise TypeError("save_kwargs is not used: the weights are written with safetensors, not torch.save; "
                            "drop it.")
        if anndata_write_kwargs and not save_anndata:
            raise TypeError(f"{sorted(anndata_write_kwargs)} are arguments of AnnData.write_h5ad, used only with "
                            "save_anndata=True.")
        if save_anndata and self.adata is None:
            raise ValueError("save_anndata=True, but the model holds no AnnData (it was loaded without one).")
        if not is_global_zero():  # multi-process training: every process runs the script, rank 0 writes
            return
        meta = {"class": type(self).__name__, "init_params": self.init_params_, "registry": self.registry_,
                "history": self.history_, "pretrain_history": self.pretrain_history_,
                "is_trained": bool(self.is_trained_), "value_scale": self.value_scale_,
                "calibration": self.calibration_}
        paths = save_model_files(dir_path, self.module.state_dict(), meta, prefix=prefix, overwrite=overwrite)
        if save_anndata:
            self.adata.write_h5ad(paths["adata"], **anndata_write_kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ) -> GenoHoptionModel:
        """Load a model written by :meth:`save` (signature of scvi-tools' ``load``).

        Parameters
        ----------
        dir_path
            Directory holding ``model.safetensors`` and ``model.json``.
        adata
            Data to attach as the model's default for :meth:`predict` and :meth:`train` (otherwise
            ``adata.h5ad`` from the directory, if saved). It must hold every gene of the model. It is
            registered with the saved registry (so that :meth:`train` can go on; the saved label order is
            kept) when it has the model's genes in the model's order, its layer, and labels (or
            conditions) among the saved ones; otherwise (a view, genes in another order, no labels, new
            cell types) it is attached for inference only, and the reason is logged. To predict cells that
            lack some of the model's genes, load without ``adata`` and pass them to :meth:`predict`, which
            aligns genes by name.
        accelerator, device
            Where to put the model (scvi-tools / Lightning convention; ``"auto"`` picks a GPU if any).
        prefix
            Prefix of the file names given to :meth:`save`.

        Returns
        -------
        The model, in evaluation mode, with its training history.

        Raises
        ------
        FileNotFoundError
            If the files are missing.
        ValueError
            If the files are damaged (checksum, JSON, safetensors, NaN weights, a malformed gene graph,
            weights that do not fit the saved settings) or were not written by this class, ``prefix``
            holds a ``/``, or ``adata`` lacks genes of the model (the message names them).
        TypeError
            If ``adata`` is not an AnnData / MuData.
        """
        if adata is not None:
            adata = as_anndata(adata, allow_backed=True)
        state, meta = load_model_files(dir_path, prefix)
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{dir_path} holds a {meta.get('class')!r}, not a {cls.__name__}.")
        paths = file_paths(dir_path, prefix)
        if adata is None and paths["adata"].is_file():
            import anndata

            try:
                adata = anndata.read_h5ad(paths["adata"])
            except Exception as e:  # h5py / anndata errors of a damaged file
                raise ValueError(
                    f"{paths['adata']} cannot be read ({type(e).__name__}); pass adata= to load, or delete or "
                    "replace that file."
                ) from None
        registry = meta["registry"]
        try:
            kwargs = {**meta["init_params"]["non_kwargs"], **meta["init_params"]["kwargs"]}
            model = cls(None, registry=registry, **kwargs)
            n_genes = model.summary_stats.n_vars
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{paths['meta']} does not describe a valid {cls.__name__} ({type(e).__name__}: {e}); it is damaged "
                "or from another version: save the model again."
            ) from None
        for key in ("graph_indptr", "graph_indices"):
            if key not in state:
                raise ValueError(f"{paths['weights']} has no {key!r}: it was not written by {cls.__name__}.save().")
        check_csr_structure(state["graph_indptr"].numpy(), state["graph_indices"].numpy(), n_genes, n_genes,
                            f"the gene graph saved in {paths['weights']}")
        model.module.graph_indptr = state["graph_indptr"].clone()
        model.module.graph_indices = state["graph_indices"].clone()
        try:
            model.module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise ValueError(
                f"{paths['weights']} does not fit the model described in {paths['meta'].name} "
                f"({' '.join(first[:2])[:300]}): the files are damaged or come from different saves; save the "
                "model again."
            ) from None
        model.module.eval()
        model.value_scale_ = meta.get("value_scale")
        model.is_trained_ = bool(meta.get("is_trained", True))
        model.history_ = meta.get("history")
        model.pretrain_history_ = meta.get("pretrain_history")
        model.calibration_ = meta.get("calibration")
        model._model_summary_string = model._summary()
        if adata is not None:
            model._attach(adata)
        _, _, torch_device = parse_device_args(accelerator, device, return_device="torch",
                                               validate_single_device=True)
        model.to_device(torch_device)
        return model

    def _attach(self, adata: AnnData) -> None:
        """Make ``adata`` the model's data: registered with the model's registry when it can take it.

        Raises
        ------
        ValueError
            If ``adata`` lacks genes of the model (naming them).
        """
        missing = self.var_names.difference(adata.var_names.astype(str), sort=False)
        if len(missing):
            raise ValueError(
                f"adata cannot be attached to the model: it lacks {len(missing)} of the model's {len(self.var_names)} "
                f"genes (e.g. {missing[:5].tolist()}). Load without adata= and pass the cells to predict() / "
                "get_latent_representation(), which align genes by name (missing genes count as not expressed), or "
                "attach data that hold every model gene."
            )
        problems = self._task.registration_problems(adata, self.registry_)
        if problems:
            logger.info("attached the AnnData for inference only (it cannot take the model's registry: %s)",
                        "; ".join(problems))
        else:
            type(self).setup_anndata(adata, source_registry=self.registry_, **self.registry_["setup_args"])
            self._adata_manager = self._get_most_recent_anndata_manager(adata, required=True)
            self._register_manager_for_instance(self._adata_manager)
        self._adata = adata

    # ------------------------------------------------------------------ scvi-tools class methods on saved models
    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """Return the scvi-tools registry saved with a model (as scvi-tools' ``load_registry``).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names given to :meth:`save`.

        Returns
        -------
        The registry: ``setup_args`` (the arguments of :meth:`setup_anndata`), ``field_registries`` (genes,
        label or condition categories), ``scvi_version``, ``model_name``.

        Raises
        ------
        FileNotFoundError
            If ``model.json`` is missing.
        ValueError
            If it is damaged.
        """
        return load_meta(dir_path, prefix)["registry"]

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the arguments of :meth:`setup_anndata` saved with a model (as scvi-tools' ``view_setup_args``).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names given to :meth:`save`.

        Raises
        ------
        FileNotFoundError, ValueError
            As :meth:`load_registry`.
        """
        AnnDataManager.view_setup_method_args(GenoHoptionModel.load_registry(dir_path, prefix))

    def view_registry(self, hide_state_registries: bool = False) -> None:
        """Print the registry: setup arguments, summary statistics, data registry (and each field's state).

        Works on a model loaded without data too (from the saved registry). Overrides scvi-tools'
        version, which reads an attribute its models do not have.

        Parameters
        ----------
        hide_state_registries
            Leave out the state of each field (genes, label categories).
        """
        if self.adata_manager is not None:
            self.adata_manager.view_registry(hide_state_registries=hide_state_registries)
            return
        rich.print(f"Anndata setup with scvi-tools version {self.registry_['scvi_version']}.")
        rich.print()
        AnnDataManager.view_setup_method_args(self.registry_)
        console = rich.console.Console()
        console.print(AnnDataManager._view_summary_stats(self.summary_stats))
        console.print(AnnDataManager._view_data_registry(
            AnnDataManager._get_data_registry_from_registry(self.registry_)))

    def update_setup_method_args(self, setup_method_args: dict) -> None:
        """Update the setup arguments recorded in the model's registry (saved with :meth:`save`).

        Overrides scvi-tools' version, which writes to an attribute its models do not have.

        Parameters
        ----------
        setup_method_args
            Arguments of :meth:`setup_anndata` to record, by name.

        Raises
        ------
        KeyError
            For a name that is not an argument of :meth:`setup_anndata`.
        """
        unknown = set(setup_method_args) - set(self.registry_["setup_args"])
        if unknown:
            raise KeyError(f"{sorted(unknown)} are not arguments of setup_anndata; known: "
                           f"{sorted(self.registry_['setup_args'])}.")
        self.registry_["setup_args"].update(setup_method_args)

    @classmethod
    def convert_legacy_save(cls, dir_path: str, output_dir_path: str, overwrite: bool = False,
                            prefix: str | None = None, **save_kwargs) -> None:
        """Refuse: there is no legacy format to convert (scvi-tools converts saves of scvi-tools < 0.15).

        Every model this package saved is read by :meth:`load`.

        Raises
        ------
        NotImplementedError
            Always.
        """
        raise NotImplementedError(
            f"{cls.__name__} has no legacy save format: load the directory with {cls.__name__}.load(dir_path)."
        )


def _check_init_args(backbone, attention, max_seq_len, d_model, n_heads, n_layers, d_hid, n_hops, cls_input_norm):
    if backbone not in K.BACKBONES:
        raise ValueError(f"backbone={backbone!r} is not available; use one of {K.BACKBONES}.")
    if attention not in K.ATTENTIONS:
        raise ValueError(f"attention={attention!r} is unknown; choose one of {K.ATTENTIONS}.")
    if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2):
        raise ValueError(f"max_seq_len must be None or an integer of at least 2 (CLS plus one gene), got {max_seq_len!r}.")
    sizes = {"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers, "d_hid": d_hid, "n_hops": n_hops}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes.values()) or d_model % n_heads:
        raise ValueError("d_model, n_heads, n_layers, d_hid and n_hops must be positive integers, "
                         f"and n_heads must divide d_model (got {sizes}).")
    if cls_input_norm not in INPUT_NORMS:
        raise ValueError(f"cls_input_norm={cls_input_norm!r} is unknown; choose one of {INPUT_NORMS}.")
