"""Plots of the gene graph built by :func:`genohoption.pp.build_gene_graph`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from scipy import sparse

from .._constants import GRAPH_KEY, GRAPH_SOURCE_SUFFIX
from ._utils import _finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

EDGE_STYLE = {
    1: ("co-expression", "#1f77b4"),
    2: ("prior (TF → target)", "#d62728"),
    3: ("both", "#9467bd"),
    0: ("unknown source", "#7f7f7f"),
}
"""Source code (``varp[key + "_source"]``) → legend label and colour."""


def _graph_and_source(adata: AnnData, key: str) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    if key not in adata.varp:
        raise KeyError(
            f"No gene graph at `adata.varp[{key!r}]`; build it with `gh.pp.build_gene_graph(adata, key_added={key!r})`."
        )
    graph = sparse.csr_matrix(adata.varp[key])
    src_key = key + GRAPH_SOURCE_SUFFIX
    if src_key in adata.varp:
        source = sparse.csr_matrix(adata.varp[src_key]).astype(np.int8)
    else:  # graph from elsewhere: sources unknown
        source = graph.copy().astype(np.int8)
        source.data[:] = 0
        source = source.tocsr()
    return graph, source


def gene_graph(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    key: str = GRAPH_KEY,
    max_neighbors: int = 30,
    node_size: float = 60.0,
    fontsize: float = 7.0,
    weighted: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Draw the neighbourhood of one or several genes in the gene graph or a gene network.

    The chosen genes sit in the centre (one gene) or on an inner circle; their neighbours (genes
    they attend to and genes attending to them) on an outer circle, grouped by centre gene. All graph
    edges among the drawn genes are shown, undirected, coloured by source: co-expression, prior
    (TF → target) or both.

    Parameters
    ----------
    adata
        Annotated data with ``adata.varp[key]`` (and ``adata.varp[key + "_source"]``) from
        :func:`genohoption.pp.build_gene_graph`.
    genes
        One gene or a list of genes (``var_names``).
    key
        Key of the graph in ``adata.varp``.
    max_neighbors
        At most this many neighbours per centre gene (prior and shared edges first).
    node_size
        Marker size of the neighbours (centre genes are drawn 2.5 times larger).
    fontsize
        Font size of the gene labels.
    weighted
        Draw the graph's weights: neighbours ranked by weight, line width proportional to it (the larger of
        the two directions), one colour. For the networks of
        :meth:`~genohoption.GenoHoptionModel.get_gene_network` (``key="gene_network"``, its receptive field
        ``key="gene_network_diffusion"``). Default: edges coloured by source (co-expression, prior).
    ax
        Axes to draw into; a new figure if ``None``. Compose with scanpy, e.g.
        ``sc.pl.umap(adata, ax=axs[0], show=False)`` beside ``gh.pl.gene_graph(adata, "CD3E", ax=axs[1])``.
    show
        Show the figure and return ``None``.

    Returns
    -------
    The Axes, unless ``show=True``.

    Raises
    ------
    KeyError
        If there is no graph at ``key`` or a gene is not in ``var_names``.
    """
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("Pass at least one gene.")
    graph, source = _graph_and_source(adata, key)
    if weighted:  # rank and draw by weight; the diagonal (self-attention) is not an edge of the drawing
        weight = abs(graph).tocsr().astype(np.float64)
        weight.setdiag(0)
        weight.eliminate_zeros()
        source = weight
    names = adata.var_names
    missing = [g for g in genes if g not in names]
    if missing:
        raise KeyError(f"Genes not in `adata.var_names`: {missing}.")
    centers = [int(names.get_loc(g)) for g in dict.fromkeys(genes)]
    und = (source + source.T).tocsr()  # per unordered pair: sum of codes (or weights), used only for ranking
    csc_src = source.tocsc()

    neighbours: list[int] = []
    owner: dict[int, int] = {}
    for c in centers:
        out_nb = source.indices[source.indptr[c] : source.indptr[c + 1]]
        in_nb = csc_src.indices[csc_src.indptr[c] : csc_src.indptr[c + 1]]
        nb = np.union1d(out_nb, in_nb)
        nb = nb[~np.isin(nb, centers)]
        if nb.size:
            rank = np.asarray(und[c, nb].todense()).ravel()
            nb = nb[np.lexsort((nb, -rank))][:max_neighbors]
        for j in nb.tolist():
            if j not in owner:
                owner[j] = c
                neighbours.append(j)
    neighbours.sort(key=lambda j: (centers.index(owner[j]), j))
    nodes = centers + neighbours

    pos = {}
    if len(centers) == 1:
        pos[centers[0]] = (0.0, 0.0)
    else:
        for t, c in enumerate(centers):
            a = 2 * np.pi * t / len(centers)
            pos[c] = (0.45 * np.cos(a), 0.45 * np.sin(a))
    for t, j in enumerate(neighbours):
        a = 2 * np.pi * t / max(len(neighbours), 1)
        pos[j] = (1.5 * np.cos(a), 1.5 * np.sin(a))

    # induced subgraph, undirected: code of a pair = bitwise OR of the codes of both directions (weights: max)
    sub = source[nodes][:, nodes].tocoo()
    pairs: dict[tuple[int, int], float] = {}
    for r, c, v in zip(sub.row.tolist(), sub.col.tolist(), sub.data.tolist(), strict=True):
        a, b = nodes[r], nodes[c]
        k = (min(a, b), max(a, b))
        pairs[k] = max(pairs.get(k, 0.0), v) if weighted else int(pairs.get(k, 0)) | int(v)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    handles = []
    if weighted and pairs:
        top = max(pairs.values())
        ax.add_collection(LineCollection([[pos[a], pos[b]] for a, b in pairs], colors="#1f77b4", alpha=0.75,
                                         linewidths=[0.3 + 4.0 * v / top for v in pairs.values()], zorder=1))
        handles.append(Line2D([], [], color="#1f77b4", lw=2, label=f"weight (width; max {top:.3g}), {len(pairs)} edges"))
    for code in () if weighted else (1, 2, 3, 0):
        segs = [[pos[a], pos[b]] for (a, b), v in pairs.items() if v == code]
        if not segs:
            continue
        label, color = EDGE_STYLE[code]
        ax.add_collection(
            LineCollection(
                segs, colors=color, linewidths=1.6 if code >= 2 else 1.0, alpha=0.75, zorder=1, label=label
            )
        )
        handles.append(Line2D([], [], color=color, lw=2, label=f"{label} ({len(segs)})"))
    xy = np.array([pos[n] for n in neighbours]).reshape(-1, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=node_size, c="#dddddd", edgecolors="#555555", linewidths=0.6, zorder=2)
    cxy = np.array([pos[c] for c in centers]).reshape(-1, 2)
    ax.scatter(
        cxy[:, 0], cxy[:, 1], s=2.5 * node_size, c="#ffbf00", edgecolors="black", linewidths=0.8, zorder=3
    )
    for n in nodes:
        x, y = pos[n]
        is_center = n in centers
        r = np.hypot(x, y)
        dx, dy = ((x / r, y / r) if r > 0 else (0.0, 1.0)) if not is_center else (0.0, 0.0)
        ax.text(
            x + 0.12 * dx, y + 0.12 * dy, names[n],
            fontsize=fontsize * (1.3 if is_center else 1.0), fontweight="bold" if is_center else "normal",
            ha="left" if dx > 0.3 else "right" if dx < -0.3 else "center",
            va="bottom" if is_center else "center", zorder=4,
        )  # fmt: skip
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_xlim(-2.1, 2.1)
    ax.set_ylim(-2.1, 2.1)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"{key}: neighbourhood of {', '.join(names[c] for c in centers)}")
    return _finish(ax, show)


