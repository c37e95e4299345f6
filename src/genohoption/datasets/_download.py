"""Download the published GEARS-format Perturb-seq files (Norman 2019, Adamson 2016, Replogle 2022) with pooch."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from ._gears import read_gears

logger = logging.getLogger(__name__)

GEARS_FILE = "perturb_processed.h5ad"
"""Name of the AnnData inside each GEARS archive."""


class GearsRecord(NamedTuple):
    """Where a GEARS dataset is published: Harvard Dataverse file URL, hash, folder inside the zip, reference."""

    url: str
    known_hash: str | None
    folder: str
    reference: str


# URLs: GEARS' ``PertData.load`` (snap-stanford/GEARS, ``gears/pertdata.py``), which downloads these
# Harvard Dataverse files (zip archives holding ``<folder>/perturb_processed.h5ad`` and GEARS' side files).
# Hashes: Harvard Dataverse shows an MD5 per file on the dataset page, but it is not part of the GEARS
# code and could not be read when this was written (no network): ``None`` makes pooch skip the check
# (it logs the SHA256 of what it downloaded); pass ``known_hash=`` to pin it.
GEARS_DATASETS: dict[str, GearsRecord] = {
    "norman2019": GearsRecord(
        "https://dataverse.harvard.edu/api/access/datafile/6154020", None, "norman",
        "Norman et al., Science 365, 786-793 (2019): CRISPRa single and double perturbations in K562 cells.",
    ),
    "adamson2016": GearsRecord(
        "https://dataverse.harvard.edu/api/access/datafile/6154417", None, "adamson",
        "Adamson et al., Cell 167, 1867-1882 (2016): CRISPRi of unfolded-protein-response genes in K562 cells.",
    ),
    "replogle2022_k562_essential": GearsRecord(
        "https://dataverse.harvard.edu/api/access/datafile/7458695", None, "replogle_k562_essential",
        "Replogle et al., Cell 185, 2559-2575 (2022): genome-scale CRISPRi Perturb-seq, K562 essential genes "
        "(GEARS' filtered subset).",
    ),
}


def fetch_gears(name: str, *, cache_dir: str | os.PathLike | None = None, known_hash: str | None = None,
                progressbar: bool = False, **read_kwargs):
    """Download (once) a GEARS-format dataset and read it with :func:`~genohoption.datasets.read_gears`.

    Parameters
    ----------
    name
        ``"norman2019"``, ``"adamson2016"`` or ``"replogle2022_k562_essential"`` (the datasets of
        :func:`norman2019`, :func:`adamson2016` and :func:`replogle2022_k562_essential`).
    cache_dir
        Where the archive and its extracted files are kept; default pooch's user cache
        (``pooch.os_cache("genohoption")``, e.g. ``~/.cache/genohoption``). A file already there (with
        the expected hash, when one is known) is not downloaded again.
    known_hash
        Hash of the archive (``"md5:…"`` / ``"sha256:…"``) to check; default the registry's.
    progressbar
        Show pooch's download progress bar (needs ``tqdm``).
    **read_kwargs
        Passed to :func:`~genohoption.datasets.read_gears` (``drop_unmeasured``, ...).

    Returns
    -------
    The AnnData of :func:`~genohoption.datasets.read_gears` (conditions in ``obs["condition"]``, symbols
    in ``var["gene_name"]``).

    Raises
    ------
    KeyError
        For an unknown ``name``.
    ValueError
        If the download does not match the hash.
    FileNotFoundError
        If the archive holds no ``perturb_processed.h5ad``.
    """
    import pooch

    if name not in GEARS_DATASETS:
        raise KeyError(f"Unknown GEARS dataset {name!r}; available: {sorted(GEARS_DATASETS)}.")
    record = GEARS_DATASETS[name]
    path = Path(cache_dir) if cache_dir is not None else Path(pooch.os_cache("genohoption"))
    files = pooch.retrieve(
        record.url,
        known_hash=known_hash if known_hash is not None else record.known_hash,
        fname=f"{record.folder}.zip",
        path=path,
        processor=pooch.Unzip(extract_dir=record.folder),
        progressbar=progressbar,
    )
    found = sorted(f for f in files if Path(f).name == GEARS_FILE)
    if not found:
        raise FileNotFoundError(f"The {name} archive in {path} holds no {GEARS_FILE}; delete {path / record.folder}* "
                                "and call again to download it anew.")
    logger.info("reading %s", found[0])
    return read_gears(found[0], **read_kwargs)


def norman2019(*, cache_dir: str | os.PathLike | None = None, **read_kwargs):
    """Norman et al. 2019 (Science): CRISPRa single and double perturbations in K562 cells, GEARS format.

    GEARS' processed file (Roohani et al., Nat Biotechnol 2023), downloaded once from Harvard Dataverse
    (https://dataverse.harvard.edu/api/access/datafile/6154020, the URL of GEARS' ``PertData.load``) with
    pooch and read with :func:`~genohoption.datasets.read_gears`; see :func:`fetch_gears`.

    Parameters
    ----------
    cache_dir
        Cache directory; default pooch's user cache (``pooch.os_cache("genohoption")``).
    **read_kwargs
        Passed to :func:`~genohoption.datasets.read_gears`.

    Returns
    -------
    AnnData in GEARS layout (``obs["condition"]``, ``var["gene_name"]``, log-normalised ``X``).
    """
    return fetch_gears("norman2019", cache_dir=cache_dir, **read_kwargs)


def adamson2016(*, cache_dir: str | os.PathLike | None = None, **read_kwargs):
    """Adamson et al. 2016 (Cell): CRISPRi of unfolded-protein-response genes in K562 cells, GEARS format.

    GEARS' processed file (Roohani et al., Nat Biotechnol 2023), downloaded once from Harvard Dataverse
    (https://dataverse.harvard.edu/api/access/datafile/6154417, the URL of GEARS' ``PertData.load``) with
    pooch and read with :func:`~genohoption.datasets.read_gears`; see :func:`fetch_gears`.

    Parameters
    ----------
    cache_dir
        Cache directory; default pooch's user cache (``pooch.os_cache("genohoption")``).
    **read_kwargs
        Passed to :func:`~genohoption.datasets.read_gears`.

    Returns
    -------
    AnnData in GEARS layout (``obs["condition"]``, ``var["gene_name"]``, log-normalised ``X``).
    """
    return fetch_gears("adamson2016", cache_dir=cache_dir, **read_kwargs)


def replogle2022_k562_essential(*, cache_dir: str | os.PathLike | None = None, **read_kwargs):
    """Replogle et al. 2022 (Cell): CRISPRi Perturb-seq of K562 essential genes, GEARS' filtered subset.

    GEARS' processed file (Roohani et al., Nat Biotechnol 2023), downloaded once from Harvard Dataverse
    (https://dataverse.harvard.edu/api/access/datafile/7458695, the URL of GEARS' ``PertData.load``) with
    pooch and read with :func:`~genohoption.datasets.read_gears`; see :func:`fetch_gears`.

    Parameters
    ----------
    cache_dir
        Cache directory; default pooch's user cache (``pooch.os_cache("genohoption")``).
    **read_kwargs
        Passed to :func:`~genohoption.datasets.read_gears`.

    Returns
    -------
    AnnData in GEARS layout (``obs["condition"]``, ``var["gene_name"]``, log-normalised ``X``).
    """
    return fetch_gears("replogle2022_k562_essential", cache_dir=cache_dir, **read_kwargs)
