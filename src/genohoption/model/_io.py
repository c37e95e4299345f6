"""Safe save / load of models: safetensors for weights, JSON for everything else (no pickle).

A saved model is two files in a directory, ``{prefix}model.safetensors`` (the module's tensors) and
``{prefix}model.json`` (class, init parameters, scvi-tools registry, training history and the sha256 of
the weights file), plus ``{prefix}adata.h5ad`` when the training data are saved with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as dump_tensors

from .._constants import ADATA_FILE, META_FILE, WEIGHTS_FILE

FORMAT_VERSION = 2


def _encode(obj: Any) -> Any:
    """Make a registry / init-params / history structure JSON-able, tagging arrays and tables."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, pd.DataFrame):
        return {"__dataframe__": {"index": _encode(obj.index.tolist()), "columns": [str(c) for c in obj.columns],
                                  "values": _encode(obj.to_numpy().tolist())}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"Cannot save a value of type {type(obj).__name__} in {META_FILE}: {obj!r}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            dtype = obj["dtype"]
            return np.asarray(obj["__ndarray__"], dtype=object if dtype == "object" else dtype)
        if "__dataframe__" in obj:
            df = obj["__dataframe__"]
            return pd.DataFrame(_decode(df["values"]), index=_decode(df["index"]), columns=df["columns"])
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with the user's umask (a temporary file in the same directory, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


REQUIRED_META = ("class", "init_params", "registry")
"""Entries of ``model.json`` without which a model cannot be rebuilt."""


def file_paths(dir_path: str | os.PathLike, prefix: str | None) -> dict[str, Path]:
    """Paths of the weights, metadata and AnnData files of a saved model.

    Raises
    ------
    ValueError
        If ``prefix`` is not a string or holds a path separator (it prefixes file names).
    """
    if prefix is not None and (not isinstance(prefix, str) or "/" in prefix or os.sep in prefix):
        raise ValueError(f"prefix must be a file-name prefix without '/', got {prefix!r}; put folders in dir_path.")
    path, prefix = Path(dir_path), prefix or ""
    return {"weights": path / f"{prefix}{WEIGHTS_FILE}", "meta": path / f"{prefix}{META_FILE}",
            "adata": path / f"{prefix}{ADATA_FILE}"}


def save_model_files(dir_path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict, *,
                     prefix: str | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write the weights and the metadata (with the weights' sha256) into ``dir_path``.

    Returns
    -------
    The paths (see :func:`file_paths`).

    Raises
    ------
    FileExistsError
        If the directory holds a model saved with this prefix and ``overwrite`` is false, or
        ``dir_path`` is a file.
    """
    paths = file_paths(dir_path, prefix)
    path = Path(dir_path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; pass a directory to save the model in.")
    if (paths["weights"].exists() or paths["meta"].exists()) and not overwrite:
        raise FileExistsError(f"{path} already holds a saved model; pass overwrite=True to replace it.")
    path.mkdir(parents=True, exist_ok=True)
    data = dump_tensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    meta = {**meta, "format_version": FORMAT_VERSION, "weights_sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(_encode(meta), indent=1, allow_nan=False)
    _write(paths["weights"], data)
    _write(paths["meta"], text.encode())
    return paths


def load_meta(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
    """Read the metadata (``model.json``) of a saved model, without its weights.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it is damaged (not JSON, or required entries missing).
    """
    path = file_paths(dir_path, prefix)["meta"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the directory (and prefix) written by GenoHoptionModel.save().")
    try:
        meta = _decode(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); save the model again.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); save the model again.")
    missing = [k for k in REQUIRED_META if not isinstance(meta.get(k), dict | str) or not meta.get(k)]
    if missing:
        raise ValueError(f"{path} is damaged (no valid {', '.join(missing)}); save the model again.")
    return meta


def load_model_files(dir_path: str | os.PathLike, prefix: str | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`save_model_files` wrote, checking the weights against their sha256.

    Raises
    ------
    FileNotFoundError
        If either file is missing.
    ValueError
        If a file is damaged (not JSON, entries missing, not safetensors, weights whose checksum differs,
        or NaN / infinite weights).
    """
    paths = file_paths(dir_path, prefix)
    for key in ("weights", "meta"):
        if not paths[key].is_file():
            raise FileNotFoundError(
                f"{paths[key]} not found: pass the directory (and prefix) written by GenoHoptionModel.save()."
            )
    meta = load_meta(dir_path, prefix)
    data = paths["weights"].read_bytes()
    expected = meta.get("weights_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(
            f"{paths['weights']} does not match the checksum recorded in {paths['meta'].name}: the weights "
            "are damaged or were replaced; save the model again."
        )
    try:
        state = load_tensors(data)
    except Exception as e:  # safetensors raises its own error type for damaged headers
        raise ValueError(f"{paths['weights']} is not a valid safetensors file ({e}); save the model again.") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"{paths['weights']} holds NaN or infinite weights in {bad[:5]}{' …' if len(bad) > 5 else ''}: the model "
            "is damaged (or its training diverged); retrain it (e.g. with a lower lr) or load an intact copy."
        )
    return state, meta
