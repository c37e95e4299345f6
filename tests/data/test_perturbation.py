"""Condition parsing, perturbation flags, the include_zero tokenizer option and the paired loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genohoption.data import tokenize
from genohoption.data._perturbation import condition_gene_indices, parse_condition
from genohoption.module._perturbation import perturbation_flags


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


def test_flags_and_include_zero():
    flags = perturbation_flags(torch.tensor([[2, -1], [-1, -1]]), 4)
    assert flags.tolist() == [[False, False, True, False], [False] * 4]
    x = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    default = tokenize(x, 10)
    assert default.genes.tolist() == [[-1, 1, 3], [-1, 0, -1]]  # expressed genes only (unchanged)
    forced = tokenize(x, 10, force=flags)
    assert forced.genes[0].tolist() == [-1, 1, 2, 3]
    every = tokenize(x, 10, include_zero=True)
    assert every.genes.tolist() == [[-1, 0, 1, 2, 3]] * 2 and not every.padding_mask.any()
    np.testing.assert_array_equal(every.values[:, 1:].numpy(), x.numpy())
    # too long: forced gene kept, most expressed next
    short = tokenize(x, 3, include_zero=True, force=flags)
    assert short.genes[0].tolist() == [-1, 2, 3]
