import numpy as np
import pytest
import torch

from genohoption.data import bin_values, rank_value_encode


def _counts(seed=0, shape=(6, 50)):
    x = np.random.default_rng(seed).poisson(1.2, shape).astype(np.float32)
    x[2] = 0  # an empty cell
    x[3, :] = np.arange(1, shape[1] + 1)  # all positive
    return torch.from_numpy(x)


def _scgpt_binning(row, n_bins):
    """scGPT's ``binning`` (scgpt/preprocess.py) with np.digitize, one cell at a time, in float64."""
    row = row.astype(np.float64)
    out = np.zeros_like(row)
    nz = row > 0
    if nz.any():
        edges = np.quantile(row[nz], np.linspace(0, 1, n_bins - 1))
        out[nz] = np.digitize(row[nz], edges)
    return out


@pytest.mark.parametrize("n_bins", [51, 5])
def test_bin_values_matches_per_cell_numpy(n_bins):
    x = _counts() * 0.37
    got = bin_values(x, n_bins).numpy()
    for i, row in enumerate(x.numpy()):
        np.testing.assert_array_equal(got[i], _scgpt_binning(row, n_bins))
    assert got.max() <= n_bins - 1 and got[x.numpy() > 0].min() >= 1
    assert (got[x.numpy() == 0] == 0).all()


def test_bin_values_both_sides_stays_in_left_right_range():
    x = _counts(1)
    left = bin_values(x, 11).numpy()
    both = bin_values(x, 11, side="both", generator=torch.Generator().manual_seed(0)).numpy()
    nz = x.numpy() > 0
    assert (both[~nz] == 0).all()
    assert (both[nz] <= left[nz]).all() and (both[nz] >= 1).all()


def test_bin_values_bad_input():
    with pytest.raises(ValueError, match="n_bins"):
        bin_values(torch.ones(2, 3), 2)
    with pytest.raises(ValueError, match="B, n_vars"):
        bin_values(torch.ones(3), 5)
    with pytest.raises(ValueError, match="side"):
        bin_values(torch.ones(2, 3), 5, side="right")


def _geneformer_reference(x, medians, max_len):
    """Geneformer's TranscriptomeTokenizer, one cell at a time (gene indices instead of token ids)."""
    out = []
    known = np.isfinite(medians) & (medians > 0)
    for row in x:
        with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero cell: no gene is kept anyway
            v = row / row.sum() * 10_000 / np.where(known, medians, 1.0)
        idx = np.flatnonzero((row > 0) & known)
        order = idx[np.argsort(-v[idx], kind="stable")]
        out.append(order[:max_len])
    return out


def test_rank_value_encode_matches_per_cell_reference():
    x = _counts(2)
    medians = np.random.default_rng(3).uniform(0.5, 3.0, x.shape[1]).astype(np.float32)
    medians[[1, 7]] = np.nan  # genes unknown to the model
    tok = rank_value_encode(x, torch.from_numpy(medians), 12)
    ref = _geneformer_reference(x.numpy(), medians, 12)
    for i, r in enumerate(ref):
        genes = tok.genes[i].numpy()
        n = len(r)
        np.testing.assert_array_equal(genes[:n], r)
        assert (genes[n:] == -1).all() and tok.padding_mask[i, n:].all() and not tok.padding_mask[i, :n].any()
        assert not np.isin([1, 7], genes).any()
    assert tok.genes.shape[1] == 12


def test_rank_value_encode_v2_special_tokens():
    x = _counts(4)
    n_vars = x.shape[1]
    tok = rank_value_encode(x, torch.ones(n_vars), 8, cls_token=True, eos_token=True)
    assert tok.genes.shape[1] == 8
    assert (tok.genes[:, 0] == -1).all() and not tok.padding_mask[:, 0].any()
    for i in range(x.shape[0]):
        n_genes = int(((tok.genes[i] >= 0) & (tok.genes[i] < n_vars)).sum())
        assert tok.genes[i, 1 + n_genes] == n_vars  # <eos> right after the last gene
        assert not tok.padding_mask[i, : 2 + n_genes].any() and tok.padding_mask[i, 2 + n_genes :].all()
    assert int(((tok.genes[2] >= 0) & (tok.genes[2] < n_vars)).sum()) == 0  # empty cell: <cls>, <eos>


def test_rank_value_encode_bad_input():
    with pytest.raises(ValueError, match="gene_medians"):
        rank_value_encode(torch.ones(2, 3), torch.ones(4), 5)
    with pytest.raises(ValueError, match="no room"):
        rank_value_encode(torch.ones(2, 3), torch.ones(3), 2, cls_token=True, eos_token=True)
