"""Papalexi et al. 2021 (THP-1 CRISPR knock-out screen), downloaded once with pooch and converted to GEARS format."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as K

logger = logging.getLogger(__name__)


class RdaFile(NamedTuple):
    """An R data file of a GitHub repository at a fixed commit, with its SHA256."""

    url: str
    known_hash: str
    fname: str


# The sceptre authors' subset of the screen (290 random genes + 9 targets, every cell) and the per-cell
# covariates they computed on the whole transcriptome (UMI totals for the normalisation); both MIT.
PAPALEXI_FILES = (
    RdaFile("https://raw.githubusercontent.com/Katsevich-Lab/sceptredata/ec722d5df90dfd34ace6cc9a5745ab6a5c2a6731/"
            "data/lowmoi_example_data.rda",
            "sha256:e3f8ad09bb4b1d0deeeec2850a2d96f8f5062fef31a9ab1cc080e60560421b6a", "lowmoi_example_data.rda"),
    RdaFile("https://raw.githubusercontent.com/Katsevich-Lab/sceptre/8da86f3304f3656a18d1ed1746465cd5745249de/"
            "data/covariate_data_frame_lowmoi.rda",
            "sha256:5c1f7f5b4ef74150f1c13f42bbbdd1dc7dac981f55ee7c25f16bbbe1eaa7a88f", "covariate_data_frame_lowmoi.rda"),
)

MIN_GUIDE_UMIS = 5
"""A cell is assigned its most abundant guide when that guide has at least this many UMIs ..."""

MIN_GUIDE_FRACTION = 0.8
"""... and at least this fraction of the cell's guide UMIs (sceptre's ``"maximum"`` assignment)."""

CELL_LINE = "THP-1"
NON_TARGETING = "non-targeting"


def _triplet_matrix(obj, attrs):
    """Rdata constructor of the Matrix package's ``dgTMatrix`` (0-based triplets): a CSC matrix and its names."""
    matrix = sp.coo_matrix((np.asarray(attrs["x"], dtype=np.float64),
                            (np.asarray(attrs["i"]), np.asarray(attrs["j"]))),
                           shape=tuple(int(n) for n in attrs["Dim"])).tocsc()
    rows = attrs["Dimnames"][0]
    return matrix, (None if rows is None else np.asarray(rows, dtype=str))


def _read_rda(path: str | os.PathLike) -> dict:
    import rdata

    constructors = {**rdata.conversion.DEFAULT_CLASS_MAP, "dgTMatrix": _triplet_matrix}
    return rdata.read_rda(path, constructor_dict=constructors)


def papalexi_to_gears(lowmoi, covariates: pd.DataFrame):
    """Convert sceptre's Papalexi objects into a GEARS-format AnnData (one guide per cell).

    Parameters
    ----------
    lowmoi
        ``lowmoi_example_data`` as read from its ``.rda`` file: a mapping with ``response_matrix`` and
        ``grna_matrix`` (each ``(matrix, row names)``, genes / guides × cells, UMI counts) and
        ``grna_target_data_frame`` (columns ``grna_id``, ``grna_target``; ``"non-targeting"`` for controls).
    covariates
        ``covariate_data_frame_lowmoi``: one row per cell, ``response_n_umis`` (UMIs over the whole
        transcriptome), ``response_n_nonzero``, ``bio_rep``, ``p_mito``.

    Returns
    -------
    AnnData
        Cells whose most abundant guide has at least :data:`MIN_GUIDE_UMIS` UMIs and
        :data:`MIN_GUIDE_FRACTION` of the cell's guide UMIs, × the measured genes. ``X``:
        ``log1p(counts / total * 1e4)`` with the whole-transcriptome total (GEARS' convention), float32 CSR;
        ``layers["counts"]``; ``obs["condition"]`` (``"GENE+ctrl"``, ``"ctrl"`` for non-targeting guides),
        ``cell_type``, ``guide_id``, ``grna_n_umis_top``, ``grna_umi_frac_top``, ``bio_rep``,
        ``total_counts_full``, ``n_genes_full``, ``p_mito``, ``dose_val``, ``condition_name``;
        ``var["gene_name"]``. Cells are named ``papalexi_cell<index among all cells>``.
    """
    import anndata as ad

    counts, genes = lowmoi["response_matrix"]
    guides_matrix, guides = lowmoi["grna_matrix"]
    targets = lowmoi["grna_target_data_frame"]
    target_of = dict(zip(targets["grna_id"].astype(str), targets["grna_target"].astype(str), strict=True))

    guide_umis = guides_matrix.toarray()
    top = guide_umis.argmax(0)
    top_umis = guide_umis.max(0)
    total_umis = guide_umis.sum(0)
    fraction = np.divide(top_umis, total_umis, out=np.zeros_like(top_umis), where=total_umis > 0)
    cells = np.flatnonzero((top_umis >= MIN_GUIDE_UMIS) & (fraction >= MIN_GUIDE_FRACTION))

    guide = guides[top[cells]]
    target = np.array([target_of[g] for g in guide])
    condition = np.where(target == NON_TARGETING, "ctrl", np.char.add(target, "+ctrl"))
    dose = np.where(condition == "ctrl", "1", "1+1")
    totals = covariates["response_n_umis"].to_numpy(dtype=np.int64)[cells]

    raw = counts[:, cells].T.tocsr().astype(np.float32)
    X = (sp.diags(1e4 / totals) @ raw).tocsr()
    X.data = np.log1p(X.data)
    obs = pd.DataFrame({
        "condition": pd.Categorical(condition),
        "cell_type": pd.Categorical([CELL_LINE] * len(cells)),
        "guide_id": pd.Categorical(guide),
        "grna_n_umis_top": top_umis[cells].astype(np.int32),
        "grna_umi_frac_top": fraction[cells].astype(np.float32),
        "bio_rep": pd.Categorical(covariates["bio_rep"].astype(str).to_numpy()[cells]),
        "total_counts_full": totals,
        "n_genes_full": covariates["response_n_nonzero"].to_numpy(dtype=np.int64)[cells],
        "p_mito": covariates["p_mito"].to_numpy(dtype=np.float32)[cells],
        "dose_val": pd.Categorical(dose),
        "condition_name": pd.Categorical([f"{CELL_LINE}_{c}_{d}" for c, d in zip(condition, dose, strict=True)]),
    }, index=pd.Index([f"papalexi_cell{i:05d}" for i in cells]))
    adata = ad.AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame({"gene_name": genes}, index=genes),
                       layers={"counts": raw})
    adata.uns[K.DATASET_PERTURBATION_TYPE_KEY] = "CRISPR knock-out (Cas9), single gRNA per cell"
    adata.uns[K.DATASET_SOURCE_KEY] = ("Papalexi et al. 2021 Nat Genet (GEO GSE153056), ECCITE-seq CRISPR-KO screen in stimulated "
                           "THP-1 cells, as subset by the sceptre authors: " + "; ".join(f.url for f in PAPALEXI_FILES))
    return adata


