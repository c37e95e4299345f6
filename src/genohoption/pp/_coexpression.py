"""Top-k gene-gene Pearson correlation neighbours, blockwise and sparse-aware.

The matrix ``X`` is ``(n_cells, n_genes)``. For genes ``i`` and ``j`` with means ``m`` and population
standard deviations ``s``, ``r_ij = sum_c z_ci x_cj / (n s_j)`` with ``z_ci = (x_ci - m_i) / s_i``: as
``z_i`` sums to zero, only one side of each product needs centring. The exact kernel standardises
a block ``I`` of genes densely, multiplies it with dense copies of the raw blocks ``J >= I``
(float32 BLAS GEMM; the diagonal block in upper tiles, so every pair is computed about once) and keeps a running top-k
per gene, updating the rows of ``I`` with ``C`` and the rows of ``J`` with ``C.T``. Memory is the
(sparse) input, one CSC copy of it, and two dense gene blocks.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)

_BLOCK_BYTES = 512 * 2**20
"""Default memory for the two dense float32 gene blocks of the exact kernel."""

APPROX_SKETCH_CELLS = 4096
"""Cells subsampled by ``method="approx"`` to find candidate neighbours."""

APPROX_CANDIDATES = 3.0
"""``method="approx"`` re-ranks ``ceil(3 * n_neighbors)`` (at least ``n_neighbors + 20``) candidates."""


class _GeneMatrix:
    """Column-block access to a ``(n_cells, n_genes)`` matrix, dense or sparse, as float32."""

    def __init__(self, X):
        if sparse.issparse(X):
            X = sparse.csc_matrix(X) if X.format != "csc" else X
            if X.dtype != np.float32:
                X = X.astype(np.float32)
            if not X.has_sorted_indices:
                X = X.copy()
                X.sort_indices()
            self.is_sparse = True
        else:
            X = np.asarray(X)
            self.is_sparse = False
        self.X = X
        self.n_cells, self.n_genes = X.shape

    def block(self, start: int, stop: int) -> np.ndarray:
        """Dense float32 ``(n_cells, stop - start)``, C-contiguous (a copy)."""
        if self.is_sparse:
            return self.X[:, start:stop].toarray()
        return np.array(self.X[:, start:stop], dtype=np.float32, order="C", copy=True)  # never a view

    def stats(self, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Float64 mean, population std (two-pass) and a constant-gene mask."""
        n, g = self.n_cells, self.n_genes
        mean = np.zeros(g)
        var = np.zeros(g)
        const = np.zeros(g, dtype=bool)
        for start in range(0, g, block_size):
            stop = min(start + block_size, g)
            if self.is_sparse:
                indptr = self.X.indptr[start : stop + 1]
                data = self.X.data[indptr[0] : indptr[-1]].astype(np.float64)
                nnz = np.diff(indptr)
                col = np.repeat(np.arange(stop - start), nnz)
                m = np.bincount(col, weights=data, minlength=stop - start) / n
                dev = np.bincount(col, weights=(data - m[col]) ** 2, minlength=stop - start)
                var[start:stop] = (dev + (n - nnz) * m**2) / n
                mean[start:stop] = m
                # constant iff max == min, where an implicit zero counts when nnz < n
                hi = np.full(stop - start, -np.inf)
                lo = np.full(stop - start, np.inf)
                nonempty = nnz > 0
                if nonempty.any():
                    first = (indptr[:-1] - indptr[0])[nonempty]
                    hi[nonempty] = np.maximum.reduceat(data, first)
                    lo[nonempty] = np.minimum.reduceat(data, first)
                has_zero = nnz < n
                hi[has_zero] = np.maximum(hi[has_zero], 0.0)
                lo[has_zero] = np.minimum(lo[has_zero], 0.0)
                const[start:stop] = hi == lo
            else:
                blk = np.asarray(self.X[:, start:stop], dtype=np.float64)
                mean[start:stop] = blk.mean(axis=0)
                var[start:stop] = ((blk - mean[start:stop]) ** 2).mean(axis=0)
                const[start:stop] = blk.max(axis=0) == blk.min(axis=0)
        std = np.sqrt(np.maximum(var, 0.0))
        const |= ~(std > 0)
        return mean, std, const


