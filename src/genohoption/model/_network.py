"""Gene networks read out of a trained model's graph attention (``GenoHoptionModel.get_gene_network``).

The attention of every head of every layer on each edge of the per-cell induced gene graph is averaged over
the cells in which the edge occurs, streamed a minibatch at a time into arrays over the global graph's edges
(memory linear in edges, not cells), per group of cells when asked. The K-hop receptive field implied by the
averaged attention is the diffusion of the layers (:func:`genohoption.tl._diffusion.diffusion_operator`)
applied to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._validate import check_key, matrix_name, uns_entry
from ..module._encode import check_encodable, encode_cells
from ..nn._readout import AttentionReadout
from ..tl._diffusion import diffusion_operator, row_normalize
from ._batch import adapted_batch_norms, iter_query
from ._query import Query

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

DIFFUSION_SUFFIX = "_diffusion"
"""Suffix of the ``adata.varp`` key of the K-hop receptive field beside the averaged attention."""


@dataclass
class GroupNetwork:
    """Averaged attention of one group of cells, over the model's genes.

    Attributes
    ----------
    attention
        ``(n_genes, n_genes)`` CSR: mean attention of ``i`` on ``j`` over the cells where both are tokens.
    n_cells
        ``(n_genes, n_genes)`` CSR: the number of those cells.
    diffusion
        ``(n_genes, n_genes)`` CSR: the K-hop receptive field of :attr:`attention`.
    """

    attention: sp.csr_matrix
    n_cells: sp.csr_matrix
    diffusion: sp.csr_matrix


def _pattern(indptr: torch.Tensor, indices: torch.Tensor, n: int) -> sp.csr_matrix:
    """Return the global graph's pattern with the diagonal added (every token attends to itself), sorted."""
    g = sp.csr_matrix((np.ones(indices.numel()), indices.cpu().numpy(), indptr.cpu().numpy()), shape=(n, n))
    pattern = (g + sp.identity(n, format="csr")).tocsr()
    pattern.sum_duplicates()
    pattern.sort_indices()
    return pattern


