"""GEARS condition parsing (plain Python)."""

from __future__ import annotations

import numpy as np
import pytest

from genohoption._conditions import condition_gene_indices, parse_condition


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
    u = gene_universe(["A", "B", "C"], net, extra_genes=["ZZ", "a"])
    # unmeasured genes: the network's (case-insensitive, first spelling kept) and the extra ones, sorted
    assert u.extra.tolist() == ["TF1", "TF2", "TF3", "ZZ"] and len(u) == 7
    # TF1 regulates A and C; TF3 is B's target; TF2 only has a self-edge and an edge to another unmeasured gene
    assert [u.neighbors(u.find(g)).tolist() for g in ["TF1", "TF2", "TF3", "ZZ"]] == [[0, 2], [], [1], []]
    assert u.find("A") == 0 and u.find("c") == 2 and u.find("tf3") == 5 and u.find("nope") is None
    table = condition_gene_indices(["ctrl", "TF1+ctrl", "A+TF3", "zz+ctrl"], u)
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
