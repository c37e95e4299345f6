import pytest
import torch

from genohoption.data import PAD, tokenize


def test_tokenize_known_answer():
    x = torch.tensor([[0.0, 2.0, 0.0, 1.0, 3.0], [0.0, 0.0, 5.0, 0.0, 0.0]])
    tok = tokenize(x, max_seq_len=8)
    # CLS first, then expressed genes in index order, padding last
    assert tok.genes.tolist() == [[PAD, 1, 3, 4], [PAD, 2, PAD, PAD]]
    assert tok.values.tolist() == [[0.0, 2.0, 1.0, 3.0], [0.0, 5.0, 0.0, 0.0]]
    assert tok.padding_mask.tolist() == [[False, False, False, False], [False, False, True, True]]
    assert tok.lengths.tolist() == [4, 2]


def test_tokenize_caps_to_top_expressed():
    x = torch.tensor([[0.5, 2.0, 0.1, 1.0, 3.0]])
    tok = tokenize(x, max_seq_len=3)  # CLS + 2 genes: the two most expressed
    assert tok.genes.tolist() == [[PAD, 1, 4]]
    assert tok.values.tolist() == [[0.0, 2.0, 3.0]]


def test_tokenize_sampling_is_a_random_subset_of_expressed_genes():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(50, 100)
    x[:, ::3] = 1.0  # 34 expressed genes
    tok = tokenize(x, max_seq_len=11, sample=True, generator=g)
    genes = tok.genes[:, 1:]
    assert genes.shape == (50, 10)
    assert bool((genes % 3 == 0).all())
    assert len({tuple(r) for r in genes.tolist()}) > 40  # different cells get different subsets
    assert bool((genes.diff(dim=1) > 0).all())  # sorted, no repeats


def test_tokenize_force_keeps_unexpressed_genes():
    x = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    force = torch.tensor([[False, False, False, True]])
    tok = tokenize(x, max_seq_len=3, force=force)
    assert tok.genes.tolist() == [[PAD, 0, 3]]


def test_tokenize_rejects_short_max_seq_len():
    with pytest.raises(ValueError, match="max_seq_len"):
        tokenize(torch.ones(2, 3), max_seq_len=1)
