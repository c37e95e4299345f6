"""Perturbation flags and the include_zero / force options of the tokenizer."""

from __future__ import annotations

import numpy as np
import torch

from genohoption.data import tokenize
from genohoption.module._perturbation import perturbation_flags


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
