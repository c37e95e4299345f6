"""Plotting: every function returns its Axes (unless ``show=True``) and accepts ``ax=``."""

from ._gene_graph import gene_graph, graph_summary
from ._model import confusion_matrix, training_history
from ._perturbation import perturbation_response

__all__ = ["confusion_matrix", "gene_graph", "graph_summary", "perturbation_response", "training_history"]
