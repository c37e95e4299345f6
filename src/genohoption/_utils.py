"""Small helpers shared by the namespaces (no torch here)."""

from __future__ import annotations

import logging
from typing import Any

from anndata import AnnData

logger = logging.getLogger(__name__)


def _save_data(adata: AnnData, *, attr: str, key: str, data: Any) -> None:
    """Write ``data`` to ``getattr(adata, attr)[key]`` and log the write (squidpy style)."""
    obj = getattr(adata, attr)
    if key in obj:
        logger.info("Overwriting `adata.%s[%r]`", attr, key)
    obj[key] = data
    logger.info("Added `adata.%s[%r]`", attr, key)


def companion_key(key_added: str, name: str) -> str:
    """``adata.obs`` column of ``name`` (``"confidence"``, ``"uncertainty"``) beside the prediction column ``key_added``.

    ``"x_prediction"`` gives ``"x_confidence"``; any other key gets ``f"{key_added}_{name}"``.
    """
    return key_added.removesuffix("prediction") + name if key_added.endswith("prediction") else f"{key_added}_{name}"