def graph_summary(
    adata: AnnData,
    *,
    key: str = GRAPH_KEY,
    bins: int = 30,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """Summarise the gene graph: degree distribution and edges per source.

    Parameters
    ----------
    adata
        Annotated data with ``adata.varp[key]`` from :func:`genohoption.pp.build_gene_graph`.
    key
        Key of the graph in ``adata.varp``.
    bins
        Histogram bins of the degree panel.
    ax
        Two Axes to draw into (degree, sources); a new 1 × 2 figure if ``None``.
    show
        Show the figure and return ``None``.

    Returns
    -------
    Array of the two Axes (degree histogram, edge sources), unless ``show=True``.

    Raises
    ------
    KeyError
        If there is no graph at ``key``.
    ValueError
        If ``ax`` is not two Axes.
    """
    graph, source = _graph_and_source(adata, key)
    if ax is None:
        _, axs = plt.subplots(1, 2, figsize=(9, 3.5))
    else:
        axs = np.asarray(ax, dtype=object).ravel()
        if axs.size != 2:
            raise ValueError(f"`ax` must be two Axes (degree, sources), got {axs.size}.")
    axs = np.asarray(axs, dtype=object)
    out_deg = np.diff(graph.indptr)
    in_deg = np.bincount(graph.indices, minlength=graph.shape[0])
    top = max(int(out_deg.max(initial=0)), int(in_deg.max(initial=0)), 1)
    edges = np.linspace(0, top + 1, min(bins, top + 1) + 1)
    axs[0].hist(out_deg, bins=edges, alpha=0.7, color="#1f77b4", label="out (attends to)")
    axs[0].hist(in_deg, bins=edges, alpha=0.5, color="#ff7f0e", label="in (attended by)")
    axs[0].axvline(out_deg.mean(), color="black", ls="--", lw=1, label=f"mean {out_deg.mean():.1f}")
    axs[0].set_xlabel("degree")
    axs[0].set_ylabel("genes")
    axs[0].legend(frameon=False, fontsize=8)
    axs[0].set_title(f"{key}: {graph.nnz:,} edges, {graph.shape[0]:,} genes")
    codes = source.data
    counts = [int((codes == c).sum()) for c in (1, 2, 3)]
    labels = [EDGE_STYLE[c][0] for c in (1, 2, 3)]
    colors = [EDGE_STYLE[c][1] for c in (1, 2, 3)]
    if (codes == 0).any():
        counts.append(int((codes == 0).sum()))
        labels.append(EDGE_STYLE[0][0])
        colors.append(EDGE_STYLE[0][1])
    bars = axs[1].bar(range(len(counts)), counts, color=colors)
    axs[1].bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8)
    axs[1].set_xticks(range(len(counts)), labels, rotation=15, fontsize=8)
    axs[1].set_ylabel("edges")
    axs[1].set_title("edge sources")
    return _finish(axs, show)
