"""Restricted unpickling of plain-data pickles (Geneformer's gene dictionaries).

A pickle is a program: :func:`pickle.load` runs whatever callables the file names (``os.system``,
``builtins.eval`` …). :func:`safe_load_pickle` reads with an :class:`pickle.Unpickler` whose
``find_class`` refuses every global, so only the opcodes that build plain containers (``dict``,
``list``, ``tuple``, ``set``), strings, bytes, numbers, booleans and ``None`` can succeed.

One narrow exception: the official Geneformer dictionaries store their values as NumPy scalars
(``numpy.int64`` token ids, ``numpy.float32`` medians), which pickle as a call of
``numpy.core.multiarray.scalar(dtype, raw_bytes)``. Those two names are answered with checked
stand-ins that accept only a numeric dtype and a byte string of the right length and return a plain
Python ``int`` / ``float``; NumPy itself is never asked to build anything.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "safe_load_pickle", "safe_loads_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global (a class or function), i.e. it carries code; nothing was executed."""


# dtype.str → struct format; only fixed-size numeric and boolean kinds
_STRUCT = {"b1": "?", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "i8": "q",
           "u8": "Q", "f2": "e", "f4": "f", "f8": "d"}
_NUMERIC_NAMES = {"bool": "b1", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
                  "uint32": "u4", "int64": "i8", "uint64": "u8", "float16": "f2", "float32": "f4",
                  "float64": "f8"}


class _Dtype:
    """Inert stand-in for ``numpy.dtype(name, align, copy)``: records a numeric kind, nothing else."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False):
        if not isinstance(name, str):
            raise UnsafePickleError(f"refused numpy.dtype({name!r}): only numeric dtypes are admitted")
        code = name.lstrip("<>=|")
        code = _NUMERIC_NAMES.get(code, code)
        if code not in _STRUCT:
            raise UnsafePickleError(f"refused numpy.dtype({name!r}): only numeric dtypes are admitted")
        self.code = code
        self.order = "<"

    def __setstate__(self, state: Any) -> None:  # pickle BUILD: (version, byteorder, ...)
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise UnsafePickleError(f"refused a numpy dtype state {state!r}")
        self.order = ">" if state[1] == ">" else "<"


def _scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """Stand in for ``numpy.core.multiarray.scalar``, checked: return a plain Python number from raw bytes."""
    if not isinstance(dtype, _Dtype) or not isinstance(data, bytes):
        raise UnsafePickleError("refused a NumPy scalar that is not a numeric value stored as bytes")
    fmt = dtype.order + _STRUCT[dtype.code]
    if struct.calcsize(fmt) != len(data):
        raise UnsafePickleError(f"refused a NumPy scalar of {len(data)} bytes for dtype {dtype.code}")
    return struct.unpack(fmt, data)[0]


_ADMITTED = {
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _Dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ADMITTED.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: this pickle carries code (a class or function), and only "
                "plain data (dicts, lists, strings, numbers) is admitted. It was not executed. Use the "
                "official dictionary files, or re-save the dictionary as plain data (e.g. JSON)."
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a pickle with persistent ids (not plain data)")


def safe_loads_pickle(data: bytes) -> Any:
    """Unpickle ``data`` admitting only plain data (see module docstring).

    Raises
    ------
    UnsafePickleError
        If the pickle references any class or function (other than NumPy numeric scalars).
    """
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Read a ``.pkl`` file admitting only plain data (dicts, lists, strings, numbers).

    Parameters
    ----------
    path
        File to read.

    Returns
    -------
    The unpickled object; NumPy numeric scalars come back as Python ``int`` / ``float`` / ``bool``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    UnsafePickleError
        If the file references any class or function (it carries code); nothing is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    with path.open("rb") as fh:
        try:
            return _RestrictedUnpickler(fh).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
