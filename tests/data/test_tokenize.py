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


def test_token_random_streams_are_scgpts_draws():
    """TokenRandom draws what scGPT draws from NumPy's and torch's global generators, cell after cell."""
    import numpy as np

    from genohoption.data import TokenRandom

    mask = torch.tensor([[True, False, True, True], [False, False, False, False], [True, True, False, True]])
    u = TokenRandom(3).uniform_at(mask)
    np.random.seed(3)
    expected = [np.random.rand(3), np.random.rand(0), np.random.rand(3)]  # scGPT's _digitize, one cell at a time
    assert u[0, mask[0]].tolist() == expected[0].tolist() and u[2, mask[2]].tolist() == expected[2].tolist()
    assert (u[~mask] == 0).all()
    keep = torch.zeros(3, 12, dtype=torch.bool)
    keep[0, :9], keep[1, :3], keep[2, 2:12] = True, True, True
    rng = TokenRandom(8)
    score = rng.subset_score(keep, 4)
    torch.manual_seed(8)
    first = torch.nonzero(keep[0]).flatten()[torch.randperm(9)[:4]]  # scGPT's DataCollator._sample
    third = torch.nonzero(keep[2]).flatten()[torch.randperm(10)[:4]]
    assert set(torch.nonzero(score[0]).flatten().tolist()) == set(first.tolist())
    assert score[1].tolist() == keep[1].float().tolist()  # short enough: every gene stays
    assert set(torch.nonzero(score[2]).flatten().tolist()) == set(third.tolist())
    tok = tokenize(keep.float(), 5, score=score)
    assert sorted(tok.genes[0, 1:].tolist()) == sorted(first.tolist())
