"""Functional forms of the package's metrics and batch scores: plain functions of tensors, no state."""

from lightning_balance.functional.fiedler import fiedler_vectors
from lightning_balance.functional.spectral import spectral_scores
from lightning_balance.functional.tail_recall import long_tail_split, tail_recall

__all__ = ["fiedler_vectors", "long_tail_split", "spectral_scores", "tail_recall"]
