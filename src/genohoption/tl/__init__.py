"""Tools: metrics and splits."""

from ._annotation import annotation_metrics, stratified_split

__all__ = ["annotation_metrics", "stratified_split"]
