"""Small helpers shared by the namespaces (no torch here)."""

from __future__ import annotations

import logging
from typing import Any

from anndata import AnnData

logger = logging.getLogger(__name__)


def _check_adata(adata: Any, *, allow_backed: bool = False) -> AnnData:
    """Raise a clear error unless ``adata`` is an in-memory :class:`~anndata.AnnData`.

    Parameters
    ----------
    adata
        Object to check.
    allow_backed
        Accept backed (``adata.isbacked``) objects.

    Returns
    -------
    The same object, for chaining.

    Raises
    ------
    TypeError
        If ``adata`` is not an :class:`~anndata.AnnData`.
    ValueError
        If it is backed and ``allow_backed`` is false.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}.")
    if adata.isbacked and not allow_backed:
        raise ValueError(
            "This function needs the data in memory, but `adata` is backed "
            f"(file {adata.filename}). Load it with `adata = adata.to_memory()` "
            "or `anndata.read_h5ad(path)` without `backed=`."
        )
    return adata


def _save_data(adata: AnnData, *, attr: str, key: str, data: Any) -> None:
    """Write ``data`` to ``getattr(adata, attr)[key]`` and log the write (squidpy style)."""
    obj = getattr(adata, attr)
    if key in obj:
        logger.info("Overwriting `adata.%s[%r]`", attr, key)
    obj[key] = data
    logger.info("Added `adata.%s[%r]`", attr, key)
