r"""
Samplers over a mixture
^^^^^^^^^^^^^^^^^^^^^^^

:class:`MixtureSampler` hands a :class:`~lightning_balance.Mixture`'s global stream to one process of a
distributed run: rank ``r`` of ``R`` yields the dataset indices at global positions ``p + r, p + r + R, ...`` from
its position ``p``. The position is all its state, so a resume, on any number of processes or with any batch, is
one integer and costs nothing, and the sampler holds nothing of the size of the data.

:class:`TemperatureSampler` is the same sampler for a dataset whose examples carry arbitrary group ids: a
:class:`GroupIndex` (one integer per example) sorts the indices by group, and the mixture runs over the group
sizes. Both replace ``WeightedRandomSampler`` (no more than :math:`2^{24}` items, one float per item, single
process) and Lightning's ``DistributedSamplerWrapper`` (materialises and re-shuffles the inner list on every rank).
They subclass ``DistributedSampler`` only so that Lightning neither wraps nor re-shuffles them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler

from lightning_balance.mixture import Mixture, Order, _non_negative_int, _positive_int
from lightning_balance.schedules import TemperatureLike

__all__ = ["MixtureSampler", "TemperatureSampler", "GroupIndex"]

GroupsLike = Union[Sequence[int], np.ndarray, torch.Tensor]

# Group ids are counted and sorted in chunks of this many: np.bincount and np.argsort make int64 arrays of
# their input's length, 8 bytes per example if run over all of it at once.
_COUNT_CHUNK = 1 << 22
# Global positions are turned into indices this many at a time: bounded memory, and vectorised work.
_YIELD_CHUNK = 1 << 16
_FIRST_CHUNK = 1 << 8


def _as_group_array(groups: GroupsLike) -> np.ndarray:
    """``groups`` as a 1-D numpy integer array, or a clear error."""
    if isinstance(groups, torch.Tensor):
        array = groups.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(groups)
        except ValueError as err:
            raise ValueError(
                "Expected argument `groups` to be a flat sequence with one integer group id per dataset index, but"
                f" it is ragged: {err}"
            ) from err
    if array.ndim != 1:
        raise ValueError(
            f"Expected argument `groups` to be 1-D (one group id per dataset index), but got shape {array.shape}."
        )
    if array.size == 0:
        raise ValueError("Expected argument `groups` to hold one group id per dataset index, but it is empty.")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"Expected argument `groups` to hold integer group ids, but got dtype {array.dtype}."
            " Map group names or float labels to integers first, e.g. `np.unique(labels, return_inverse=True)[1]`."
        )
    low = int(array.min())
    if low < 0:
        raise ValueError(f"Expected argument `groups` to hold group ids >= 0, but found {low}.")
    return array


class GroupIndex:
    """Dataset indices sorted by group: ``order[offsets[i]:offsets[i + 1]]`` are the indices of group ``i``.

    It costs one integer per example (int32 below :math:`2^{31}` examples).

    Example:
        >>> index = GroupIndex([1, 0, 1, 2, 1])
        >>> index.counts.tolist()
        [1, 3, 1]
        >>> index.members(1).tolist()
        [0, 2, 4]
    """

    def __init__(self, groups: GroupsLike, num_groups: Optional[int] = None) -> None:
        array = _as_group_array(groups)
        high = int(array.max())
        if high >= max(4 * len(array), 1 << 20):
            raise ValueError(
                f"`groups` holds ids up to {high} for {len(array)} examples; ids index a table of group sizes, so"
                " they must be small consecutive integers. Remap them first, e.g."
                " `groups = np.unique(groups, return_inverse=True)[1]`."
            )
        if num_groups is not None and (
            isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups <= 0
        ):
            raise ValueError(f"Expected argument `num_groups` to be a positive integer, but got {num_groups!r}.")
        if num_groups is None:
            num_groups = high + 1
        elif high >= num_groups:
            raise ValueError(f"`groups` holds id {high}, but `num_groups` is {num_groups}; ids must be < num_groups.")
        counts = np.zeros(num_groups, dtype=np.int64)
        for start in range(0, len(array), _COUNT_CHUNK):
            counts += np.bincount(array[start : start + _COUNT_CHUNK], minlength=num_groups)
        offsets = np.zeros(num_groups + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(counts)
        # A counting sort, one chunk at a time: numpy's argsort returns int64 indices, so sorting all N ids at once
        # would hold 8 bytes per example on top of the 4-byte result.
        order = np.empty(len(array), dtype=np.int32 if len(array) < 2**31 else np.int64)
        fill = offsets[:-1].copy()
        for start in range(0, len(array), _COUNT_CHUNK):
            chunk = array[start : start + _COUNT_CHUNK]
            # A 16-bit key makes numpy's stable sort a radix sort: O(n) instead of O(n log n).
            key = chunk.astype(np.uint16, copy=False) if num_groups <= 1 << 16 else chunk
            local = np.argsort(key, kind="stable")
            chunk_counts = np.bincount(chunk, minlength=num_groups)
            bounds = np.concatenate([[0], np.cumsum(chunk_counts)])
            for g in np.flatnonzero(chunk_counts):
                block = local[bounds[g] : bounds[g + 1]]
                order[fill[g] : fill[g] + len(block)] = block + start
                fill[g] += len(block)
        self.order = torch.from_numpy(order)
        self.counts = torch.from_numpy(counts)
        self.offsets = torch.from_numpy(offsets)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_groups(self) -> int:
        return len(self.counts)

    def members(self, group: int) -> torch.Tensor:
        return self.order[int(self.offsets[group]) : int(self.offsets[group + 1])]


class MixtureSampler(DistributedSampler):
    r"""This process's share of a :class:`~lightning_balance.Mixture`'s stream, from a global position.

    Each iteration yields ``num_samples / num_replicas`` indices (rounded up, or down with ``drop_last``) and moves
    the position past the global samples it covered, so consecutive iterations continue one stream.

    Args:
        mixture: the global stream.
        num_samples: global samples per iteration (an "epoch"), over all replicas; defaults to the mixture's
            total size.
        num_replicas: number of processes; defaults to the process group's size, or 1 without one.
        rank: this process's rank; defaults to the process group's rank, or 0 without one.
        drop_last: when ``num_samples`` is not a multiple of ``num_replicas``, ``False`` gives every rank one more
            sample from the continuing stream, ``True`` one fewer.

    Example:
        >>> mix = Mixture([90, 10], temperature=float("inf"), seed=0)
        >>> both = [list(MixtureSampler(mix, num_samples=8, num_replicas=2, rank=r)) for r in range(2)]
        >>> [i for pair in zip(*both) for i in pair] == mix.indices(0, 8).tolist()
        True
        >>> sampler = MixtureSampler(mix, num_samples=8)
        >>> sampler.set_position(10**9)  # seeking is free
        >>> list(sampler) == mix.indices(10**9, 10**9 + 8).tolist()
        True
    """

    def __init__(
        self,
        mixture: Mixture,
        *,
        num_samples: Optional[int] = None,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        drop_last: bool = False,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and an initialised process group.
        if not isinstance(mixture, Mixture):
            raise TypeError(f"Expected argument `mixture` to be a lightning_balance.Mixture, but got {mixture!r}.")
        self._version = 0
        self.mixture = mixture
        self.num_samples = mixture.total if num_samples is None else _positive_int(num_samples, "num_samples")
        self.num_replicas, self.rank = _resolve_world(num_replicas, rank)
        self.drop_last = bool(drop_last)
        self.shuffle = True
        self.seed = mixture.seed
        self.epoch = 0
        self._position: Optional[int] = None  # set by set_position / load_state_dict for the next iterator
        self._epoch_set = False  # set_epoch called since the last iterator started
        self._start = 0  # global position where the live (or last) iterator started
        self._yielded = 0  # indices the live (or last) iterator has handed out on this rank

    # ------------------------------------------------------------------ public API
    @property
    def mixture(self) -> Mixture:
        """The stream. Replacing it (a resume, an adaptive change) takes effect at the next sample handed out."""
        return self._mixture

    @mixture.setter
    def mixture(self, mixture: Mixture) -> None:
        self._mixture = mixture
        self._version += 1

    @property
    def per_iteration(self) -> int:
        """Global positions one iteration covers: ``len(self) * num_replicas``."""
        return len(self) * self.num_replicas

    def __len__(self) -> int:
        """Samples this rank yields per iteration."""
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iterator at epoch ``epoch``: position ``epoch * per_iteration`` (Lightning calls it).

        A position given by :meth:`set_position` or a loaded state takes precedence for the next iterator. Without
        either, an iterator continues where the previous one stopped.
        """
        self.epoch = int(epoch)
        self._epoch_set = True

    def set_position(self, position: int) -> None:
        """Start the next iterator at global sample ``position`` of the stream."""
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or position < 0:
            raise ValueError(f"Expected argument `position` to be a non-negative integer, but got {position!r}.")
        self._position = int(position)

    @property
    def position(self) -> int:
        """The global position the stream continues from: where the next iterator starts, or how far the live one
        has come (its next sample on this rank).
        """
        if self._position is not None:
            return self._position
        if self._epoch_set:
            return self.epoch * self.per_iteration
        return self._start + self._yielded * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        start = self.position
        self._position, self._epoch_set = None, False
        self._start, self._yielded = start, 0
        self._chunk_base = 0
        total = len(self)
        while self._yielded < total:
            # This rank's k-th sample is global position start + k * R + rank; compute a chunk of them at a time.
            version = self._version
            first = self._yielded
            # Chunks grow from one batch's worth: the first index comes quickly (a resume's first batch), later ones
            # in large vectorised chunks.
            last = min(first + min(_YIELD_CHUNK, max(_FIRST_CHUNK, 2 * (first - self._chunk_base))), total)
            lo = start + first * self.num_replicas
            items = self._indices(lo, start + last * self.num_replicas)[self.rank :: self.num_replicas].tolist()
            for item in items:
                if self._version != version:
                    # The stream was replaced from a later position on: recompute what is left of this chunk.
                    break
                self._yielded += 1
                yield item
            if self._version != version:
                # Start small again after a change of stream.
                self._chunk_base = self._yielded

    def _indices(self, start: int, stop: int) -> torch.Tensor:
        return self.mixture.indices(start, stop)

    def state_dict(self) -> dict[str, Any]:
        """Plain values: the global position and what identifies the stream.

        With DataLoader workers the loader prefetches, so ``position`` runs ahead of what the model has trained
        on; :class:`~lightning_balance.BalancedDataModule` saves the exact position from the Trainer's progress.
        """
        return {"position": self.position, "mixture": self.mixture.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved stream: the next iterator starts at the saved position."""
        self._position = _check_resume(state, self.mixture)


def _check_resume(state: dict[str, Any], mixture: Mixture) -> int:
    """The position saved in ``state``, after checking it belongs to the same stream as ``mixture``."""
    saved = state.get("mixture")
    if saved is None:
        if "epoch" in state and "consumed" in state:
            # A checkpoint of the epoch-plan sampler of lightning-balance 0.1.
            position = int(state["epoch"]) * int(state.get("num_samples", 0)) + int(state["consumed"])
            position = int(state.get("position", position))
            rank_zero_warn(
                "Resuming from a sampler checkpoint of lightning-balance 0.1: the position in the stream"
                f" ({position} samples) is kept, but the samples drawn after it differ from the ones the old sampler"
                " would have drawn. Restart from scratch to reproduce a run exactly."
            )
            return position
        raise ValueError(f"Cannot resume the sampler: the state {sorted(state)} holds no `mixture` description.")
    mine = mixture.config()
    for key in ("num_groups", "total", "sizes_digest", "seed", "order"):
        if key in saved and saved[key] != mine[key]:
            raise ValueError(
                f"Cannot resume the sampler: the checkpoint has {key}={saved[key]!r} but this mixture has"
                f" {key}={mine[key]!r}. Build it with the same group sizes, seed and order to continue the stream,"
                " or start a new run."
            )
    changed = [
        key for key in ("segments_digest", "step_size", "total_steps", "epoch_length", "probs")
        if key in saved and key in mine and saved[key] != mine[key]
    ]
    if changed:
        rank_zero_warn(
            "Resuming a mixture whose temperature schedule changed ("
            + ", ".join(f"{key}: {saved[key]!r} -> {mine[key]!r}" for key in changed)
            + "): the position is kept and the new schedule applies from there."
        )
    return _non_negative_int(state.get("position", 0), "position")


class TemperatureSampler(MixtureSampler):
    r"""Temperature sampling over examples that carry arbitrary group ids; deterministic, distributed, resumable.

    Group ``i`` is drawn with probability :math:`p_i \propto n_i^{1/T}`
    (:func:`~lightning_balance.temperature_probs`), then an example of it from a fresh permutation of the group
    per pass (see :class:`~lightning_balance.Mixture`). Memory is one integer per example, in the
    :class:`GroupIndex`.

    Args:
        groups: integer group id of every dataset index (list, ndarray or tensor), or a prebuilt
            :class:`GroupIndex` to share one between samplers.
        temperature: ``T > 0`` (``float("inf")`` is uniform over groups) or a schedule
            ``schedule(progress) -> T`` such as :class:`~lightning_balance.Cooldown`.
        num_samples: global number of samples per epoch, over all replicas. Defaults to ``len(groups)``.
        num_replicas: number of processes; defaults to the process group's size, or 1 without one.
        rank: this process's rank; defaults to the process group's rank, or 0 without one.
        seed: the seed of the stream; must be the same on every rank.
        drop_last: see :class:`MixtureSampler`.
        step_size: global samples per optimizer step; the temperature changes only between steps.
        total_steps: optimizer steps in the run, needed with a schedule: step ``s`` has progress
            ``s / total_steps``.
        total_samples: the run's length in samples instead of ``total_steps`` (``ceil(total_samples / step_size)``
            steps).
        num_groups: the number of groups, when the last ones may have no example.
        order: the group sequence: ``"stratified"`` (default), ``"iid"`` or ``"epoch"`` (see
            :class:`~lightning_balance.Mixture`).

    Example:
        >>> sampler = TemperatureSampler([0] * 90 + [1] * 10, temperature=float("inf"), num_samples=8, seed=0)
        >>> len(sampler)
        8
        >>> indices = list(sampler)
        >>> sorted(indices) == sorted(set(indices))  # no example repeats before its group is exhausted
        True
        >>> rank1 = TemperatureSampler([0] * 90 + [1] * 10, float("inf"), num_samples=8, num_replicas=2, rank=1)
        >>> list(rank1) == indices[1::2]
        True
    """

    def __init__(
        self,
        groups: Union[GroupsLike, GroupIndex],
        temperature: TemperatureLike = 1.0,
        *,
        num_samples: Optional[int] = None,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        seed: int = 0,
        drop_last: bool = False,
        step_size: int = 1,
        total_steps: Optional[int] = None,
        total_samples: Optional[int] = None,
        num_groups: Optional[int] = None,
        order: Order = "stratified",
    ) -> None:
        self.index = groups if isinstance(groups, GroupIndex) else GroupIndex(groups, num_groups)
        step_size = _positive_int(step_size, "step_size")
        if total_steps is None and total_samples is not None:
            total_steps = math.ceil(_positive_int(total_samples, "total_samples") / step_size)
        mixture = Mixture(
            self.index.counts.numpy(), temperature, seed=seed, step_size=step_size, total_steps=total_steps,
            order=order,
        )
        self.temperature = temperature
        super().__init__(
            mixture,
            num_samples=len(self.index) if num_samples is None else num_samples,
            num_replicas=num_replicas,
            rank=rank,
            drop_last=drop_last,
        )

    @property
    def group_counts(self) -> torch.Tensor:
        """Number of dataset examples in every group."""
        return self.index.counts

    @property
    def num_groups(self) -> int:
        return self.index.num_groups

    def _indices(self, start: int, stop: int) -> torch.Tensor:
        # The mixture numbers examples group by group; the index maps those numbers to dataset indices.
        return torch.index_select(self.index.order, 0, self.mixture.indices(start, stop)).long()

    def epoch_plan(self, epoch: int) -> torch.Tensor:
        """The global index sequence of ``epoch`` (``num_samples`` dataset indices), the same on every rank."""
        start = int(epoch) * self.num_samples
        return self._indices(start, start + self.num_samples)

    def probs(self, step: int = 0) -> torch.Tensor:
        """Group probabilities realised at optimizer step ``step``."""
        return self.mixture.probs_at(step)


def _resolve_world(num_replicas: Optional[int], rank: Optional[int]) -> tuple[int, int]:
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    num_replicas = _positive_int(num_replicas, "num_replicas")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
        raise ValueError(
            f"Expected argument `rank` to be in [0, num_replicas) = [0, {num_replicas}), but got {rank!r}."
            " Pass the process's global rank, or leave it unset to read it from the process group."
        )
    return num_replicas, int(rank)