class _TopK:
    """Running top-k by ``|r|`` (strictly above ``min_corr``) for every gene."""

    def __init__(self, n_genes: int, k: int, min_corr: float):
        self.k = k
        self.val = np.full((n_genes, k), -1.0, dtype=np.float32)
        self.idx = np.full((n_genes, k), -1, dtype=np.int64)
        self.thr = np.full(n_genes, np.float32(min_corr), dtype=np.float32)
        self.min_corr = np.float32(min_corr)

    def update(self, absC: np.ndarray, row0: int, col0: int, transpose: bool = False) -> None:
        """Offer ``absC`` (rows ``row0 + a``, columns ``col0 + b``; swapped if ``transpose``)."""
        if transpose:
            mask = absC > self.thr[row0 : row0 + absC.shape[1]][None, :]
            b, a = np.nonzero(mask)
            vals = absC[b, a]
        else:
            mask = absC > self.thr[row0 : row0 + absC.shape[0]][:, None]
            a, b = np.nonzero(mask)
            vals = absC[a, b]
        if a.size == 0:
            return
        self._merge(a + row0, b + col0, vals)

    def _merge(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        k = self.k
        urows = np.unique(rows)
        old_val = self.val[urows].ravel()
        old_idx = self.idx[urows].ravel()
        old_rows = np.repeat(urows, k)
        keep = old_idx >= 0
        all_r = np.concatenate([old_rows[keep], rows])
        all_i = np.concatenate([old_idx[keep], cols])
        all_v = np.concatenate([old_val[keep], vals])
        # descending |r|; ties broken by smaller gene index (deterministic across block sizes)
        order = np.lexsort((all_i, -all_v, all_r))
        all_r, all_i, all_v = all_r[order], all_i[order], all_v[order]
        starts = np.searchsorted(all_r, urows)
        counts = np.diff(np.append(starts, all_r.size))
        rank = np.arange(all_r.size) - np.repeat(starts, counts)
        sel = rank < k
        self.val[urows] = -1.0
        self.idx[urows] = -1
        self.val[all_r[sel], rank[sel]] = all_v[sel]
        self.idx[all_r[sel], rank[sel]] = all_i[sel]
        full = self.idx[urows, k - 1] >= 0
        self.thr[urows[full]] = np.maximum(self.val[urows[full], k - 1], self.min_corr)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.repeat(np.arange(self.idx.shape[0]), self.k)
        cols = self.idx.ravel()
        vals = self.val.ravel()
        ok = cols >= 0
        return rows[ok], cols[ok], vals[ok]


def default_block_size(n_cells: int, n_genes: int) -> int:
    """Genes per (outer) block so that the two dense blocks fit :data:`_BLOCK_BYTES`."""
    b = int(_BLOCK_BYTES / (4 * max(n_cells, 1) * 1.5))
    b = max(64, (b // 64) * 64)
    return min(b, n_genes)


def coexpression_topk_exact(
    X, n_neighbors: int, min_corr: float, *, block_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``n_neighbors`` genes by ``|r| > min_corr`` for every gene.

    Parameters
    ----------
    X
        ``(n_cells, n_genes)`` dense or sparse matrix (cells already selected).
    n_neighbors
        Neighbours per gene.
    min_corr
        Keep only ``|r| > min_corr``.
    block_size
        Genes per outer block (the inner block is half of it). ``None``: about 512 MiB of dense
        float32 blocks.

    Returns
    -------
    ``rows, cols, absr``: edge ``rows[e] -> cols[e]`` (gene ``rows[e]`` attends to ``cols[e]``).
    """
    gm = _GeneMatrix(X)
    n, g = gm.n_cells, gm.n_genes
    k = min(n_neighbors, max(g - 1, 1))
    bI = block_size if block_size is not None else default_block_size(n, g)
    bI = max(1, min(bI, g))
    bJ = max(1, bI // 2)
    mean, std, const = gm.stats(bI)
    inv = np.where(const, 0.0, 1.0 / np.where(const, 1.0, std * math.sqrt(n))).astype(np.float32)
    mean32 = mean.astype(np.float32)
    top = _TopK(g, k, min_corr)
    bD = max(1, bJ // 2)  # tiles of the diagonal block
    for i0 in range(0, g, bI):
        i1 = min(i0 + bI, g)
        zI = gm.block(i0, i1)
        zI -= mean32[i0:i1]
        zI *= inv[i0:i1]
        # diagonal block: upper tiles only, as GEMMs on column slices of zI (no copies)
        for p0 in range(0, i1 - i0, bD):
            p1 = min(p0 + bD, i1 - i0)
            for q0 in range(p0, i1 - i0, bD):
                q1 = min(q0 + bD, i1 - i0)
                C = zI[:, p0:p1].T @ zI[:, q0:q1]
                np.abs(C, out=C)
                if q0 == p0:
                    np.fill_diagonal(C, 0.0)
                    top.update(C, i0 + p0, i0 + q0)
                else:
                    top.update(C, i0 + p0, i0 + q0)
                    top.update(C, i0 + q0, i0 + p0, transpose=True)
                del C
        # off-diagonal blocks: zI.T @ raw x_J (z_I sums to zero, so x_J needs no centring)
        for j0 in range(i1, g, bJ):
            j1 = min(j0 + bJ, g)
            xJ = gm.block(j0, j1)
            C = zI.T @ xJ
            del xJ
            C *= inv[j0:j1]
            np.abs(C, out=C)
            top.update(C, i0, j0)
            top.update(C, j0, i0, transpose=True)
            del C
        del zI
    return top.edges()


def coexpression_topk_approx(
    X,
    n_neighbors: int,
    min_corr: float,
    *,
    block_size: int | None = None,
    n_sketch_cells: int = APPROX_SKETCH_CELLS,
    random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate top-k: candidates from a cell subsample, then exact re-ranking on all cells.

    Correlations on ``n_sketch_cells`` random cells (standard error about ``1 / sqrt(n_sketch_cells)``)
    give ``max(3 k, k + 20)`` candidates per gene with ``|r|`` above ``min_corr`` minus a margin of
    four standard errors; their exact correlations over all cells are then computed pair by pair
    (numba) and the top ``k`` above ``min_corr`` kept. Returned ``|r|`` are exact; only neighbours
    missed by the sketch are lost (recall is reported by ``benchmarks/gene_graph.py``).
    """
    gm_rows = X.shape[0]
    if gm_rows <= n_sketch_cells:
        return coexpression_topk_exact(X, n_neighbors, min_corr, block_size=block_size)
    rng = np.random.default_rng(random_state)
    sub = np.sort(rng.choice(gm_rows, size=n_sketch_cells, replace=False))
    Xs = X[sub]
    margin = 4.0 / math.sqrt(n_sketch_cells)
    n_cand = max(math.ceil(APPROX_CANDIDATES * n_neighbors), n_neighbors + 20)
    rows, cols, _ = coexpression_topk_exact(Xs, n_cand, max(0.0, min_corr - margin), block_size=block_size)
    del Xs
    gm = _GeneMatrix(X)
    mean, std, const = gm.stats(block_size or default_block_size(gm.n_cells, gm.n_genes))
    r = _pair_corr(gm, rows, cols, mean, std, const)
    top = _TopK(gm.n_genes, min(n_neighbors, max(gm.n_genes - 1, 1)), min_corr)
    absr = np.abs(r).astype(np.float32)
    ok = absr > min_corr
    if ok.any():
        top._merge(rows[ok], cols[ok], absr[ok])
    return top.edges()


def _pair_corr(gm: _GeneMatrix, rows, cols, mean, std, const) -> np.ndarray:
    """Exact Pearson r for the gene pairs ``(rows[e], cols[e])`` over all cells."""
    n = gm.n_cells
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    if gm.is_sparse:
        dots = _sparse_pair_dots()(gm.X.indptr.astype(np.int64), gm.X.indices, gm.X.data, rows, cols)
    else:
        dots = np.empty(rows.size)
        Xd = gm.X
        step = max(1, 2**24 // max(n, 1))
        for s in range(0, rows.size, step):
            a = np.asarray(Xd[:, rows[s : s + step]], dtype=np.float64)
            b = np.asarray(Xd[:, cols[s : s + step]], dtype=np.float64)
            dots[s : s + step] = np.einsum("ij,ij->j", a, b)
    cov = dots / n - mean[rows] * mean[cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / (std[rows] * std[cols])
    r[const[rows] | const[cols]] = 0.0
    return np.clip(np.nan_to_num(r), -1.0, 1.0)


_SPARSE_PAIR_DOTS = None


def _sparse_pair_dots():
    """Numba kernel (compiled on first use): ``sum_c x_ci x_cj`` of sorted CSC columns."""
    global _SPARSE_PAIR_DOTS
    if _SPARSE_PAIR_DOTS is None:
        import numba

        @numba.njit(parallel=True, cache=False, nogil=True)
        def pair_dots(indptr, indices, data, rows, cols):  # pragma: no cover - compiled
            out = np.zeros(rows.size)
            for e in numba.prange(rows.size):
                i = rows[e]
                j = cols[e]
                a, a_end = indptr[i], indptr[i + 1]
                b, b_end = indptr[j], indptr[j + 1]
                acc = 0.0
                while a < a_end and b < b_end:
                    ra = indices[a]
                    rb = indices[b]
                    if ra == rb:
                        acc += np.float64(data[a]) * np.float64(data[b])
                        a += 1
                        b += 1
                    elif ra < rb:
                        a += 1
                    else:
                        b += 1
                out[e] = acc
            return out

        _SPARSE_PAIR_DOTS = pair_dots
    return _SPARSE_PAIR_DOTS
