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
