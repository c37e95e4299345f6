"""gh.pl.gene_graph(weighted=True): a gene network's weights drawn as line widths."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.collections import LineCollection

import genohoption as gh


def test_weighted_gene_graph_draws_weights_as_widths():
    genes = ["A", "B", "C", "D"]
    adata = ad.AnnData(np.zeros((2, 4), np.float32), obs=pd.DataFrame(index=["c0", "c1"]),
                       var=pd.DataFrame(index=genes))
    # A attends to B (0.6) and C (0.2); B attends to A (0.1); self-attention on the diagonal is not drawn
    adata.varp["net"] = sp.csr_matrix(np.array([[0.2, 0.6, 0.2, 0], [0.1, 0.9, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    fig, ax = plt.subplots()
    out = gh.pl.gene_graph(adata, "A", key="net", weighted=True, ax=ax, show=False)
    assert out is ax
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    widths = sorted(lines.get_linewidths())
    np.testing.assert_allclose(widths, [0.3 + 4.0 * 0.2 / 0.6, 4.3])  # A-C, A-B (the larger direction)
    assert {t.get_text() for t in ax.texts} == {"A", "B", "C"}
    plt.close(fig)
