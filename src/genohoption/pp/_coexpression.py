"""Top-k gene-gene Pearson correlation neighbours, blockwise and sparse-aware.

The matrix ``X`` is ``(n_cells, n_genes)``. For genes ``i`` and ``j`` with means ``m`` and population
standard deviations ``s``, ``r_ij = sum_c z_ci x_cj / (n s_j)`` with ``z_ci = (x_ci - m_i) / s_i``: as
``z_i`` sums to zero, only one side of each product needs centring. The exact kernel standardises
a block ``I`` of genes densely (all cells), multiplies it with dense slices (chunks of cells) of the
raw blocks ``J > I`` (float32 BLAS GEMM; ``syrk`` on the diagonal block, so every pair is computed
once) and keeps a running top-k per gene, updating the rows of ``I`` with ``C`` and the rows of
``J`` with ``C.T``. Memory: the (sparse) input, one CSC copy of it, one dense standardised block
(<= 512 MiB by default) and one dense chunk (128 MiB).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import sparse
from scipy.linalg import blas

logger = logging.getLogger(__name__)

_BLOCK_BYTES = 512 * 2**20
"""Largest dense standardised gene block (all cells) of the exact kernel by default."""

_CHUNK_BYTES = 128 * 2**20
"""Dense slice of the second gene block (a chunk of cells) of the exact kernel."""

APPROX_SKETCH_CELLS = 2048
"""Cells subsampled by ``method="approx"`` to find candidate neighbours."""

APPROX_CANDIDATES = 5.0
"""``method="approx"`` re-ranks ``ceil(5 * n_neighbors)`` (at least ``n_neighbors + 20``) candidates."""


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

    def block(self, start: int, stop: int, order: str = "C") -> np.ndarray:
        """Dense float32 ``(n_cells, stop - start)`` in ``order`` (always a copy)."""
        if self.is_sparse:
            return self.X[:, start:stop].toarray(order=order)
        return np.array(self.X[:, start:stop], dtype=np.float32, order=order, copy=True)  # never a view

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
        lo = int(rows.min())
        urows = np.flatnonzero(np.bincount(rows - lo)) + lo
        old_idx = self.idx[urows].ravel()
        keep = old_idx >= 0
        all_r = np.concatenate([np.repeat(urows, k)[keep], rows])
        all_i = np.concatenate([old_idx[keep], cols])
        all_v = np.concatenate([self.val[urows].ravel()[keep], vals])
        # one float64 key: row, then descending |r| (|r| in [0, 1] -> offset in [0, 0.5])
        key = all_r + (1.0 - np.clip(all_v.astype(np.float64), 0.0, 1.0)) * 0.5
        order = np.argsort(key, kind="stable")
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
    """Genes per block: 2048 (BLAS is inefficient for thin blocks), less if a block exceeds the budget."""
    b = int(_BLOCK_BYTES / (4 * max(n_cells, 1)))
    b = max(256, min(2048, (b // 128) * 128))
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
        Genes per block. ``None``: 2048, or less when one dense standardised block of all cells would
        exceed 512 MiB. Results do not depend on it (up to float32 round-off).

    Returns
    -------
    ``rows, cols, absr``: edge ``rows[e] -> cols[e]`` (gene ``rows[e]`` attends to ``cols[e]``).
    """
    gm = _GeneMatrix(X)
    n, g = gm.n_cells, gm.n_genes
    k = min(n_neighbors, max(g - 1, 1))
    b = block_size if block_size is not None else default_block_size(n, g)
    b = max(1, min(b, g))
    cell_chunk = max(1, _CHUNK_BYTES // (4 * b))
    mean, std, const = gm.stats(b)
    inv = np.where(const, 0.0, 1.0 / np.where(const, 1.0, std * math.sqrt(n))).astype(np.float32)
    mean32 = mean.astype(np.float32)
    top = _TopK(g, k, min_corr)
    for i0 in range(0, g, b):
        i1 = min(i0 + b, g)
        zI = gm.block(i0, i1, order="F")
        zI -= mean32[i0:i1]
        zI *= inv[i0:i1]
        # diagonal block: syrk (Fortran-ordered zI, no copy) gives the upper triangle of zI.T @ zI
        C = blas.ssyrk(1.0, zI, trans=1)
        C = np.triu(C, 1)
        C += C.T
        np.abs(C, out=C)
        top.update(C, i0, i0)
        del C
        # off-diagonal blocks: zI.T @ raw x_J (z_I sums to zero, so x_J needs no centring),
        # accumulated over chunks of cells so that only a slice of x_J is ever dense
        for j0 in range(i1, g, b):
            j1 = min(j0 + b, g)
            C = _cross(gm, zI, j0, j1, cell_chunk)
            C *= inv[j0:j1]
            np.abs(C, out=C)
            top.update(C, i0, j0)
            top.update(C, j0, i0, transpose=True)
            del C
        del zI
    return top.edges()


def _cross(gm: _GeneMatrix, zI: np.ndarray, j0: int, j1: int, cell_chunk: int) -> np.ndarray:
    """``zI.T @ X[:, j0:j1]`` with ``X[:, j0:j1]`` densified ``cell_chunk`` rows at a time."""
    n = gm.n_cells
    if cell_chunk >= n:
        return zI.T @ gm.block(j0, j1)
    C = np.zeros((zI.shape[1], j1 - j0), dtype=np.float32)
    if gm.is_sparse:
        xJ = gm.X[:, j0:j1].tocsr()
        for c0 in range(0, n, cell_chunk):
            c1 = min(c0 + cell_chunk, n)
            C += zI[c0:c1].T @ xJ[c0:c1].toarray()
    else:
        for c0 in range(0, n, cell_chunk):
            c1 = min(c0 + cell_chunk, n)
            C += zI[c0:c1].T @ np.asarray(gm.X[c0:c1, j0:j1], dtype=np.float32)
    return C


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
    give ``max(5 k, k + 20)`` candidates per gene with ``|r|`` above ``min_corr`` minus a margin of
    four standard errors; their exact correlations over all cells are then computed pair by pair
    (each unordered pair once: a dense standardised gene block gathered at the partner's non-zeros,
    numba) and the top ``k`` above ``min_corr`` kept. Returned ``|r|`` are exact; only neighbours
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
    b = block_size or default_block_size(gm.n_cells, gm.n_genes)
    mean, std, const = gm.stats(b)
    # each unordered pair once
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs = np.unique(lo * gm.n_genes + hi)
    lo, hi = pairs // gm.n_genes, pairs % gm.n_genes
    r = _pair_corr(gm, lo, hi, mean, std, const, b)
    absr = np.abs(r).astype(np.float32)
    ok = absr > min_corr
    top = _TopK(gm.n_genes, min(n_neighbors, max(gm.n_genes - 1, 1)), min_corr)
    if ok.any():
        top._merge(np.concatenate([lo[ok], hi[ok]]), np.concatenate([hi[ok], lo[ok]]), np.tile(absr[ok], 2))
    return top.edges()


def _pair_corr(gm: _GeneMatrix, rows, cols, mean, std, const, block_size: int) -> np.ndarray:
    """Exact Pearson r for the gene pairs ``(rows[e], cols[e])`` over all cells.

    Sparse input: for each block of ``rows`` genes, standardise them densely (as the exact kernel)
    and gather them at the non-zeros of each partner column (numba), ``O(nnz(col))`` per pair.
    """
    n = gm.n_cells
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    r = np.zeros(rows.size)
    if gm.is_sparse:
        inv = np.where(const, 0.0, 1.0 / np.where(const, 1.0, std * math.sqrt(n)))
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        indptr = gm.X.indptr.astype(np.int64)
        kernel = _sparse_pair_gather()
        for i0 in range(0, gm.n_genes, block_size):
            i1 = min(i0 + block_size, gm.n_genes)
            s0, s1 = np.searchsorted(sorted_rows, [i0, i1])
            if s0 == s1:
                continue
            sel = order[s0:s1]
            zI = gm.block(i0, i1, order="F")
            zI -= mean[i0:i1].astype(np.float32)
            zI *= inv[i0:i1].astype(np.float32)
            r[sel] = kernel(zI, rows[sel] - i0, cols[sel], indptr, gm.X.indices, gm.X.data) * inv[cols[sel]]
            del zI
    else:
        Xd = gm.X
        step = max(1, 2**24 // max(n, 1))
        for s in range(0, rows.size, step):
            a = np.asarray(Xd[:, rows[s : s + step]], dtype=np.float64)
            b = np.asarray(Xd[:, cols[s : s + step]], dtype=np.float64)
            dots = np.einsum("ij,ij->j", a, b)
            cov = dots / n - mean[rows[s : s + step]] * mean[cols[s : s + step]]
            with np.errstate(divide="ignore", invalid="ignore"):
                r[s : s + step] = cov / (std[rows[s : s + step]] * std[cols[s : s + step]])
    r[const[rows] | const[cols]] = 0.0
    return np.clip(np.nan_to_num(r), -1.0, 1.0)


_SPARSE_PAIR_GATHER = None


def _sparse_pair_gather():
    """Numba kernel (compiled on first use): ``sum_c zI[c, a] x_cj`` over the non-zeros of column ``j``."""
    global _SPARSE_PAIR_GATHER
    if _SPARSE_PAIR_GATHER is None:
        import numba

        @numba.njit(parallel=True, cache=False, nogil=True)
        def pair_gather(zI, a_local, cols, indptr, indices, data):  # pragma: no cover - compiled
            out = np.zeros(a_local.size)
            for e in numba.prange(a_local.size):
                a = a_local[e]
                j = cols[e]
                acc = 0.0
                for p in range(indptr[j], indptr[j + 1]):
                    acc += np.float64(zI[indices[p], a]) * np.float64(data[p])
                out[e] = acc
            return out

        _SPARSE_PAIR_GATHER = pair_gather
    return _SPARSE_PAIR_GATHER
