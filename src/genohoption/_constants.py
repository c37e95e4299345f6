"""Keys written to or read from AnnData objects and minibatches, and the file names of a saved model.

Each is defined once here; this module imports nothing.
"""

from __future__ import annotations

# ---------------------------------------------------------------- adata.varp / adata.uns: the gene graph
GRAPH_KEY = "gene_graph"
"""Default ``adata.varp`` / ``adata.uns`` key of the gene graph."""

GRAPH_SOURCE_SUFFIX = "_source"
"""Suffix of the ``adata.varp`` key holding each edge's origin code (``gene_graph_source``)."""

# ---------------------------------------------------------------- adata.obs / obsm / layers: predictions
PREDICTION_KEY = "genohoption_prediction"
"""``adata.obs`` column with predicted cell types."""

CONFIDENCE_KEY = "genohoption_confidence"
"""``adata.obs`` column with the probability of the predicted cell type."""

UNCERTAINTY_KEY = "genohoption_uncertainty"
"""``adata.obs`` column with each cell's uncertainty, ``1 -`` the (calibrated) probability of the predicted type."""

UNKNOWN_LABEL = "Unknown"
"""Cell type written by ``predict(..., unknown_threshold=...)`` for cells more uncertain than the threshold
(types the reference may lack)."""

PROBABILITIES_KEY = "genohoption_probabilities"
"""``adata.obsm`` key with class probabilities, ``(n_obs, n_classes)``."""

LATENT_KEY = "X_genohoption"
"""``adata.obsm`` key of the cell embeddings (the command line writes it; suggested in the docs)."""

UMAP_KEY = "X_umap_genohoption"
"""``adata.obsm`` key of the command line's UMAP of :data:`LATENT_KEY` (``X_umap`` is never overwritten)."""

NEIGHBORS_KEY = "genohoption_neighbors"
"""``key_added`` of the command line's :func:`scanpy.pp.neighbors` on :data:`LATENT_KEY` (input graphs stay)."""

BASELINE_PREDICTION_KEY = "logreg_prediction"
"""``adata.obs`` column (and ``adata.uns`` key) of :func:`genohoption.tl.logistic_regression_baseline`."""

PERTURBATION_LAYER_PREFIX = "genohoption_"
"""``adata.layers`` prefix for predicted perturbed expression (``genohoption_A+B``)."""

NO_CHANGE_LAYER_PREFIX = "no_change_"
"""``adata.layers`` prefix of :class:`genohoption.tl.NoChangeBaseline` predictions (``no_change_A+B``)."""

MEAN_LAYER_PREFIX = "mean_"
"""``adata.layers`` prefix of :class:`genohoption.tl.MeanBaseline` predictions."""

ADDITIVE_LAYER_PREFIX = "additive_"
"""``adata.layers`` prefix of :class:`genohoption.tl.AdditiveBaseline` predictions."""

LINEAR_LAYER_PREFIX = "linear_"
"""``adata.layers`` prefix of :class:`genohoption.tl.LinearBaseline` predictions."""

TARGET_GENE_CONTROL_LAYER_PREFIX = "target_gene_control_"
"""``adata.layers`` prefix of :class:`genohoption.tl.TargetGeneBaseline` predictions (``on="control"``)."""

TARGET_GENE_MEAN_LAYER_PREFIX = "target_gene_mean_"
"""``adata.layers`` prefix of :class:`genohoption.tl.TargetGeneBaseline` predictions (``on="mean"``)."""

PRIOR_NETWORK_LAYER_PREFIX = "prior_network_"
"""``adata.layers`` prefix of :class:`genohoption.tl.PriorNetworkBaseline` predictions."""

MATCHING_MEAN_LAYER_PREFIX = "matching_mean_"
"""``adata.layers`` prefix of :class:`genohoption.tl.MatchingMeanBaseline` predictions."""

SPLIT_KEY = "split"
"""``adata.obs`` column (and ``adata.uns`` key) of the train / val / test split the ``perturb`` command writes
(:func:`genohoption.tl.perturbation_split`)."""

# ---------------------------------------------------------------- gene networks and in silico perturbation
GENE_NETWORK_KEY = "gene_network"
"""Default ``adata.varp`` / ``adata.uns`` key of ``GenoHoptionModel.get_gene_network``."""

IN_SILICO_KEY = "in_silico"
"""Default ``adata.obsm`` / ``adata.varm`` / ``adata.uns`` key of :func:`genohoption.tl.in_silico_perturbation`."""

# ---------------------------------------------------------------- adata.uns: parameters of writes
UNS_KEY = "genohoption"
"""``adata.uns`` key where the model records parameters of its writes (``uns["genohoption"]["predict"]``)."""

UNS_PREDICT = "predict"
"""Entry of ``adata.uns[UNS_KEY]`` written by ``predict``."""

UNS_PREDICT_PERTURBATION = "predict_perturbation"
"""Entry of ``adata.uns[UNS_KEY]`` written by ``predict_perturbation``."""

UNS_PERTURBATION_BASELINE = "perturbation_baseline"
"""Entry of ``adata.uns[UNS_KEY]`` where each perturbation baseline records its last prediction (by name)."""

UNS_READ_GEARS = "read_gears"
"""``adata.uns`` key written by :func:`genohoption.datasets.read_gears`."""

UNS_SIMULATION = "simulation"
"""``adata.uns`` key written by :func:`genohoption.datasets.simulate_perturbation`."""

# ---------------------------------------------------------------- datasets: obs / var columns
LANE_KEY = "lane"
"""``adata.obs`` column of :func:`genohoption.datasets.pbmc68k_reduced` with the 10x lane of each cell."""

GENE_NAME_KEY = "gene_name"
"""``adata.var`` column with gene symbols in GEARS files (written by :func:`genohoption.datasets.read_gears`)."""

# ---------------------------------------------------------------- model registry and minibatches
PERT_KEY = "perturbation"
"""Registry key of the perturbation-condition field."""

CTRL_X_KEY = "ctrl_x"
"""Minibatch key of the paired control cells' expression ``(B, n_vars)``."""

PERT_GENES_KEY = "pert_genes"
"""Minibatch key of the perturbed genes' indices ``(B, max_genes)``, ``-1`` = none."""

# ---------------------------------------------------------------- files of a saved model (``{prefix}`` + name)
WEIGHTS_FILE = "model.safetensors"
"""A saved model's weights (safetensors); ``GenoHoptionModel.save`` refuses to overwrite an existing one."""
ENSEMBLE_FILE = "ensemble.json"
"""A saved ensemble's record (members, seed, calibration), written by ``GenoHoptionEnsemble.save``."""

META_FILE = "model.json"
"""A saved model's class, init parameters, registry, training history and the weights' sha256 (JSON)."""

ADATA_FILE = "adata.h5ad"
"""The training data saved with a model, when asked for."""

# ---------------------------------------------------------------- choices
ATTENTIONS = ("ppr", "heat", "mask", "dense")
"""Supported attention kinds: PPR (eqs. 6, 8 of Cheng et al.) and heat-kernel (eqs. 7, 10) diffusion,
``"mask"`` (one hop of graph-masked attention, eq. 4) and ``"dense"`` (the backbone's full attention)."""

BACKBONES = ("scgpt", "geneformer")
"""Supported backbones."""

DATASET_PERTURBATION_TYPE_KEY = "perturbation_type"
"""``adata.uns`` key of a screen loader: the kind of perturbation (e.g. CRISPR knock-out)."""

DATASET_SOURCE_KEY = "source"
"""``adata.uns`` key of a dataset loader: where the data come from (publication and files)."""
