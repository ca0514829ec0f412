r"""
Long-tailed digits
^^^^^^^^^^^^^^^^^^

A long-tailed version of scikit-learn's handwritten digits, built with the standard long-tail construction
:math:`n_i = \lfloor n_{max} \cdot (1/IF)^{i/(C-1)} \rfloor` (CIFAR-10-LT style). The digits ship inside
scikit-learn, so nothing is downloaded. The validation set is balanced and disjoint from training, so
per-class recall measures every class equally.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_balance.datamodule import BalancedDataModule

__all__ = ["long_tail_counts", "long_tail_subset", "independent_groups", "LongTailDigits"]


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    r"""Class sizes :math:`\lfloor n_{max} (1/IF)^{i/(C-1)} \rfloor`, at least 1 each.

    Example:
        >>> long_tail_counts(500, num_classes=5, imbalance_factor=100)
        [500, 158, 50, 15, 5]
    """
    if n_max < 1 or num_classes < 1:
        raise ValueError(f"Expected `n_max` and `num_classes` >= 1, but got n_max={n_max}, num_classes={num_classes}.")
    if imbalance_factor < 1:
        raise ValueError(f"Expected argument `imbalance_factor` to be >= 1 (1 = balanced), but got {imbalance_factor}.")
    if num_classes == 1:
        return [int(n_max)]
    # The small epsilon keeps exact powers (e.g. 500 * 0.1 = 50) from flooring to one less.
    return [
        max(1, int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1)) + 1e-9)) for i in range(num_classes)
    ]


def long_tail_subset(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Indices of a random subset holding ``counts[c]`` examples of class ``c`` (sorted)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if n > len(members):
            raise ValueError(f"Class {c} has {len(members)} examples, fewer than the {n} requested.")
        chosen.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(chosen))


def independent_groups(
    group_sizes: list[int], num_features: int = 8, num_classes: int = 3, seed: int = 0
) -> TensorDataset:
    """Synthetic ``(x, y, group)`` data whose group is independent of the features and the label.

    Every group holds samples of one and the same distribution (``x`` standard normal, ``y`` uniform and
    independent of ``x``), so every group has the same per-sample gradient moments: the setting in which
    Theorem 2 of Li et al. (2025) predicts that upweighting has exactly :math:`F(T)` times the gradient
    variance of upsampling.

    Example:
        >>> data = independent_groups([50, 5], num_features=4)
        >>> x, y, group = data.tensors
        >>> x.shape, torch.bincount(group).tolist()
        (torch.Size([55, 4]), [50, 5])
    """
    if not group_sizes or any(int(n) < 1 for n in group_sizes):
        raise ValueError(f"Expected argument `group_sizes` to be positive group sizes, but got {group_sizes!r}.")
    generator = torch.Generator().manual_seed(seed)
    groups = torch.repeat_interleave(torch.arange(len(group_sizes)), torch.tensor([int(n) for n in group_sizes]))
    x = torch.randn(len(groups), num_features, generator=generator)
    y = torch.randint(0, num_classes, (len(groups),), generator=generator)
    return TensorDataset(x, y, groups)


class LongTailDigits(BalancedDataModule):
    """Long-tailed handwritten digits (8x8 images as 64 features, 10 classes), no download.

    Per class, ``val_per_class`` images form a balanced validation set; from the rest, class ``i`` keeps
    :math:`n_{max} (1/IF)^{i/9}` images for training, where ``n_max`` is the smallest class remainder.
    With the defaults (IF = 100) training holds 124, 74, 44, 26, 16, 9, 5, 3, 2, 1 images.
    The groups are the class labels.

    Args:
        imbalance_factor: ratio of the largest to the smallest class.
        val_per_class: validation images per class.
        data_seed: seed of the split (independent of the sampling ``seed``).
        **kwargs: everything :class:`BalancedDataModule` takes (``strategy``, ``temperature``, ``batch_size``...).

    Example:
        >>> dm = LongTailDigits(strategy="upsample", temperature=5.0, batch_size=16)
        >>> dm.setup("fit")
        >>> dm.group_counts.tolist()
        [124, 74, 44, 26, 16, 9, 5, 3, 2, 1]
        >>> len(dm.val_dataset)
        500
    """

    def __init__(
        self, imbalance_factor: float = 100.0, val_per_class: int = 50, data_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.imbalance_factor = imbalance_factor
        self.val_per_class = val_per_class
        self.data_seed = data_seed
        self.num_classes = 10
        self.num_features = 64

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        rng = np.random.default_rng(self.data_seed)
        val_idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), self.val_per_class, replace=False) for c in range(self.num_classes)]
        )
        rest = np.setdiff1d(np.arange(len(y)), val_idx)
        n_max = int(np.bincount(y[rest], minlength=self.num_classes).min())
        counts = long_tail_counts(n_max, self.num_classes, self.imbalance_factor)
        train_idx = rest[long_tail_subset(y[rest], counts, seed=self.data_seed)]
        self.train_dataset = TensorDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
        self.val_dataset = TensorDataset(torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx]))
        self.test_dataset = self.val_dataset
