"""Keys written to or read from :class:`~anndata.AnnData`, defined once."""

from __future__ import annotations

GRAPH_KEY = "gene_graph"
"""Default ``adata.varp`` / ``adata.uns`` key of the gene graph."""

PREDICTION_KEY = "genohoption_prediction"
"""``adata.obs`` column with predicted cell types."""

CONFIDENCE_KEY = "genohoption_confidence"
"""``adata.obs`` column with the probability of the predicted cell type."""

PROBABILITIES_KEY = "genohoption_probabilities"
"""``adata.obsm`` key with class probabilities, ``(n_obs, n_classes)``."""

LATENT_KEY = "X_genohoption"
"""``adata.obsm`` key suggested for the CLS embedding."""

UNS_KEY = "genohoption"
"""``adata.uns`` key where the model records parameters of its writes."""

PERTURBATION_LAYER_PREFIX = "genohoption_"
"""``adata.layers`` prefix for predicted perturbed expression (``genohoption_A+B``)."""

ATTENTIONS = ("ppr", "heat", "mask", "dense")
"""Supported attention kinds (DESIGN.md §1)."""
