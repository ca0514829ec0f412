r"""
Training sources
^^^^^^^^^^^^^^^^

:meth:`BalancedDataModule <lightning_balance.BalancedDataModule>` reads ``train_sources`` (one dataset per group)
through ``len(source)`` and ``source[i]`` for ``i`` in ``[0, len(source))``, and every process must see the same
lengths: the lengths are the group sizes of the :class:`~lightning_balance.Mixture`, and rank ``r`` takes the
positions ``r, r + R, ...`` of one global stream. :func:`map_style` gives that view of a dataset.

- A Hugging Face ``datasets.Dataset`` (``load_from_disk``, ``from_dict``, ...) and any torch ``Dataset`` with a
  length are map-style already and are returned unchanged.
- A LitData ``StreamingDataset`` is wrapped in :class:`LitDataSource`. It is an ``IterableDataset`` whose
  ``len()`` is the number of samples *this process* iterates over: under DDP with ``R`` processes about
  ``n / R`` (rounded down, since it drops the remainder in a distributed run), computed from the process group
  that exists when the dataset is built, while ``ds[i]`` still addresses the global item ``i``. Used as it is, a
  mixture under DDP would be built on per-rank lengths: each group would shrink to its first ``~n / R`` items, and
  processes that built their datasets before and after the process group started would disagree on the sizes.
  :class:`LitDataSource` reports the number of items the dataset can address (the sum of its chunks' regions,
  the same on every process) and passes indices as Python ints (LitData refuses numpy integers).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> source = TensorDataset(torch.arange(5))
    >>> map_style(source) is source
    True
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset, IterableDataset

__all__ = ["LitDataSource", "map_style", "map_style_sources"]


class LitDataSource(Dataset):
    """A LitData ``StreamingDataset`` read by index, with the same length on every process.

    Args:
        dataset: a ``litdata.StreamingDataset`` over data written by ``litdata.optimize``.
    """

    def __init__(self, dataset: Any) -> None:
        regions = getattr(dataset, "region_of_interest", None)
        if regions is None:
            raise TypeError(
                f"Expected a litdata.StreamingDataset, but got {type(dataset).__name__}, which has no"
                " `region_of_interest` (the items of each chunk it reads)."
            )
        self.dataset = dataset
        # What ds[i] can address: every item of every chunk it reads (after any `subsample`), on every rank alike.
        self.length = int(sum(int(end) - int(start) for start, end in regions))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        index = operator.index(index)
        if not 0 <= index < self.length:
            raise IndexError(f"Index {index} is out of range for a LitData source of {self.length} items.")
        return self.dataset[int(index)]

    def __repr__(self) -> str:
        return f"LitDataSource({self.dataset.input_dir.path or self.dataset.input_dir.url!r}, items={self.length})"


def _is_litdata_streaming(dataset: Any) -> bool:
    # LitData is optional: a StreamingDataset can only exist once litdata has been imported.
    litdata = sys.modules.get("litdata")
    return litdata is not None and isinstance(dataset, litdata.StreamingDataset)


def map_style(dataset: Any) -> Any:
    """A map-style view of ``dataset`` for ``train_sources``: the same length on every process, items by index.

    LitData ``StreamingDataset`` s are wrapped in :class:`LitDataSource`; datasets that already have a length and
    take integer indices (torch ``Dataset`` s, Hugging Face ``datasets.Dataset``) are returned unchanged.

    Raises:
        TypeError: for datasets without random access or without a length, such as a LitData
            ``CombinedStreamingDataset``, a streaming Hugging Face ``IterableDataset`` or any other
            ``IterableDataset``: give one map-style dataset per group instead.
    """
    if isinstance(dataset, LitDataSource):
        return dataset
    if _is_litdata_streaming(dataset):
        return LitDataSource(dataset)
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            f"Expected a map-style dataset (a length and items by index), but got {type(dataset).__name__}."
            " A training source is one dataset per group read by index; a stream or a mixture of streams cannot"
            " be one. Give one map-style dataset per group (e.g. one litdata.StreamingDataset per folder written"
            " by litdata.optimize, or datasets.load_from_disk per group)."
        )
    return dataset


def map_style_sources(sources: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`map_style` applied to every dataset of a ``{group name: dataset}`` mapping, in its order."""
    return {name: map_style(dataset) for name, dataset in sources.items()}
