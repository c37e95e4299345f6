"""GEARS condition parsing (plain Python)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from genohoption._conditions import GeneUniverse, condition_gene_indices, gene_universe, parse_condition


@pytest.mark.parametrize(
    ("cond", "genes"),
    [("ctrl", ()), ("A+ctrl", ("A",)), ("ctrl+A", ("A",)), ("A+B", ("A", "B")), ("A+B+C", ("A", "B", "C"))],
)
def test_parse_condition(cond, genes):
    assert parse_condition(cond) == genes


@pytest.mark.parametrize("bad", ["", "+", "A+", "+A", "A +B", "ctrl+ctrl", "A+A"])
def test_parse_condition_malformed(bad):
    with pytest.raises(ValueError, match="Malformed"):
        parse_condition(bad)
    with pytest.raises(TypeError):
        parse_condition(3)


def test_condition_gene_indices():
    table = condition_gene_indices(["ctrl", "B+ctrl", "C+A"], ["A", "B", "C"])
    np.testing.assert_array_equal(table, [[-1, -1], [1, -1], [2, 0]])
    with pytest.raises(KeyError, match="'D'"):
        condition_gene_indices(["D+ctrl"], ["A", "B"])


def test_gene_universe_from_network_and_extra_genes():
    import pandas as pd

    from genohoption._conditions import GeneUniverse, gene_universe

    net = pd.DataFrame({"source": ["TF1", "tf1", "B", "TF2", "TF1", "C"],
                        "target": ["A", "C", "TF3", "TF2", "TF2", "c"]})
    u = gene_universe(["A", "B", "C"], net, extra_genes=["ZZ", "A"])
    # unmeasured genes: the network's (matched case-insensitively, first spelling kept) and the extra ones, sorted
    assert u.extra.tolist() == ["TF1", "TF2", "TF3", "ZZ"] and len(u) == 7
    # TF1 regulates A and C; TF3 is B's target; TF2 only has a self-edge and an edge to another unmeasured gene
    assert [u.neighbors(u.find(g)).tolist() for g in ["TF1", "TF2", "TF3", "ZZ"]] == [[0, 2], [], [1], []]
    assert u.find("A") == 0 and u.find("TF3") == 5 and u.find("nope") is None
    # a symbol written in another letter case is not found silently
    assert u.find("c") is None and u.lookup("c") == (2, "case") and u.lookup("tf3") == (5, "case")
    table = condition_gene_indices(["ctrl", "TF1+ctrl", "A+TF3", "ZZ+ctrl"], u)
    np.testing.assert_array_equal(table, [[-1, -1], [3, -1], [0, 5], [6, -1]])
    with pytest.raises(KeyError, match=r"'NOPE'.*gene universe.*extra_genes"):
        condition_gene_indices(["NOPE+ctrl"], u)
    back = GeneUniverse.from_state(u.measured, u.to_state())
    np.testing.assert_array_equal(back.indptr, u.indptr)
    assert back.extra.tolist() == u.extra.tolist() and back.find("TF1") == 3
    only = GeneUniverse.from_state(["A"], {})  # a registry saved before gene universes: measured genes only
    assert len(only) == 1
    with pytest.raises(ValueError, match="indptr"):
        GeneUniverse(["A"], ["X"], [0], [])


# --- gene symbols: HGNC previous / alias symbols and letter case ----------------------------------------


def test_condition_by_previous_symbol_is_the_approved_gene(caplog):
    """Papalexi's target MARCH8 is MARCHF8 (HGNC's approved symbol since 2020) in the default prior."""
    net = pd.DataFrame({"source": ["MARCHF8", "TP53", "SEPTIN7"], "target": ["STAT1", "CDKN1A", "JAK2"]})
    u = gene_universe(["STAT1", "CDKN1A", "JAK2"], net)
    assert u.extra.tolist() == ["MARCHF8", "SEPTIN7", "TP53"]
    with caplog.at_level(logging.INFO, logger="genohoption._conditions"):
        by_alias = condition_gene_indices(["MARCH8+ctrl", "p53+SEPT7", "ctrl"], u)
    np.testing.assert_array_equal(by_alias, condition_gene_indices(["MARCHF8+ctrl", "TP53+SEPTIN7", "ctrl"], u))
    np.testing.assert_array_equal(by_alias, [[3, -1], [5, 4], [-1, -1]])
    text = caplog.text
    assert "gene 'MARCH8' is 'MARCHF8' in the gene universe (HGNC previous symbol of MARCHF8)" in text
    assert "gene 'p53' is 'TP53' in the gene universe (HGNC alias symbol of TP53)" in text
    assert u.neighbors(u.find("MARCH8")).tolist() == [0]


def test_approved_symbol_finds_a_gene_measured_under_a_previous_symbol():
    # an older dataset measures MARCH8; the network (approved symbols) has MARCHF8 regulating STAT1
    net = pd.DataFrame({"source": ["MARCHF8", "IRF1"], "target": ["STAT1", "MARCHF8"]})
    u = gene_universe(["MARCH8", "STAT1"], net)
    assert u.extra.tolist() == ["IRF1"]  # MARCHF8 is the measured MARCH8, not a new gene
    assert u.neighbors(u.find("IRF1")).tolist() == [0]
    np.testing.assert_array_equal(condition_gene_indices(["MARCHF8+ctrl", "MARCH8+ctrl"], u), [[0], [0]])


def test_wrong_letter_case_is_an_error_naming_the_symbol():
    u = gene_universe(["STAT1", "Ctcf"], pd.DataFrame({"source": ["CTCF", "TP53"], "target": ["STAT1", "STAT1"]}))
    with pytest.raises(KeyError, match=r"'stat1' → write 'STAT1'") as err:
        condition_gene_indices(["stat1+ctrl", "STAT1+ctrl"], u, what="adata.obs['condition']")
    assert "adata.obs['condition']" in str(err.value)
    with pytest.raises(KeyError, match=r"'P53' → write 'TP53'"):  # HGNC's alias is 'p53'
        condition_gene_indices(["P53+ctrl"], u)
    # a mouse gene measured as Ctcf: the network's CTCF is that gene, written as measured
    assert u.extra.tolist() == ["TP53"]
    with pytest.raises(KeyError, match=r"'CTCF' → write 'Ctcf'"):
        condition_gene_indices(["CTCF+ctrl"], u)
    np.testing.assert_array_equal(condition_gene_indices(["Ctcf+ctrl"], u), [[1]])
    with pytest.raises(KeyError, match=r"'ctcf' → write 'CTCF'"):  # a plain list of symbols too
        condition_gene_indices(["ctcf+ctrl"], ["CTCF", "STAT1"])
    with pytest.raises(KeyError, match=r"extra_genes.*'tp53' → write 'TP53'"):
        gene_universe(["STAT1"], pd.DataFrame({"source": ["TP53"], "target": ["STAT1"]}), extra_genes=["tp53"])
    assert GeneUniverse(["CTCF"]).lookup("Ctcf") == (0, "case")


def test_extra_genes_by_alias(caplog):
    net = pd.DataFrame({"source": ["MARCHF8"], "target": ["STAT1"]})
    with caplog.at_level(logging.INFO, logger="genohoption._conditions"):
        u = gene_universe(["STAT1"], net, extra_genes=["MARCH8", "SEPT7", "SEPTIN7", "FOO1"])
    # MARCH8 is the network's MARCHF8; SEPT7 (not in the network) is added under its approved symbol, once
    assert u.extra.tolist() == ["FOO1", "MARCHF8", "SEPTIN7"]
    assert "gene 'MARCH8' is 'MARCHF8'" in caplog.text and "gene 'SEPT7' is 'SEPTIN7'" in caplog.text
    np.testing.assert_array_equal(condition_gene_indices(["SEPT7+MARCH8"], u), [[3, 2]])


def test_papalexi_targets_by_their_own_symbols(shared_data):
    """Every target of the Papalexi screen is in the default prior's universe, MARCH8 as MARCHF8."""
    import anndata as ad

    import genohoption as gh

    adata = ad.read_h5ad(shared_data / "perturbation" / "papalexi2021_thp1_gears.h5ad", backed="r")
    conditions = sorted(set(adata.obs["condition"].astype(str)))
    u = gene_universe(adata.var["gene_name"].astype(str).to_numpy(), gh.pp.read_prior("default"))
    table = condition_gene_indices(conditions, u)
    assert (table[np.array(conditions) != "ctrl", 0] >= 0).all() and len(conditions) == 26
    march8 = table[conditions.index("MARCH8+ctrl"), 0]
    assert u.symbol(march8) == "MARCHF8" and march8 >= u.n_measured
    assert u.lookup("MARCH8") == (march8, "alias")
    adata.file.close()
