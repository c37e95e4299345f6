"""Top-k gene-gene Pearson correlation neighbours, blockwise and sparse-aware.

The matrix ``X`` is ``(n_cells, n_genes)``. For genes ``i`` and ``j`` with means ``m`` and population
standard deviations ``s``, ``r_ij = sum_c z_ci x_cj / (n s_j)`` with ``z_ci = (x_ci - m_i) / s_i``: as
``z_i`` sums to zero, only one side of each product needs centring. The exact kernel standardises
a block ``I`` of genes densely (all cells), multiplies it with dense slices (chunks of cells) of the
raw blocks ``J > I`` (float32 BLAS GEMM; ``syrk`` on the diagonal block, so every pair is computed
once) and keeps a running top-k per gene, updating the rows of ``I`` with ``C`` and the rows of
``J`` with ``C.T``. Memory: the (sparse) input, one CSC copy of it, one dense standardised block
(<= 512 MiB by default) and one dense chunk (128 MiB).

Matrices that do not fit in memory (backed AnnData, dask arrays) go through the streamed kernel
(:func:`coexpression_topk_streamed`): the sums behind r add across chunks of cells, so they are
accumulated chunk by chunk (or block by block on dask's workers) and never need all cells at once.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
from scipy import sparse
from scipy.linalg import blas

from .._validate import check_values

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
    missed by the sketch are lost.
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


# --- streamed (out-of-core / dask) exact kernel ---------------------------------------------------
#
# Pearson's r needs, over the cells, only per-gene sums, sums of squares and the gene-gene cross
# products, and all of them add across chunks of cells. The streamed kernel accumulates them for a band
# of genes ``I`` against the genes ``J >= I`` (float32 GEMM per chunk of cells, float64 running sums),
# then turns the band into correlations and offers them to the running top-k. Values are shifted by a
# per-gene constant (the mean of the first cells read) before the products, so that the raw moments do
# not cancel catastrophically for highly expressed genes; r does not depend on the shift.

_BAND_BYTES = 512 * 2**20
"""Largest float64 band of gene-gene cross products held by the streamed kernel (one pass per band)."""

_SHIFT_CELLS = 4096
"""Cells read to pick the per-gene shift of the streamed kernel."""


def _dense_rows(x, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a dense or sparse chunk as float32, Fortran-ordered (always a copy)."""
    if sparse.issparse(x):
        return np.asfortranarray(x[start:stop].toarray(order="F"), dtype=np.float32)
    return np.array(x[start:stop], dtype=np.float32, order="F", copy=True)