@torch.inference_mode()
def stream_attention(module, query: Query, codes: np.ndarray, n_groups: int, batch_size: int
                     ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Sum and count of the per-cell edge attention over the cells of each group.

    Parameters
    ----------
    module
        An annotation or pretraining module with sparse attention.
    query
        Resolved cells.
    codes
        ``(n_obs,)`` group of each cell (``-1``: left out).
    n_groups
        Number of groups.
    batch_size
        Cells per minibatch.

    Returns
    -------
    ``(pattern, sums, counts)``: the global graph's pattern with the diagonal (CSR), and ``(n_groups, nnz)``
    float64 sums and int64 counts over its entries.
    """
    module.eval()
    n = module.n_genes
    pattern = _pattern(module.graph_indptr, module.graph_indices, n)
    keys = torch.as_tensor(np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr)) * n
                           + pattern.indices.astype(np.int64), device=module.device)
    nnz = pattern.nnz
    sums = torch.zeros(n_groups * nnz, dtype=torch.float64, device=module.device)
    counts = torch.zeros(n_groups * nnz, dtype=torch.int64, device=module.device)
    codes_t = torch.as_tensor(codes, dtype=torch.int64, device=module.device)
    start = 0
    with adapted_batch_norms(module, query, batch_size), AttentionReadout(module.backbone) as readout:
        for x, b in iter_query(query, batch_size, module.device, matrix_name(query.layer)):
            _, tokens, _ = encode_cells(module, x, b)
            weights, graph = readout.take()
            genes = tokens.genes.reshape(-1)
            rows, cols = graph.row_ids(), graph.indices
            gi, gj = genes[rows], genes[cols]
            cell = rows // graph.seq_len
            group = codes_t[start + cell]
            keep = (gi >= 0) & (gi < n) & (gj >= 0) & (gj < n) & (group >= 0)  # genes only (no CLS / <eos>)
            key = gi[keep] * n + gj[keep]
            pos = torch.searchsorted(keys, key)
            if bool((pos >= nnz).any()) or bool((keys[pos.clamp(max=nnz - 1)] != key).any()):
                raise RuntimeError("An attention edge is not an edge of the model's gene graph.")
            flat = group[keep] * nnz + pos
            sums.index_add_(0, flat, weights[keep])
            counts.index_add_(0, flat, torch.ones_like(flat))
            start += x.shape[0]
    return pattern, sums.view(n_groups, nnz).cpu().numpy(), counts.view(n_groups, nnz).cpu().numpy()


def _network(pattern: sp.csr_matrix, sums: np.ndarray, counts: np.ndarray, diffusion: dict) -> GroupNetwork:
    seen = counts > 0
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=seen)

    def matrix(values):
        m = sp.csr_matrix((values[seen], pattern.indices[seen], _indptr(pattern, seen)), shape=pattern.shape)
        return m

    attention = matrix(mean)
    return GroupNetwork(attention, matrix(counts.astype(np.int64)),
                        diffusion_operator(row_normalize(attention), **diffusion))


def _indptr(pattern: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    row_of = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    out = np.zeros(pattern.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of[keep], minlength=pattern.shape[0]), out=out[1:])
    return out


def _to_adata_genes(M: sp.csr_matrix, pos: np.ndarray | None, n_vars: int) -> sp.csr_matrix:
    """Model-gene matrix → ``adata`` genes (``pos[model gene]`` = its adata position, ``-1`` absent)."""
    if pos is None:
        return M
    has = np.flatnonzero(pos >= 0)
    select = sp.csr_matrix((np.ones(has.size), (has, pos[has])), shape=(M.shape[0], n_vars))
    return sp.csr_matrix(select.T @ M @ select)


def check_network_model(module, params) -> None:
    """Raise unless the model encodes cells from expression (``TypeError``) with sparse attention (``ValueError``)."""
    check_encodable(module, "get_gene_network")
    if params["attention"] == "dense":
        raise ValueError("This model uses dense attention, which has no gene-graph edges to read out; train a "
                         "model with attention='ppr', 'heat' or 'mask'.")


def gene_network(module, query: Query, params: dict, *, groupby: str | None = None, key_added: str = "gene_network",
                 batch_size: int = 64, min_weight: float = 1e-4) -> pd.DataFrame:
    """Average the attention over cells, write the networks to ``query.adata`` (see ``get_gene_network``).

    Parameters
    ----------
    module
        The model's module (annotation or pretraining; sparse attention).
    query
        The resolved cells.
    params
        The model's attention parameters: ``attention``, ``n_hops``, ``alpha``, ``t``, ``normalize_heat``.
    groupby, key_added, batch_size, min_weight
        See :meth:`genohoption.GenoHoptionModel.get_gene_network`.
    """
    check_network_model(module, params)
    check_key(key_added)
    adata = query.adata
    uns_entry(adata)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not float(min_weight) >= 0:
        raise ValueError(f"min_weight must be >= 0, got {min_weight!r}.")
    if groupby is None:
        names, codes = ["all"], np.zeros(adata.n_obs, dtype=np.int64)
    else:
        if groupby not in adata.obs:
            raise KeyError(f"groupby={groupby!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
        labels = pd.Categorical(adata.obs[groupby])
        names, codes = [str(c) for c in labels.categories], np.asarray(labels.codes, dtype=np.int64)
    diffusion = {"method": params["attention"], "n_hops": int(params["n_hops"]), "alpha": float(params["alpha"]),
                 "t": float(params["t"]), "normalize": bool(params["normalize_heat"]), "min_weight": float(min_weight)}
    pattern, sums, counts = stream_attention(module, query, codes, len(names), batch_size)
    networks = {name: _network(pattern, sums[g], counts[g], diffusion) for g, name in enumerate(names)}

    query_genes = adata.var_names.astype(str)
    pos = None if query_genes.equals(query.var_names) else query_genes.get_indexer(query.var_names)
    keys, frames = {}, []
    for name, net in networks.items():
        key = key_added if groupby is None else f"{key_added}_{name.replace('/', '|')}"  # h5ad keys hold no '/'
        keys[name] = {"attention": key, "diffusion": key + DIFFUSION_SUFFIX}
        coo = net.attention.tocoo()
        n_cells = net.n_cells.tocoo()
        frames.append(pd.DataFrame({"group": name, "source": query.var_names[coo.col], "target": query.var_names[coo.row],
                                    "attention": coo.data, "n_cells": n_cells.data}))
    edges = pd.concat(frames, ignore_index=True)
    if groupby is None:
        edges = edges.drop(columns="group")
    if adata.is_view:
        adata._init_as_actual(adata.copy())
    for name, net in networks.items():  # everything is computed: write
        adata.varp[keys[name]["attention"]] = _to_adata_genes(net.attention, pos, adata.n_vars)
        adata.varp[keys[name]["diffusion"]] = _to_adata_genes(net.diffusion, pos, adata.n_vars)
    adata.uns[key_added] = {
        "params": {"groupby": groupby, "batch_size": int(batch_size), **diffusion},
        "groups": names,
        "varp_keys": keys,
        "n_cells": {name: int((codes == g).sum()) for g, name in enumerate(names)},
    }
    logger.info("wrote adata.varp[%s] and adata.uns[%r]", ", ".join(repr(v["attention"]) for v in keys.values()),
                key_added)
    return edges


__all__ = ["DIFFUSION_SUFFIX", "GroupNetwork", "check_network_model", "gene_network", "stream_attention"]
