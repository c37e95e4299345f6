"""Plotting: every function returns its Axes (unless ``show=True``) and accepts ``ax=``."""

from ._gene_graph import gene_graph, graph_summary
from ._model import confusion_matrix, training_history

__all__ = ["confusion_matrix", "gene_graph", "graph_summary", "training_history"]
