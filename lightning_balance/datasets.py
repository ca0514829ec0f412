"""The long-tailed digits and data helpers: they live in :mod:`lightning_balance.experiments.datasets`.

Kept so that ``from lightning_balance.datasets import LongTailDigits`` (and every name below) keeps working.
"""

from lightning_balance.experiments.datasets import (
    LongTailDigits,
    independent_groups,
    long_tail_counts,
    long_tail_subset,
)

__all__ = ["LongTailDigits", "independent_groups", "long_tail_counts", "long_tail_subset"]
