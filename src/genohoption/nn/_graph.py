"""Batched induced subgraphs of the gene graph (Seq2Graph, Cheng et al. §III-B, eq. 4).

A mini-batch of cells is a ``(B, L)`` matrix of gene tokens. Attention in GenoHoption is restricted to the
edges of the global gene graph induced on each cell's tokens. :func:`induced_batch_graph` builds all of these
induced graphs at once, as one block-diagonal CSR matrix over the ``B * L`` flattened token positions,
with vectorised torch code (no per-cell Python loop) on the tokens' device.
"""

from __future__ import annotations

import logging
from dataclasses import InitVar, dataclass, field

import torch

from .._csr import check_csr, is_integer

logger = logging.getLogger(__name__)

__all__ = ["BatchGraph", "check_csr_tensors", "induced_batch_graph"]

_INT32_MAX = 2**31 - 1


def check_csr_tensors(indptr: torch.Tensor, indices: torch.Tensor, n_rows: int, n_cols: int, where: str) -> None:
    """Check CSR index tensors before any kernel reads them (a bad structure can crash the interpreter).

    :func:`genohoption._csr.check_csr` (the check the AnnData inputs get) on torch tensors, on their device:
    ``O(n_rows + nnz)`` element-wise work and a few device synchronisations.

    Raises
    ------
    ValueError
        If ``indptr`` or ``indices`` is not a torch tensor, or for a corrupt structure
        (``"<where> is not a valid CSR matrix (<problem>)."``).
    """
    if not (isinstance(indptr, torch.Tensor) and isinstance(indices, torch.Tensor)):
        raise ValueError(f"{where}: indptr and indices must be torch tensors.")
    check_csr(indptr, indices, n_rows, n_cols, where)


