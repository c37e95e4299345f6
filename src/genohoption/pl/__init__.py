"""Plotting: every function returns its Axes (unless ``show=True``) and accepts ``ax=``."""

from ._model import confusion_matrix, training_history

__all__ = ["confusion_matrix", "training_history"]
