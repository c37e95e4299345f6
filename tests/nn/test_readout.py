"""Attention read-out: edge weights equal a dense softmax computed by hand; hooks only inside the block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genohoption.nn import GenoHoptionLayer, GraphDiffusionAttention, induced_batch_graph
from genohoption.nn._readout import AttentionReadout, edge_attention

torch.set_num_threads(1)


def _graph(seed=0, n_genes=25):
    m = sp.random(n_genes, n_genes, density=0.2, random_state=seed, format="csr")
    m.data[:] = 1.0
    rng = np.random.default_rng(seed)
    tokens = np.full((3, 8), -1)
    for c, length in enumerate([8, 5, 2]):
        tokens[c, 1:length] = rng.choice(n_genes, size=length - 1, replace=False)
    return induced_batch_graph(torch.as_tensor(tokens), torch.as_tensor(m.indptr), torch.as_tensor(m.indices))


def _dense_attention(layer, x, graph):
    """(B, H, L, L) masked softmax of q k^T / sqrt(d) over each query's graph neighbours, by hand."""
    b, n, _ = x.shape
    h, d = layer.n_heads, layer.d_model // layer.n_heads
    qkv = x @ layer.Wqkv.weight.T + layer.Wqkv.bias
    q, k = qkv.view(b, n, 3, h, d)[:, :, 0].transpose(1, 2), qkv.view(b, n, 3, h, d)[:, :, 1].transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    mask = graph.to_dense_mask()[:, None]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, -1))  # padding rows (no edge) -> 0


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_edge_attention_equals_dense_softmax(backend):
    torch.manual_seed(0)
    graph = _graph()
    layer = GraphDiffusionAttention(12, 3, backend=backend).double()
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    weights = edge_attention(layer, x, graph)
    dense = _dense_attention(layer, x, graph)
    rows, cols = graph.row_ids(), graph.indices
    cell, i, j = rows // 8, rows % 8, cols % 8
    expected = dense[cell, :, i, j]  # (E, H)
    assert weights.shape == (graph.n_edges, 3)
    torch.testing.assert_close(weights, expected, rtol=1e-10, atol=1e-12)
    # every token's weights over its neighbours sum to 1 per head
    sums = torch.zeros(24, 3, dtype=torch.float64).index_add_(0, rows, weights)
    has = graph.indptr.diff() > 0
    torch.testing.assert_close(sums[has], torch.ones_like(sums[has]))


def test_readout_averages_heads_and_layers_and_removes_its_hooks():
    torch.manual_seed(1)
    graph = _graph(seed=1)
    layers = torch.nn.ModuleList([GenoHoptionLayer(12, 3, 24, dropout=0.0) for _ in range(2)]).double().eval()
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    inputs, h = [], x
    for layer in layers:  # the reference: each layer's input, then the dense softmax
        inputs.append(h)
        h = layer(h, graph, None)
    rows, cols = graph.row_ids(), graph.indices
    ref = torch.stack([_dense_attention(layer.self_attn, xi, graph)[rows // 8, :, rows % 8, cols % 8]
                       for layer, xi in zip(layers, inputs, strict=True)]).mean((0, 2))
    with AttentionReadout(layers) as readout:
        out = x
        for layer in layers:
            out = layer(out, graph, None)
        weights, seen = readout.take()
        assert all(len(m._forward_hooks) == 1 for m in readout.layers)
    torch.testing.assert_close(out, h)  # the forward pass is unchanged
    assert seen is graph
    torch.testing.assert_close(weights, ref)
    assert all(len(layer.self_attn._forward_hooks) == 0 for layer in layers)
    with pytest.raises(RuntimeError, match="No graph-diffusion layer ran"):
        readout.take()


def test_readout_refuses_dense_attention():
    with pytest.raises(ValueError, match="dense attention"):
        AttentionReadout(GraphDiffusionAttention(8, 2, attention="dense"))
    with pytest.raises(ValueError, match="no GraphDiffusionAttention"):
        AttentionReadout(torch.nn.Linear(2, 2))
