"""Tokenization of expression rows into gene-token sequences."""

from ._binning import bin_values
from ._perturbation import PairedControlDataLoader, PerturbationDataSplitter, parse_condition
from ._rank import rank_value_encode
from ._tokenize import PAD, Tokens, tokenize

__all__ = [
    "PAD",
    "PairedControlDataLoader",
    "PerturbationDataSplitter",
    "Tokens",
    "bin_values",
    "parse_condition",
    "rank_value_encode",
    "tokenize",
]
