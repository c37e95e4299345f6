"""Preprocessing: the gene graph (Seq2Graph) and prior networks. Never imports torch."""

from ._gene_graph import build_gene_graph
from ._priors import normalize_prior, read_prior

__all__ = ["build_gene_graph", "normalize_prior", "read_prior"]