@dataclass(frozen=True, eq=False)
class BatchGraph:
    """Block-diagonal CSR graph over the flattened tokens of a batch of cells.

    Row ``b * L + i`` lists the tokens that token ``i`` of cell ``b`` attends to (its neighbours
    ``Ne(i)`` of eq. 4), as flattened key indices ``b * L + j``; there are no edges between cells.

    Parameters
    ----------
    indptr
        ``(B * L + 1,)`` int64 CSR row pointers.
    indices
        ``(E,)`` int64 flattened key indices, sorted within each row, all within the row's cell.
    batch_size
        Number of cells ``B``.
    seq_len
        Tokens per cell ``L`` (padding included).

    Notes
    -----
    Derived index structures used by :func:`~genohoption.nn.graph_diffusion_attention` (row ids, the
    transpose, the per-head block-diagonal layout) are built lazily on first use and cached on the object,
    so one graph can be shared by all layers of a forward pass. Build a new :class:`BatchGraph` per batch.

    validate
        Check the structure (default): ``indptr`` non-decreasing from 0 to ``len(indices)``, every index
        within its row's cell. The kernels read the indices unchecked, so a malformed graph could crash
        the interpreter; only graphs built by :func:`induced_batch_graph` skip the check.

    Raises
    ------
    ValueError
        If the shapes are inconsistent or the structure is malformed.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    batch_size: int
    seq_len: int
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool) -> None:
        if self.indptr.ndim != 1 or self.indptr.numel() != self.batch_size * self.seq_len + 1:
            raise ValueError(
                f"indptr must have shape (batch_size * seq_len + 1,) = ({self.batch_size * self.seq_len + 1},), "
                f"got {tuple(self.indptr.shape)}."
            )
        if self.indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(self.indices.shape)}.")
        if self.indptr.device != self.indices.device:
            raise ValueError("indptr and indices must be on the same device.")
        if validate:
            n = self.batch_size * self.seq_len
            check_csr_tensors(self.indptr, self.indices, n, n, "BatchGraph")
            rows = self.row_ids()
            if self.indices.numel() and bool((rows // self.seq_len != self.indices // self.seq_len).any()):
                raise ValueError("BatchGraph is not block-diagonal: an edge joins tokens of two different cells.")

    @property
    def n_edges(self) -> int:
        """Number of edges ``E`` (self-loops and CLS edges included)."""
        return int(self.indices.numel())

    @property
    def device(self) -> torch.device:
        """Device of the index tensors."""
        return self.indices.device

    def to(self, device: torch.device | str) -> BatchGraph:
        """Return a copy on ``device`` (the cache is not copied; ``self`` if already there)."""
        device = torch.device(device)
        if self.indices.device == device:
            return self
        return BatchGraph(self.indptr.to(device), self.indices.to(device), self.batch_size, self.seq_len,
                          validate=False)

    def row_ids(self) -> torch.Tensor:
        """``(E,)`` int64 flattened query index of every edge (the CSR rows expanded)."""
        if "rows" not in self._cache:
            n = self.batch_size * self.seq_len
            counts = self.indptr.diff()
            self._cache["rows"] = torch.repeat_interleave(
                torch.arange(n, device=self.device), counts, output_size=self.n_edges
            )
        return self._cache["rows"]

    def to_dense_mask(self) -> torch.Tensor:
        """``(B, L, L)`` bool mask, ``mask[b, i, j]`` = token ``i`` of cell ``b`` attends to token ``j``."""
        b, n_tok = self.batch_size, self.seq_len
        rows = self.row_ids()
        mask = torch.zeros(b * n_tok, n_tok, dtype=torch.bool, device=self.device)
        mask[rows, self.indices - (rows // n_tok) * n_tok] = True
        return mask.view(b, n_tok, n_tok)

    def transpose_perm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSR of the transposed graph: ``(t_indptr, t_indices, perm)``, edge ``e`` of the transpose is edge ``perm[e]``."""
        if "transpose" not in self._cache:
            n = self.batch_size * self.seq_len
            rows = self.row_ids()
            perm = torch.argsort(self.indices * n + rows)
            t_counts = torch.bincount(self.indices, minlength=n)
            t_indptr = torch.zeros(n + 1, dtype=torch.int64, device=self.device)
            torch.cumsum(t_counts, 0, out=t_indptr[1:])
            self._cache["transpose"] = (t_indptr, rows[perm], perm)
        return self._cache["transpose"]

    def head_layout(self, n_heads: int) -> HeadLayout:
        """Block-diagonal layout over ``n_heads`` heads (cached per ``n_heads``); see :class:`HeadLayout`."""
        key = ("heads", n_heads)
        if key not in self._cache:
            self._cache[key] = HeadLayout.build(self, n_heads)
        return self._cache[key]


