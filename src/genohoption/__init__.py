"""genohoption: gene-network graph diffusion attention for single-cell foundation models.

Submodules load on first access (PEP 562, as scanpy and anndata do): ``import genohoption as gh`` is
quick, ``gh.pp`` / ``gh.tl`` / ``gh.datasets`` never import torch, scvi-tools or Lightning, and
``gh.GenoHoptionModel`` imports them when first used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("genohoption")
except PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "0.0.0"

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from . import data, datasets, model, module, nn, pl, pp, tl  # noqa: F401
    from .model import GenoHoptionModel

_SUBMODULES = frozenset({"data", "datasets", "model", "module", "nn", "pl", "pp", "tl"})
_ATTRIBUTES = {"GenoHoptionModel": "model"}

__all__ = ["GenoHoptionModel", "datasets", "pl", "pp", "tl"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_ATTRIBUTES})