def papalexi2021(*, cache_dir: str | os.PathLike | None = None, progressbar: bool = False):
    """Papalexi et al. 2021 (Nat Genet): CRISPR knock-out of 25 immune-checkpoint regulators in THP-1 cells.

    The ECCITE-seq screen of stimulated THP-1 cells (GEO GSE153056) as the sceptre authors subset it
    (every cell; 290 random genes and 9 of the targeted genes), downloaded once with pooch from two
    MIT-licensed GitHub files at fixed commits, hash-checked (``Katsevich-Lab/sceptredata``
    ``data/lowmoi_example_data.rda`` and ``Katsevich-Lab/sceptre`` ``data/covariate_data_frame_lowmoi.rda``,
    about 1.6 MB), read without R (the ``rdata`` package) and converted to GEARS format: 16,192 cells ×
    299 genes, 25 single knock-outs (33–1,064 cells each) and 1,923 control cells; 9 of the 25 targets
    are measured genes.

    Parameters
    ----------
    cache_dir
        Where the two files are kept; default pooch's user cache (``pooch.os_cache("genohoption")``, e.g.
        ``~/.cache/genohoption``). Files already there with the expected hashes are not downloaded again.
    progressbar
        Show pooch's download progress bar (needs ``tqdm``).

    Returns
    -------
    AnnData
        GEARS layout, as :func:`~genohoption.datasets.read_gears` gives: ``obs["condition"]``
        (``"GENE+ctrl"`` or ``"ctrl"``), symbols in ``var_names`` and ``var["gene_name"]``, ``X``
        log-normalised with the whole-transcriptome UMI totals, ``layers["counts"]``; also the guide, its
        UMIs and UMI fraction, the biological replicate and the fraction of mitochondrial UMIs in ``obs``.
        A cell keeps its most abundant guide when that guide has at least 5 UMIs and 80 % of the cell's
        guide UMIs (78 % of the cells).

    Raises
    ------
    ValueError
        If a download does not match its hash.

    Examples
    --------
    >>> import genohoption as gh
    >>> screen = gh.datasets.papalexi2021()  # doctest: +SKIP
    >>> screen.obs["condition"].nunique()  # doctest: +SKIP
    26
    """
    import pooch

    path = Path(cache_dir) if cache_dir is not None else Path(pooch.os_cache("genohoption"))
    files = [pooch.retrieve(f.url, known_hash=f.known_hash, fname=f.fname, path=path, progressbar=progressbar)
             for f in PAPALEXI_FILES]
    logger.info("reading %s", ", ".join(files))
    lowmoi = _read_rda(files[0])["lowmoi_example_data"]
    covariates = _read_rda(files[1])["covariate_data_frame_lowmoi"]
    return papalexi_to_gears(lowmoi, covariates)