@dataclass(frozen=True, eq=False)
class HeadLayout:
    """Index structures of the ``(B * H * L) x (B * H * L)`` block-diagonal attention matrix.

    Row ``(b * H + h) * L + i`` is query token ``i`` of cell ``b`` in head ``h``, i.e. the row order of a
    contiguous ``(B, H, L, d)`` tensor reshaped to ``(B * H * L, d)``. Edge values are laid out
    ``(B, H, E_b)`` (cell-major, then head, then the cell's edges in CSR order).
    Indices are int32 when they fit (faster sparse kernels), else int64.
    """

    crow: torch.Tensor
    col: torch.Tensor
    t_crow: torch.Tensor
    t_col: torch.Tensor
    t_perm: torch.Tensor
    rows: torch.Tensor
    row_counts: torch.Tensor
    empty_rows: torch.Tensor | None
    n_rows: int
    nnz: int

    @classmethod
    def build(cls, graph: BatchGraph, n_heads: int) -> HeadLayout:
        """Expand ``graph`` over ``n_heads`` heads (vectorised, on the graph's device)."""
        b, n_tok, h = graph.batch_size, graph.seq_len, n_heads
        dev = graph.device
        n_rows = b * h * n_tok
        nnz = graph.n_edges * h
        idx_dtype = torch.int32 if max(n_rows, nnz) <= _INT32_MAX else torch.int64

        indptr = graph.indptr
        cell_start = indptr[torch.arange(b, device=dev) * n_tok]  # (B,)
        cell_edges = indptr[torch.arange(1, b + 1, device=dev) * n_tok] - cell_start  # (B,)
        block_sizes = cell_edges.repeat_interleave(h)  # (B*H,)
        block_start = torch.zeros(b * h, dtype=torch.int64, device=dev)
        torch.cumsum(block_sizes[:-1], 0, out=block_start[1:])
        block_id = torch.repeat_interleave(torch.arange(b * h, device=dev), block_sizes, output_size=nnz)
        cell_of_block = block_id // h
        local = torch.arange(nnz, device=dev) - block_start[block_id]
        shift = (block_id - cell_of_block) * n_tok  # new flat index = old flat index + shift

        orig_e = cell_start[cell_of_block] + local
        col = graph.indices[orig_e] + shift
        rows = graph.row_ids()[orig_e] + shift

        counts = indptr.diff().view(b, 1, n_tok).expand(b, h, n_tok).reshape(-1)
        crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=dev)
        torch.cumsum(counts, 0, out=crow[1:])

        t_indptr, t_indices, perm0 = graph.transpose_perm()
        t_orig_e = t_indptr[cell_of_block * n_tok] + local  # transposed edges of a cell are contiguous too
        t_col = t_indices[t_orig_e] + shift
        t_perm = block_start[block_id] + (perm0[t_orig_e] - cell_start[cell_of_block])
        t_counts = t_indptr.diff().view(b, 1, n_tok).expand(b, h, n_tok).reshape(-1)
        t_crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=dev)
        torch.cumsum(t_counts, 0, out=t_crow[1:])

        empty = torch.nonzero(counts == 0).flatten()
        empty_rows = empty if empty.numel() > 0 else None
        return cls(
            crow=crow.to(idx_dtype),
            col=col.to(idx_dtype),
            t_crow=t_crow.to(idx_dtype),
            t_col=t_col.to(idx_dtype),
            t_perm=t_perm,
            rows=rows,
            row_counts=counts,
            empty_rows=empty_rows,
            n_rows=n_rows,
            nnz=nnz,
        )


