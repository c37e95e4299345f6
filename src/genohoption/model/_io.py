"""Safe save / load of models: safetensors for weights, JSON for everything else (no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def _encode(obj: Any) -> Any:
    """Make a registry / init-params structure JSON-able, tagging numpy arrays to restore them."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"Cannot save a value of type {type(obj).__name__} in {META_FILE}: {obj!r}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            dtype = obj["dtype"]
            return np.asarray(obj["__ndarray__"], dtype=object if dtype == "object" else dtype)
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def save_model_files(dir_path: str | os.PathLike, state_dict: dict, meta: dict, *, overwrite: bool) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``dir_path``.

    Raises
    ------
    FileExistsError
        If the directory holds a saved model and ``overwrite`` is false.
    """
    path = Path(dir_path)
    if (path / WEIGHTS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{path} already holds a saved model; pass overwrite=True to replace it.")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path / WEIGHTS_FILE))
    (path / META_FILE).write_text(json.dumps(_encode(meta), indent=1))


def load_model_files(dir_path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`save_model_files` wrote.

    Raises
    ------
    FileNotFoundError
        If either file is missing.
    """
    path = Path(dir_path)
    for name in (WEIGHTS_FILE, META_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} not found: pass the directory written by GenoHoptionModel.save()."
            )
    return load_file(str(path / WEIGHTS_FILE)), _decode(json.loads((path / META_FILE).read_text()))
