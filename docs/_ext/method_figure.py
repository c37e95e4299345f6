"""Draw the method figure (Seq2Graph, diffusion, Graph2Seq) for docs/method.md; run by conf.py at build time."""

from __future__ import annotations

from math import exp, factorial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch

GENES = ["CLS", "STAT1", "IRF1", "JAK2", "CD86", "MYC"]
EDGES = [(1, 2), (2, 1), (1, 3), (3, 1), (2, 4), (5, 2)]  # (i, j): token i attends to token j
POS = {0: (0.5, 0.9), 1: (0.15, 0.55), 2: (0.5, 0.45), 3: (0.2, 0.18), 4: (0.85, 0.55), 5: (0.8, 0.18)}
BLUE, GREY, ORANGE = "#2b6cb0", "#a0aec0", "#dd6b20"


def _tokens(ax) -> None:
    ax.set_title("1  a cell: its expressed genes as tokens", loc="left", fontsize=10)
    for k, gene in enumerate(GENES):
        x = 0.08 + k * 0.168
        ax.add_patch(plt.Rectangle((x - 0.075, 0.45), 0.15, 0.22, color=ORANGE if k == 0 else BLUE, alpha=0.85))
        ax.text(x, 0.56, gene, ha="center", va="center", color="white", fontsize=7.5, weight="bold")
        ax.text(x, 0.33, "q k v", ha="center", fontsize=7.5, color="#4a5568")
    ax.text(0.5, 0.12, "gene graph G (co-expression + prior TF → target edges)\ninduced on the cell's genes",
            ha="center", fontsize=8.5, color="#4a5568")


def _graph(ax) -> None:
    ax.set_title("2  Seq2Graph: attention on the edges only", loc="left", fontsize=10)
    for i in range(1, len(GENES)):
        ax.annotate("", POS[0], POS[i], arrowprops={"arrowstyle": "-", "color": GREY, "lw": 0.8, "ls": ":"})
    for i, j in EDGES:
        ax.add_patch(FancyArrowPatch(POS[j], POS[i], arrowstyle="-|>", mutation_scale=10, color=BLUE, lw=1.3,
                                     connectionstyle="arc3,rad=0.15", shrinkA=14, shrinkB=14))
    for k, (x, y) in POS.items():
        ax.scatter([x], [y], s=650, color=ORANGE if k == 0 else BLUE, zorder=3)
        ax.text(x, y, GENES[k], ha="center", va="center", color="white", fontsize=7, weight="bold", zorder=4)
    ax.text(0.5, -0.17, r"$a_{ij} = \mathrm{softmax}_{j \in Ne(i)}(q_i \cdot k_j / \sqrt{d})$"
            "\nself-loops; CLS joined to every gene (dotted)", ha="center", fontsize=8.5, color="#4a5568")


def _diffusion(ax, alpha: float = 0.25, t: float = 5.0, hops: int = 6) -> None:
    ax.set_title("3  diffusion: K = 6 hops over one attention matrix A", loc="left", fontsize=10)
    k = list(range(hops + 1))
    ppr = [alpha * (1 - alpha) ** i for i in k[:-1]] + [(1 - alpha) ** hops]
    heat = [exp(-t) * t**i / factorial(i) for i in k]
    ax.bar([i - 0.2 for i in k], ppr, width=0.4, color=BLUE, label=r"PPR, $\alpha$ = 0.25")
    ax.bar([i + 0.2 for i in k], heat, width=0.4, color=ORANGE, label="heat kernel, t = 5")
    ax.set_xticks(k)
    ax.set_xlabel("hop k: weight of $A^k V$ in the output", fontsize=8.5)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


def _graph2seq(ax) -> None:
    ax.set_title("4  Graph2Seq: back into the transformer layer", loc="left", fontsize=10)
    steps = ["diffused values (PPR: $V_K$; heat: $\\sum_k V_k$)", "output projection, dropout",
             "residual + LayerNorm", "feed-forward, residual + LayerNorm", "next layer (same graph, new A)"]
    for n, step in enumerate(steps):
        y = 0.92 - n * 0.24
        ax.text(0.5, y, step, ha="center", va="center", fontsize=8.5,
                bbox={"boxstyle": "round,pad=0.35", "fc": "#ebf4ff" if n else "#fbd38d", "ec": BLUE, "lw": 0.8})
        if n:
            ax.annotate("", (0.5, y + 0.08), (0.5, y + 0.16), arrowprops={"arrowstyle": "-|>", "color": BLUE})


def draw(path: Path) -> Path:
    """Write the figure (SVG) to ``path``; return it."""
    fig = plt.figure(figsize=(9, 6.6))
    grid = fig.add_gridspec(2, 2, hspace=0.45, wspace=0.2)
    for n, panel in enumerate((_tokens, _graph, _diffusion, _graph2seq)):
        ax = fig.add_subplot(grid[n // 2, n % 2])
        if panel is not _diffusion:
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.2, 1.05) if panel is not _graph2seq else ax.set_ylim(-0.1, 1.05)
            ax.axis("off")
        panel(ax)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(Path(__file__).parents[1] / "_figures" / "method.svg"))
