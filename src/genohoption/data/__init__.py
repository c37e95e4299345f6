"""Tokenization of expression rows into gene-token sequences (torch)."""

from ._binning import bin_values
from ._rank import rank_value_encode
from ._tokenize import PAD, TokenRandom, Tokens, tokenize

__all__ = ["PAD", "TokenRandom", "Tokens", "bin_values", "rank_value_encode", "tokenize"]
