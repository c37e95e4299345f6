"""Tokenization of expression rows into gene-token sequences."""

from ._tokenize import PAD, Tokens, tokenize

__all__ = ["PAD", "Tokens", "tokenize"]
