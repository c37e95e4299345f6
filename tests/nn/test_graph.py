from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genohoption.nn import BatchGraph, induced_batch_graph

torch.set_num_threads(1)


def _naive_edges(tokens, indptr, indices, cls_token):
    """Per-cell Python-loop builder: the definition of the induced graph."""
    b, n_tok = tokens.shape
    adj = {g: set(indices[indptr[g] : indptr[g + 1]].tolist()) for g in range(len(indptr) - 1)}
    edges = set()
    for c in range(b):
        real = [i for i in range(n_tok) if tokens[c, i] >= 0 or (cls_token and i == 0)]
        genes = [i for i in real if not (cls_token and i == 0)]
        for i in real:
            edges.add((c * n_tok + i, c * n_tok + i))
        for i in genes:
            for j in genes:
                if tokens[c, j] in adj[tokens[c, i]]:
                    edges.add((c * n_tok + i, c * n_tok + j))
            if cls_token:
                edges.add((c * n_tok, c * n_tok + i))
                edges.add((c * n_tok + i, c * n_tok))
    return edges


def _edges(g: BatchGraph):
    rows = g.row_ids().tolist()
    return set(zip(rows, g.indices.tolist(), strict=True))


def _random_graph(n_genes, density, seed):
    m = sp.random(n_genes, n_genes, density=density, random_state=seed, format="csr")
    m.data[:] = 1.0
    m.setdiag(0)
    m.eliminate_zeros()
    m = m.tolil()
    m[3, :] = 0  # gene 3 has no global neighbours
    m[5, 5] = 1  # a global self-loop
    return m.tocsr()


@pytest.mark.parametrize("cls_token", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_induced_matches_naive(cls_token, seed):
    rng = np.random.default_rng(seed)
    n_genes, b, n_tok = 40, 5, 12
    m = _random_graph(n_genes, 0.15, seed)
    tokens = np.full((b, n_tok), -1, dtype=np.int64)
    for c, length in enumerate([12, 7, 1, 4, 10]):
        tokens[c, :length] = rng.choice(n_genes, size=length, replace=False)
    tokens[0, 2] = 3  # token whose gene has no neighbours
    tokens[1, 1] = 5  # global self-loop
    tokens[4, 3] = tokens[4, 4] = 5  # duplicated gene id with a self-loop
    tokens[3, 1] = tokens[3, 2] = 7  # duplicated gene id
    g = induced_batch_graph(
        torch.as_tensor(tokens), torch.as_tensor(m.indptr), torch.as_tensor(m.indices), cls_token=cls_token
    )
    expected = _naive_edges(tokens, m.indptr, m.indices, cls_token)
    assert _edges(g) == expected
    assert g.n_edges == len(expected)
    # CSR structure: rows sorted, indptr consistent
    assert g.indptr[-1] == g.n_edges
    for r in range(b * n_tok):
        row = g.indices[g.indptr[r] : g.indptr[r + 1]]
        assert torch.all(row[1:] > row[:-1])
    # padding has no edges either way
    pad = torch.nonzero(torch.as_tensor(tokens).reshape(-1) < 0).flatten()
    if cls_token:
        pad = pad[pad % n_tok != 0]
    assert not torch.isin(g.indices, pad).any()
    assert torch.all(g.indptr[pad + 1] == g.indptr[pad])


def test_dense_mask_and_transpose():
    m = _random_graph(30, 0.2, 4)
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5, -1, -1], [0, 6, 7, 8, 9, 10, 11, 12]])
    g = induced_batch_graph(tokens, torch.as_tensor(m.indptr), torch.as_tensor(m.indices))
    mask = g.to_dense_mask()
    assert mask.shape == (2, 8, 8)
    assert mask.sum() == g.n_edges
    assert mask[0, 6].sum() == 0 and mask[0, :, 6].sum() == 0
    assert mask[:, 0, :].sum() == 6 + 8  # CLS attends to every real token and itself
    t_indptr, t_indices, perm = g.transpose_perm()
    rows = g.row_ids()
    t_rows = torch.repeat_interleave(torch.arange(16), t_indptr.diff())
    t_edges = set(zip(t_indices.tolist(), t_rows.tolist(), strict=True))
    assert t_edges == _edges(g)
    assert torch.equal(rows[perm], t_indices)


def test_head_layout():
    m = _random_graph(30, 0.2, 5)
    tokens = torch.tensor([[0, 1, 2, 3, -1], [0, 6, 7, 8, 9], [0, -1, -1, -1, -1]])
    g = induced_batch_graph(tokens, torch.as_tensor(m.indptr), torch.as_tensor(m.indices))
    h, n_tok = 3, 5
    lay = g.head_layout(h)
    assert lay.nnz == h * g.n_edges and lay.n_rows == 3 * h * n_tok
    dense = g.to_dense_mask()
    crow, col = lay.crow.long(), lay.col.long()
    for b in range(3):
        for hh in range(h):
            for i in range(n_tok):
                r = (b * h + hh) * n_tok + i
                got = col[crow[r] : crow[r + 1]] - (b * h + hh) * n_tok
                assert torch.equal(got, torch.nonzero(dense[b, i]).flatten())
    # transpose permutation maps transposed edges to their values
    vals = torch.arange(lay.nnz)
    rows_t = torch.repeat_interleave(torch.arange(lay.n_rows), lay.t_crow.long().diff())
    assert torch.equal(lay.rows[vals[lay.t_perm]], lay.t_col.long())
    assert torch.equal(col[vals[lay.t_perm]], rows_t)
    assert g.head_layout(h) is lay  # cached
    assert lay.empty_rows is not None and lay.empty_rows.numel() == h * (1 + 4)


def test_to_device_and_errors():
    m = _random_graph(10, 0.3, 0)
    ip, ix = torch.as_tensor(m.indptr), torch.as_tensor(m.indices)
    g = induced_batch_graph(torch.tensor([[0, 1, 2]]), ip, ix)
    assert g.to("cpu") is g and g.device.type == "cpu"
    with pytest.raises(ValueError, match="in \\[0, 10\\)"):
        induced_batch_graph(torch.tensor([[0, 1, 10]]), ip, ix)
    with pytest.raises(ValueError, match="shape \\(B, L\\)"):
        induced_batch_graph(torch.tensor([0, 1]), ip, ix)
    with pytest.raises(ValueError, match="indptr"):
        BatchGraph(torch.zeros(3, dtype=torch.long), torch.zeros(0, dtype=torch.long), 1, 3)


def test_cls_only_and_all_padding():
    m = _random_graph(10, 0.3, 0)
    tokens = torch.tensor([[7, -1, -1], [-1, -1, -1]])
    g = induced_batch_graph(tokens, torch.as_tensor(m.indptr), torch.as_tensor(m.indices))
    assert _edges(g) == {(0, 0), (3, 3)}  # CLS self-loops only
    g2 = induced_batch_graph(tokens, torch.as_tensor(m.indptr), torch.as_tensor(m.indices), cls_token=False)
    assert _edges(g2) == {(0, 0)} | ({(0, 0)} if m[7, 7] else set())