def induced_batch_graph(
    tokens: torch.Tensor,
    graph_indptr: torch.Tensor,
    graph_indices: torch.Tensor,
    *,
    cls_token: bool = True,
) -> BatchGraph:
    """Induce the gene graph on every cell of a batch (Seq2Graph, eq. 4).

    Edge ``(b, i) -> (b, j)`` (token ``i`` attends to token ``j``) exists iff the global CSR graph has an
    entry ``[g_i, g_j]``, where ``g_i = tokens[b, i]``. In addition every real token (and the CLS token) has a
    self-loop, and if ``cls_token`` the CLS token at position 0 is joined both ways to every real token of its
    row. Padding tokens have no edges at all, so their attention output is zero.

    Parameters
    ----------
    tokens
        ``(B, L)`` int64 gene indices into the global graph (``0 .. n_genes - 1``), ``-1`` = padding.
        Padding must only occur at the end of a row (not checked; any ``-1`` is treated as padding).
    graph_indptr
        ``(n_genes + 1,)`` CSR row pointers of the global gene graph (e.g. ``adata.varp["gene_graph"].indptr``);
        row ``g`` lists the genes that gene ``g`` attends to.
    graph_indices
        ``(nnz,)`` CSR column indices of the global gene graph. Duplicate entries are merged.
    cls_token
        If ``True``, position 0 of every row is the CLS token (its ``tokens`` value is ignored; it is never
        padding).

    Returns
    -------
    :class:`BatchGraph` on the device of ``tokens``, rows sorted, no duplicated edges.

    Raises
    ------
    ValueError
        If ``tokens`` is not 2-D, a token is ``< -1`` or ``>= n_genes``, or the CSR arrays are malformed
        (not integers, ``graph_indptr`` not non-decreasing from 0 to ``len(graph_indices)``, an index
        outside ``[0, n_genes)``): checked before any indexing, ``O(n_genes + nnz)``.

    Notes
    -----
    Duplicated gene ids within a row are separate token positions with the same neighbour set: each copy
    attends to every position holding a neighbouring gene (so copies of ``g`` are joined to each other only
    if the global graph has the self-loop ``[g, g]``), and each copy has its own self-loop.
    Cost: ``O(B L deg)`` time and memory, one sort of the candidate edges; no Python loop over cells.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, L), got {tuple(tokens.shape)}.")
    if graph_indptr.ndim != 1 or graph_indptr.numel() < 1 or graph_indices.ndim != 1:
        raise ValueError("graph_indptr must be 1-D (n_genes + 1,) and graph_indices 1-D (nnz,).")
    if not is_integer(tokens):
        raise ValueError(f"tokens must be integer gene indices, got dtype {tokens.dtype}.")
    n_genes = graph_indptr.numel() - 1
    check_csr_tensors(graph_indptr, graph_indices, n_genes, n_genes, "the gene graph")
    dev = tokens.device
    tokens = tokens.to(torch.int64)
    graph_indptr = graph_indptr.to(device=dev, dtype=torch.int64)
    graph_indices = graph_indices.to(device=dev, dtype=torch.int64)
    b, n_tok = tokens.shape
    n_flat = b * n_tok

    real = tokens >= 0
    gene = real.clone()
    if cls_token:
        real[:, 0] = True
        gene[:, 0] = False
    check = tokens[:, 1:] if cls_token else tokens
    if check.numel() and (int(check.min()) < -1 or int(check.max()) >= n_genes):
        raise ValueError(
            f"tokens must be in [0, {n_genes}) (the global graph has {n_genes} genes) or -1 for padding."
        )

    flat_tok = tokens.reshape(-1)
    gene_pos = torch.nonzero(gene.reshape(-1)).flatten()  # flat positions of gene tokens
    g = flat_tok[gene_pos]
    cell = gene_pos // n_tok

    # every gene token's global neighbour list, expanded
    deg = graph_indptr[g + 1] - graph_indptr[g]
    n_cand = int(deg.sum())
    src_k = torch.repeat_interleave(torch.arange(gene_pos.numel(), device=dev), deg, output_size=n_cand)
    first = torch.cumsum(deg, 0) - deg
    nb_gene = graph_indices[graph_indptr[g][src_k] + torch.arange(n_cand, device=dev) - first[src_k]]

    # look the neighbour genes up among the cell's tokens: sorted keys cell * n_genes + gene
    key = cell * n_genes + g
    sorted_key, order = torch.sort(key)
    query = cell[src_k] * n_genes + nb_gene
    lo = torch.searchsorted(sorted_key, query, side="left")
    hi = torch.searchsorted(sorted_key, query, side="right")
    n_match = hi - lo
    n_edges_g = int(n_match.sum())
    m_k = torch.repeat_interleave(torch.arange(n_cand, device=dev), n_match, output_size=n_edges_g)
    m_first = torch.cumsum(n_match, 0) - n_match
    tgt = gene_pos[order[lo[m_k] + torch.arange(n_edges_g, device=dev) - m_first[m_k]]]
    src = gene_pos[src_k[m_k]]

    parts_src = [src]
    parts_dst = [tgt]
    real_pos = torch.nonzero(real.reshape(-1)).flatten()
    parts_src.append(real_pos)  # self-loops
    parts_dst.append(real_pos)
    if cls_token:
        cls_of = (gene_pos // n_tok) * n_tok
        parts_src += [cls_of, gene_pos]
        parts_dst += [gene_pos, cls_of]
    src = torch.cat(parts_src)
    dst = torch.cat(parts_dst)
    edge_key = torch.unique(src * n_flat + dst, sorted=True)
    rows = edge_key // n_flat
    indices = edge_key - rows * n_flat
    indptr = torch.zeros(n_flat + 1, dtype=torch.int64, device=dev)
    torch.cumsum(torch.bincount(rows, minlength=n_flat), 0, out=indptr[1:])
    graph = BatchGraph(indptr, indices, b, n_tok, validate=False)  # built from a checked graph
    graph._cache["rows"] = rows
    logger.debug("induced_batch_graph: B=%d L=%d E=%d", b, n_tok, indices.numel())
    return graph