class _Moments:
    """Shifted sums over cells: band rows ``[i0, i1)`` of the cross products against genes ``[i0, n_genes)``.

    ``n`` cells; per gene (all genes) ``s`` = sum of ``x - shift``, ``sq`` = sum of ``(x - shift)**2``,
    ``hi`` / ``lo`` = largest / smallest raw value; ``cross[a, b] = sum (x_{i0+a} - c)(x_{i0+b} - c)`` for
    ``b >= a`` (upper part; the ``(I, I)`` square is symmetrised by :meth:`correlations`).
    """

    def __init__(self, shift: np.ndarray, i0: int, i1: int, block_size: int):
        g = shift.shape[0]
        self.shift = shift
        self.shift32 = shift.astype(np.float32)
        self.i0, self.i1, self.block_size = i0, i1, max(1, block_size)
        self.n = 0
        self.s = np.zeros(g)
        self.sq = np.zeros(g)
        self.hi = np.full(g, -np.inf)
        self.lo = np.full(g, np.inf)
        self.cross = np.zeros((i1 - i0, g - i0))

    def add(self, x, where: str, mask: np.ndarray | None = None) -> _Moments:
        """Accumulate a ``(n_chunk, n_genes)`` chunk (dense or sparse), validated, rows of ``mask`` only."""
        if mask is not None:
            x = x[np.flatnonzero(mask)]
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        check_values(x, where)
        if x.shape[0] == 0:
            return self
        g = self.shift.shape[0]
        rows = max(1, _CHUNK_BYTES // (4 * max(g, 1)))
        for r0 in range(0, x.shape[0], rows):
            y = _dense_rows(x, r0, min(r0 + rows, x.shape[0]))
            self.n += y.shape[0]
            np.maximum(self.hi, y.max(axis=0), out=self.hi)
            np.minimum(self.lo, y.min(axis=0), out=self.lo)
            y -= self.shift32
            self.s += y.sum(axis=0, dtype=np.float64)
            self.sq += np.einsum("ij,ij->j", y, y, dtype=np.float64)
            self._cross(y)
        return self

    def _cross(self, y: np.ndarray) -> None:
        i0, i1, b = self.i0, self.i1, self.block_size
        g = y.shape[1]
        for p0 in range(i0, i1, b):  # y is Fortran-ordered: its column slices are contiguous, as ssyrk wants
            p1 = min(p0 + b, i1)
            yp = y[:, p0:p1]
            self.cross[p0 - i0 : p1 - i0, p0 - i0 : p1 - i0] += blas.ssyrk(1.0, yp, trans=1)  # upper triangle
            for q0 in range(p1, g, b):
                q1 = min(q0 + b, g)
                self.cross[p0 - i0 : p1 - i0, q0 - i0 : q1 - i0] += yp.T @ y[:, q0:q1]

    def merge(self, other: _Moments) -> _Moments:
        """Add the sums of ``other`` (same shift and band) to these."""
        self.n += other.n
        self.s += other.s
        self.sq += other.sq
        np.maximum(self.hi, other.hi, out=self.hi)
        np.minimum(self.lo, other.lo, out=self.lo)
        self.cross += other.cross
        return self

    def correlations(self) -> tuple[np.ndarray, np.ndarray]:
        """Band correlations ``|r|`` as float32 ``(i1 - i0, n_genes - i0)`` (diagonal 0) and the constant mask."""
        n = max(self.n, 1)
        mu = self.s / n
        var = np.maximum(self.sq / n - mu**2, 0.0)
        const = (self.hi == self.lo) | ~(var > 0)
        std = np.sqrt(var)
        inv = np.where(const, 0.0, 1.0 / np.where(const, 1.0, std))
        i0, i1 = self.i0, self.i1
        C = self.cross
        sq = C[:, : i1 - i0]
        sq[:] = np.triu(sq) + np.triu(sq, 1).T
        R = np.empty(C.shape, dtype=np.float32)
        step = max(1, 2**22 // max(C.shape[1], 1))
        for a0 in range(0, C.shape[0], step):
            a1 = min(a0 + step, C.shape[0])
            blk = C[a0:a1] / n - np.outer(mu[i0 + a0 : i0 + a1], mu[i0:])
            blk *= inv[i0 + a0 : i0 + a1, None]
            blk *= inv[None, i0:]
            np.abs(blk, out=blk)
            np.clip(blk, 0.0, 1.0, out=blk)
            R[a0:a1] = blk
        R[np.arange(i1 - i0), np.arange(i1 - i0)] = 0.0
        return R, const


def _offer_band(top: _TopK, R: np.ndarray, i0: int, i1: int) -> None:
    """Offer the band's ``|r|`` to rows ``[i0, i1)`` and, transposed, to the rows ``>= i1``."""
    step = max(1, 2**22 // max(R.shape[1], 1))
    for a0 in range(0, R.shape[0], step):
        a1 = min(a0 + step, R.shape[0])
        top.update(R[a0:a1], i0 + a0, i0)
        if R.shape[1] > i1 - i0:
            top.update(R[a0:a1, i1 - i0 :], i1, i0 + a0, transpose=True)


def _bands(n_genes: int, band_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of the cross-product bands: each ``(i1 - i0) * (n_genes - i0)`` float64 within ``band_bytes``."""
    out = []
    i0 = 0
    while i0 < n_genes:
        rows = max(1, int(band_bytes // (8 * (n_genes - i0))))
        i1 = min(n_genes, i0 + rows)
        out.append((i0, i1))
        i0 = i1
    return out


def _mean_of_first_cells(chunks, n_genes: int) -> np.ndarray:
    """Per-gene mean of the first ``_SHIFT_CELLS`` selected cells of ``(rows, mask)`` chunks, read lazily.

    The streamed kernels' shift: subtracting it before accumulating keeps the float64 sums exact enough for
    highly expressed genes. ``mask`` (boolean over the chunk's rows, or ``None`` for all) selects the cells.
    """
    got, sums = 0, np.zeros(n_genes)
    for x, m in chunks:
        if m is not None:
            x = x[np.flatnonzero(m)]
        x = x[: _SHIFT_CELLS - got]
        sums += np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        got += x.shape[0]
        if got >= _SHIFT_CELLS:
            break
    return sums / max(got, 1)


class _RowChunks:
    """A ``(n_cells, n_genes)`` matrix read ``chunk`` rows at a time: backed (h5py / anndata sparse dataset) or in memory."""

    def __init__(self, X, cell_mask: np.ndarray | None, where: str):
        self.X, self.mask, self.where = X, cell_mask, where
        self.n_rows, self.n_genes = (int(s) for s in X.shape)
        self.chunk = max(1, _CHUNK_BYTES // (4 * max(self.n_genes, 1)))

    def _ranges(self):
        for c0 in range(0, self.n_rows, self.chunk):
            c1 = min(c0 + self.chunk, self.n_rows)
            m = None if self.mask is None else self.mask[c0:c1]
            if m is None or m.any():
                yield c0, c1, m

    def shift(self) -> np.ndarray:
        return _mean_of_first_cells(((self.X[c0:c1], m) for c0, c1, m in self._ranges()), self.n_genes)

    def moments(self, shift: np.ndarray, i0: int, i1: int, block_size: int) -> _Moments:
        acc = _Moments(shift, i0, i1, block_size)
        for c0, c1, m in self._ranges():
            acc.add(self.X[c0:c1], self.where, m)
        return acc


def _import_dask():
    try:
        import dask
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The expression matrix is a dask array, but dask cannot be imported; install it with "
            "`pip install 'dask[array]'` (or `pip install 'genohoption[dask]'`)."
        ) from err
    return dask


def _dask_block_moments(block, shift, i0, i1, block_size, where, mask):
    return _Moments(shift, i0, i1, block_size).add(block, where, mask)


def _merge_moments(a: _Moments, b: _Moments) -> _Moments:
    return a.merge(b)


class _DaskChunks:
    """A dask array: one task per block of rows (all genes), partial sums added by a tree reduction."""

    def __init__(self, X, cell_mask: np.ndarray | None, where: str):
        _import_dask()
        if X.ndim != 2:
            raise ValueError(f"{where} must be 2-D, got a dask array of shape {X.shape}.")
        self.X = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X
        self.mask, self.where = cell_mask, where
        self.n_rows, self.n_genes = (int(s) for s in X.shape)
        if any(math.isnan(c) for c in self.X.chunks[0]):
            raise ValueError(
                f"{where} is a dask array of unknown chunk sizes; call `X.compute_chunk_sizes()` first."
            )
        offsets = np.concatenate([[0], np.cumsum(self.X.chunks[0])]).astype(np.int64)
        self.row_ranges = [(int(a), int(b)) for a, b in itertools.pairwise(offsets)]

    def shift(self) -> np.ndarray:
        masks = (None if self.mask is None else self.mask[c0:c1] for c0, c1 in self.row_ranges)
        blocks = ((self.X.blocks[k, 0].compute(), m) for k, m in enumerate(masks) if m is None or m.any())
        return _mean_of_first_cells(blocks, self.n_genes)

    def moments(self, shift: np.ndarray, i0: int, i1: int, block_size: int) -> _Moments:
        dask = _import_dask()
        blocks = self.X.to_delayed().ravel()
        parts = []
        for blk, (c0, c1) in zip(blocks, self.row_ranges, strict=True):
            m = None if self.mask is None else self.mask[c0:c1]
            if m is not None and not m.any():
                continue
            parts.append(dask.delayed(_dask_block_moments)(blk, shift, i0, i1, block_size, self.where, m))
        if not parts:
            return _Moments(shift, i0, i1, block_size)
        while len(parts) > 1:  # pairwise tree: partial sums never pile up on one worker
            parts = [
                dask.delayed(_merge_moments)(a, b) for a, b in zip(parts[::2], parts[1::2], strict=False)
            ] + ([parts[-1]] if len(parts) % 2 else [])
        (out,) = dask.compute(parts[0])
        return out


def is_dask_array(X) -> bool:
    """Whether ``X`` is a dask array (checked without importing dask)."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


def coexpression_topk_streamed(
    X,
    n_neighbors: int,
    min_corr: float,
    *,
    cell_mask: np.ndarray | None = None,
    block_size: int | None = None,
    where: str = "the expression matrix",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``n_neighbors`` genes by ``|r| > min_corr``, reading ``X`` in chunks of cells.

    The statistics of Pearson's r (per-gene sums and sums of squares, gene-gene cross products) add
    across chunks of cells; they are accumulated in float64 from float32 GEMMs on dense slices of about
    128 MiB, for one band of genes against all later genes at a time (each band's float64 cross products
    within 512 MiB: one band, hence one pass over the data, up to about 8,000 genes). Memory does not grow
    with the number of cells. Same edges as :func:`coexpression_topk_exact` (up to float32 round-off).

    Parameters
    ----------
    X
        ``(n_cells, n_genes)``: a backed matrix (``h5py.Dataset`` or anndata's CSR dataset, read in
        chunks of rows), a dask array (one task per block of rows, partial sums added by a tree
        reduction on dask's current scheduler, e.g. a ``distributed`` cluster), or an in-memory matrix.
    n_neighbors
        Neighbours per gene.
    min_corr
        Keep only ``|r| > min_corr``.
    cell_mask
        Boolean ``(n_cells,)``: the cells to use (applied chunk by chunk); ``None``: all.
    block_size
        Genes per GEMM tile (default 2048); results do not depend on it.
    where
        Name of the matrix, for messages.

    Returns
    -------
    ``rows, cols, absr`` as :func:`coexpression_topk_exact`.

    Raises
    ------
    ValueError
        For NaN, infinite, negative or too large values (checked chunk by chunk), or a dask array of
        unknown chunk sizes.
    ImportError
        For a dask array when dask cannot be imported.
    """
    source = _DaskChunks(X, cell_mask, where) if is_dask_array(X) else _RowChunks(X, cell_mask, where)
    g = source.n_genes
    k = min(n_neighbors, max(g - 1, 1))
    b = max(1, min(block_size or 2048, g))
    shift = source.shift()
    top = _TopK(g, k, min_corr)
    for i0, i1 in _bands(g, _BAND_BYTES):
        mom = source.moments(shift, i0, i1, b)
        R, _ = mom.correlations()
        del mom
        _offer_band(top, R, i0, i1)
        del R
    return top.edges()
