"""Tokenization of expression rows into gene-token sequences (torch)."""

from ._binning import bin_values
from ._rank import rank_value_encode
from ._tokenize import PAD, Tokens, tokenize

__all__ = ["PAD", "Tokens", "bin_values", "rank_value_encode", "tokenize"]
