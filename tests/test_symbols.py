"""HGNC symbol resolution (genohoption._symbols) and its packaged table."""

from __future__ import annotations

import numpy as np
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


def test_table_content_and_checksum(tmp_path, monkeypatch):
    table = _symbols.hgnc_table()
    assert list(table.columns) == ["name", "symbol", "kind"]
    counts = table["kind"].value_counts()
    assert counts["previous"] > 15_000 and counts["alias"] > 40_000 and counts["uniprot"] > 20_000
    assert not table.loc[table["kind"] != "uniprot", "name"].duplicated().any()
    data = (_symbols._DATA_DIR / _symbols._SYMBOLS_FILE).read_bytes()
    (tmp_path / _symbols._SYMBOLS_FILE).write_bytes(data[:-10] + b"0" * 10)
    monkeypatch.setattr(_symbols, "_DATA_DIR", tmp_path)
    _symbols.hgnc_table.cache_clear()
    try:
        with pytest.raises(OSError, match="sha256"):
            _symbols.hgnc_table()
        (tmp_path / _symbols._SYMBOLS_FILE).unlink()
        with pytest.raises(FileNotFoundError, match="make_default_prior"):
            _symbols.hgnc_table()
    finally:
        _symbols.hgnc_table.cache_clear()
