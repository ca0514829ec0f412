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

import bisect
import itertools
import operator
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from lightning_balance.sampler import MixtureSampler

__all__ = ["LitDataSource", "map_style", "map_style_sources", "is_stream", "StreamSources"]


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
            " A training source read by index is one map-style dataset per group (e.g. one litdata.StreamingDataset"
            " per folder written by litdata.optimize, or datasets.load_from_disk per group); a mixture of streams"
            " cannot be one. Streams are accepted too when every group is one (see `StreamSources`)."
        )
    return dataset


def map_style_sources(sources: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`map_style` applied to every dataset of a ``{group name: dataset}`` mapping, in its order."""
    return {name: map_style(dataset) for name, dataset in sources.items()}


def is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` can only be iterated (a streaming Hugging Face ``IterableDataset``, a torch
    ``IterableDataset``, a webdataset pipeline), not read by index.
    """
    if isinstance(dataset, LitDataSource) or _is_litdata_streaming(dataset):
        return False
    return isinstance(dataset, IterableDataset) or (
        hasattr(dataset, "__iter__") and not hasattr(dataset, "__getitem__")
    )


class StreamSources:
    """One stream per group, each consumed in order: the mixture decides which stream the next sample comes from.

    A stream that runs out starts its next pass (calling its ``set_epoch(pass)`` first when it has one, so a
    shuffled Hugging Face ``IterableDataset`` reshuffles). On a resume, every stream is brought back to its count
    by reading past the samples already consumed (``skip`` when the stream has one): the group sequence is a pure
    function of the position, so the counts are computed, not stored.

    Args:
        sources: ``{group name: iterable}``.
        sizes: ``{group name: examples}`` for the streams without a length (the mixture's group sizes).
    """

    def __init__(self, sources: Mapping[str, Any], sizes: Mapping[str, int] | None = None) -> None:
        self.names = list(sources)
        self.streams = list(sources.values())
        given = dict(sizes or {})
        found = []
        for name, stream in sources.items():
            if name in given:
                size = given[name]
            else:
                try:
                    size = len(stream)
                except TypeError:
                    raise ValueError(
                        f"The stream {name!r} of `train_sources` ({type(stream).__name__}) has no length, and the"
                        " mixture needs every group's size. Give it in `train_source_sizes = {name: examples}` (for a"
                        " Hugging Face dataset, `info.splits[split].num_examples`)."
                    ) from None
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"Expected the size of stream {name!r} to be a positive integer, but got {size!r}.")
            found.append(size)
        self.sizes = found
        self._iterators: list[Any] = [None] * len(self.streams)
        self._passes = [0] * len(self.streams)
        self.consumed = [0] * len(self.streams)

    def restart(self, counts: list[int]) -> None:
        """Bring every stream to ``counts[g]`` samples consumed (from the start of the run)."""
        for g in range(len(self.streams)):
            self._iterators[g], self._passes[g], self.consumed[g] = None, 0, 0
            left = int(counts[g])
            while left > 0:
                iterator = self._open(g)
                taken = sum(1 for _ in itertools.islice(iterator, left))
                self.consumed[g] += taken
                left -= taken
                if left > 0:
                    # That pass ran out before the count: the next one starts.
                    self._iterators[g] = None
                    self._passes[g] += 1

    def _open(self, g: int) -> Any:
        if self._iterators[g] is None:
            stream = self.streams[g]
            if hasattr(stream, "set_epoch"):
                stream.set_epoch(self._passes[g])
            self._iterators[g] = iter(stream)
        return self._iterators[g]

    def next(self, g: int) -> Any:
        """The next sample of stream ``g``."""
        for _ in range(2):
            try:
                item = next(self._open(g))
            except StopIteration:
                self._iterators[g] = None
                self._passes[g] += 1
                continue
            self.consumed[g] += 1
            return item
        raise ValueError(f"The stream {self.names[g]!r} of `train_sources` yields no sample.")


class _SourcesDataset(Dataset):
    """One map-style dataset per group, read as one: group ``g`` owns indices ``[offsets[g], offsets[g + 1])``.

    It stores the sources' offsets only, nothing per example.
    """

    def __init__(self, sources: Mapping[str, Any]) -> None:
        self.names = list(sources)
        # Every process must see every source's full length (a LitData StreamingDataset reports its rank's share).
        self.sources = [map_style(source) for source in sources.values()]
        sizes = []
        for name, source in zip(self.names, self.sources, strict=True):
            try:
                sizes.append(len(source))
            except TypeError as err:
                raise TypeError(
                    f"Expected every entry of `train_sources` to be a map-style dataset with a length, but"
                    f" {name!r} ({type(source).__name__}) has none. Give its length (e.g. wrap it in a Dataset with"
                    " `__len__`), or stream it with an iterable source instead."
                ) from err
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self._bounds = self.offsets[1:].tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Any:
        group = bisect.bisect_right(self._bounds, index)
        return self.sources[group][index - int(self.offsets[group])]

    def groups_of(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(self.offsets, indices.numpy(), side="right") - 1)

    @classmethod
    def of_sizes(cls, names: list[str], sizes: list[int]) -> _SourcesDataset:
        """The index layout of streams: offsets only, no items (streams are read by :class:`_StreamDataset`)."""
        layout = cls.__new__(cls)
        layout.names, layout.sources = list(names), []
        layout.sizes = np.asarray(sizes, dtype=np.int64)
        layout.offsets = np.concatenate([[0], np.cumsum(layout.sizes)]).astype(np.int64)
        layout._bounds = layout.offsets[1:].tolist()
        return layout


class _GroupSampler(MixtureSampler):
    """A :class:`MixtureSampler` that yields the group of each of its positions (streams pick the sample)."""

    def _indices(self, start: int, stop: int) -> torch.Tensor:
        return self.mixture.groups(start, stop)


class _StreamDataset(torch.utils.data.IterableDataset):
    """This rank's training samples from one stream per group: the group sequence from the mixture, each stream
    consumed in order. Yields ``(virtual index, sample)``: the index lies in the group's range, for the collate.
    """

    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule

    def __len__(self) -> int:
        sampler = self.datamodule.sampler
        assert sampler is not None
        return len(sampler)

    def __iter__(self) -> Any:
        dm = self.datamodule
        sampler, streams, layout = dm.sampler, dm._streams, dm._sources_dataset
        assert sampler is not None and streams is not None and layout is not None
        start = sampler.position
        if getattr(streams, "mark", None) != start:
            # A resume, or a fresh run: bring every stream to what this rank consumed before `start`.
            streams.restart(dm._stream_counts_before(start))
        for group in sampler:
            item = streams.next(group)
            streams.mark = sampler.position
            yield int(layout.offsets[group]) + (streams.consumed[group] - 1) % int(layout.sizes[group]), item
