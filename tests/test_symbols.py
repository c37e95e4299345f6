"""HGNC symbol resolution (genohoption._symbols) and its packaged table."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from genohoption import _symbols


def test_approved_symbol_exact_spelling():
    assert _symbols.approved_symbol("MARCH8") == "MARCHF8"  # renamed by HGNC in 2020
    assert _symbols.approved_symbol("SEPT7") == "SEPTIN7"
    assert _symbols.approved_symbol("p53") == "TP53"
    assert _symbols.approved_symbol("P04637") == "TP53"  # UniProt accession
    assert _symbols.symbol_kind("MARCH8") == "previous" and _symbols.symbol_kind("p53") == "alias"
    # an approved symbol, a wrong case, an unknown name and an accession of two genes: not resolved
    for name in ("MARCHF8", "march8", "NOT_A_GENE", "P78358"):
        assert _symbols.approved_symbol(name) is None, name


def test_symbol_keys_ignore_case_and_resolve():
    keys = _symbols.symbol_keys(["march8", "MarchF8", "MARCH8", "Ctcf", "p53", "P53", "P04637", "GENE1", "H2AC18"])
    assert keys.tolist() == ["MARCHF8", "MARCHF8", "MARCHF8", "CTCF", "TP53", "TP53", "TP53", "GENE1", "H2AC18"]
    assert _symbols.symbol_keys(np.array([], dtype=str)).size == 0


def test_table_content():
    table = _symbols.hgnc_table()
    assert list(table.columns) == ["name", "symbol", "kind"]
    counts = table["kind"].value_counts()
    assert counts["previous"] > 15_000 and counts["alias"] > 40_000 and counts["uniprot"] > 20_000
    assert not table.loc[table["kind"] != "uniprot", "name"].duplicated().any()


def test_packaged_files_are_checked(tmp_path):
    path = tmp_path / "table.parquet"
    pd.DataFrame({"name": ["MARCH8"], "symbol": ["MARCHF8"]}).to_parquet(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert _symbols.read_packaged_parquet(path, sha, "HGNC symbol table")["symbol"].tolist() == ["MARCHF8"]
    with pytest.raises(OSError, match=r"packaged HGNC symbol table .* corrupted .*sha256 .*make_default_prior"):
        _symbols.read_packaged_parquet(path, "0" * 64, "HGNC symbol table")
    with pytest.raises(FileNotFoundError, match=r"missing; reinstall .*make_default_prior"):
        _symbols.read_packaged_parquet(tmp_path / "nope.parquet", sha, "HGNC symbol table")
