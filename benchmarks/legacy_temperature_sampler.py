r"""
Temperature sampler of lightning-balance 0.1 (epoch plans)
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

The 0.1 epoch-plan ``TemperatureSampler``, kept verbatim (``lightning_balance/sampler.py`` at commit 9b50e0b) so
that ``benchmarks/mixture_benchmark.py`` can compare it with the stateless :class:`~lightning_balance.Mixture`
that replaced it. It is not part of the package and is not maintained; only this paragraph is new. It plans a
whole epoch as an index tensor, and a resume at epoch ``e`` redraws the group totals of every earlier epoch.

A distributed, resumable two-stage sampler: draw a group with :math:`p_i \propto n_i^{1/T}`, then an example
of that group. It replaces ``WeightedRandomSampler`` (no more than :math:`2^{24}` items, one float per item,
single process) and Lightning's ``DistributedSamplerWrapper`` (materialises and re-shuffles the inner list on
every rank).

How an epoch is planned
-----------------------
1. The epoch is cut into *segments* of constant temperature: the schedule is evaluated once per optimizer
   step (``step_size`` global samples), so a temperature change lands exactly on a step boundary.
2. In each segment, the number of draws of every group is one multinomial draw; arranging those draws in a
   uniformly random order (step 4) makes the group sequence exactly i.i.d. temperature sampling.
3. Inside a group, draws walk through a chain of fresh permutations of the group, continued across epochs.
   An example is therefore never drawn a second time before every example of its group has been drawn once:
   an upsampled tail group cycles through all its examples, and a head group that is drawn less than its
   size is still covered evenly over epochs.
4. Each segment is shuffled, and rank ``r`` of ``R`` takes ``global[r::R]``.

Everything is keyed on ``(seed, epoch)`` only, so the global sequence is the same whatever the number of
replicas, and memory stays at a few integers per example (no float weight per example).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from lightning_balance.schedules import TemperatureLike, is_schedule, resolve_temperature
from lightning_balance.temperature import temperature_probs

__all__ = ["TemperatureSampler", "GroupIndex"]

GroupsLike = Union[Sequence[int], np.ndarray, torch.Tensor]

# Tags that keep the random streams of the different planning stages independent.
_COUNTS, _PASSES, _SHUFFLE = 0, 1, 2
# Permutations of small groups are made in blocks of about this many elements, so a tail group drawn a
# million times costs a few hundred vectorised calls instead of one call per pass, while a group drawn a
# few times does not pay for a large block.
_PASS_BLOCK = 1 << 12
# Group ids are counted and sorted in chunks of this many: np.bincount and np.argsort make int64 arrays of
# their input's length, 8 bytes per example if run over all of it at once.
_COUNT_CHUNK = 1 << 22
# The schedule is evaluated on at most about this many blocks of steps per epoch (plus a bisection where the
# temperature changes), which bounds the number of segments and so the planning cost of smooth schedules.
_MAX_SCHEDULE_BLOCKS = 1 << 10
# Indices are handed to the DataLoader in chunks: ``tolist()`` on a whole 10^8 epoch would need GBs.
_YIELD_CHUNK = 1 << 16


def _seed(*keys: int) -> int:
    """A 63-bit seed mixed from ``keys``, so nearby keys give unrelated streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _torch_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*keys))


def _index_dtype(n: int) -> torch.dtype:
    # int32 halves the memory of every O(N) buffer; it is exact below 2^31 items.
    return torch.int32 if n < 2**31 else torch.int64


def _as_group_array(groups: GroupsLike) -> np.ndarray:
    """``groups`` as a 1-D numpy integer array, or a clear error."""
    if isinstance(groups, torch.Tensor):
        array = groups.detach().cpu().numpy()
    else:
        array = np.asarray(groups)
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


class TemperatureSampler(DistributedSampler):
    r"""Temperature sampling over groups, deterministic, distributed and resumable.

    Group ``i`` is drawn with probability :math:`p_i \propto n_i^{1/T}`
    (:func:`~lightning_balance.temperature_probs`), then an example inside it from a chain of fresh permutations
    of the group. The global sequence of an epoch depends only on ``seed`` and the epoch; rank ``r`` of
    ``num_replicas`` yields ``global[r::num_replicas]``.

    It subclasses :class:`~torch.utils.data.DistributedSampler` only so that Lightning recognises it as
    distributed and neither wraps nor re-shuffles it.

    Args:
        groups: integer group id of every dataset index (list, ndarray or tensor), or a prebuilt
            :class:`GroupIndex` to share one between samplers.
        temperature: a temperature :math:`T > 0` (``float("inf")`` is uniform over groups) or a schedule
            ``schedule(progress) -> temperature`` such as :class:`~lightning_balance.Cooldown`.
        num_samples: global number of samples per epoch, over all replicas. Defaults to ``len(groups)``.
        num_replicas: number of processes; defaults to the process group's size, or 1 without one.
        rank: this process's rank; defaults to the process group's rank, or 0 without one.
        seed: the seed of every epoch's plan; must be the same on every rank.
        drop_last: like ``DistributedSampler``: when ``num_samples`` is not a multiple of ``num_replicas``,
            ``False`` pads the epoch with its first samples so every rank yields the same count, ``True`` trims
            the tail of the epoch instead.
        total_samples: global samples over the whole run. Needed only with a schedule: the progress at a sample
            is the fraction of ``total_samples`` drawn before it.
        step_size: global samples per optimizer step. The schedule is evaluated once per step, so no step mixes
            two temperatures. Defaults to 1.

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
        total_samples: Optional[int] = None,
        step_size: int = 1,
        num_groups: Optional[int] = None,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and an initialised process group.
        self.index = groups if isinstance(groups, GroupIndex) else GroupIndex(groups, num_groups)
        if not is_schedule(temperature):
            resolve_temperature(temperature, 0.0)  # validates now rather than at the first epoch
        self.temperature = temperature
        self.num_samples = len(self.index) if num_samples is None else _positive_int(num_samples, "num_samples")
        self.num_replicas, self.rank = _resolve_world(num_replicas, rank)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"Expected argument `seed` to be a non-negative integer, but got {seed!r}.")
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.shuffle = True
        self.total_samples = None if total_samples is None else _positive_int(total_samples, "total_samples")
        self.step_size = _positive_int(step_size, "step_size")
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None  # (epoch, global samples already consumed)
        self._position: Optional[int] = None  # global stream position of the next iterator, if set
        self._streaming = False  # whether the current iterator was started by `set_position`
        self._start = 0
        self._done = 0
        self._live: Optional[tuple[int, Iterator[int]]] = None
        self._epoch_counts_cache: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ public API
    @property
    def group_counts(self) -> torch.Tensor:
        """Number of dataset examples in every group."""
        return self.index.counts

    @property
    def num_groups(self) -> int:
        return self.index.num_groups

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iterator yields (Lightning calls it before every epoch)."""
        self.epoch = int(epoch)
        # Nothing of the new epoch has been handed out yet: a state dict taken now must say so.
        self._start, self._done, self._live, self._streaming = 0, 0, None, False

    def __len__(self) -> int:
        """Samples this rank yields in a full epoch (a resumed epoch yields only what remains of it)."""
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def set_position(self, position: int) -> None:
        """Start the next iterator at global sample ``position`` of the whole run's stream.

        The stream is every epoch's plan back to back; ``position`` counts the global samples already trained
        on since the start of training. The next iterator yields one epoch's worth of samples from there,
        crossing into the next epoch's plan when it has to, and ignores :meth:`set_epoch`. This is how
        :class:`~lightning_balance.BalancedDataModule` keeps the stream exact whatever the Trainer's epochs do:
        a mid-epoch resume, ``limit_train_batches``, or the extra batch Lightning trains when it resumes from a
        checkpoint saved at the end of an epoch.
        """
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or position < 0:
            raise ValueError(f"Expected argument `position` to be a non-negative integer, but got {position!r}.")
        self._position = int(position)

    def __iter__(self) -> Iterator[int]:
        if self._position is not None:
            epoch, start = divmod(self._position, self.num_samples)
            self._position = None
            self._resume = None
            self._streaming = True
            self.epoch = epoch
            local = self._window(epoch, start)[self.rank :: self.num_replicas]
        else:
            self._streaming = False
            plan = self.epoch_plan(self.epoch)
            start = 0
            if self._resume is not None:
                resume_epoch, consumed = self._resume
                self._resume = None
                if resume_epoch == self.epoch:
                    start = consumed
            local = self._rank_slice(plan, start)
            del plan
        self._start = start
        self._done = 0
        for chunk in local.split(_YIELD_CHUNK):
            items = chunk.tolist()
            self._live = (len(items), iter(items))
            # `yield from` a list iterator hands out the indices at C speed; the position inside the chunk is
            # read back from the iterator's length hint when a state dict is asked for.
            yield from self._live[1]
            self._done += len(items)
        self._live = None

    @property
    def _yielded(self) -> int:
        """Indices this rank's current iterator has handed out."""
        if self._live is None:
            return self._done
        size, iterator = self._live
        return self._done + size - operator.length_hint(iterator)

    def state_dict(self) -> dict[str, Any]:
        """Plain-value state for a checkpoint.

        ``consumed`` counts the global samples of the current epoch handed out so far. With DataLoader workers
        the loader prefetches, so this over-counts what the model has seen; :class:`BalancedDataModule`
        replaces it with the exact count from the Trainer's progress.
        """
        epoch, consumed = self.epoch, self._start + self._yielded * self.num_replicas
        if self._streaming:
            # A streaming iterator may have crossed into the next epoch's plan.
            epoch, consumed = divmod(epoch * self.num_samples + consumed, self.num_samples)
        return {
            "epoch": epoch,
            "consumed": consumed,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "num_examples": len(self.index),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch's index stream: the next iterator skips the consumed samples."""
        for key, mine in (("seed", self.seed), ("num_samples", self.num_samples), ("num_examples", len(self.index))):
            saved = state.get(key, mine)
            if saved != mine:
                raise ValueError(
                    f"Cannot resume the sampler: the checkpoint has {key}={saved} but this sampler has {key}={mine}."
                    f" Build the sampler with the same {key} to continue the same index stream."
                )
        self.epoch = int(state.get("epoch", 0))
        consumed = int(state.get("consumed", 0))
        self._resume = (self.epoch, consumed) if consumed > 0 else None

    def probs(self, progress: float = 0.0) -> torch.Tensor:
        """Group probabilities in force at ``progress`` (fraction of training done)."""
        return temperature_probs(self.index.counts, resolve_temperature(self.temperature, progress))

    def epoch_plan(self, epoch: int) -> torch.Tensor:
        """The global index sequence of ``epoch`` (``num_samples`` dataset indices), the same on every rank."""
        segments = self._segments(epoch)
        counts = self._segment_counts(epoch, segments)
        # Later epochs continue each group's walk from this epoch's totals: keep them rather than redraw them.
        self._epoch_counts_cache.setdefault(epoch, counts.sum(0))
        cursor = sum((self._epoch_group_counts(e) for e in range(epoch)), torch.zeros_like(self.index.counts))
        streams = [self._group_stream(g, int(cursor[g]), int(counts[:, g].sum())) for g in range(self.num_groups)]
        # Lay every segment out group by group, then shuffle it in place; the streams are freed before the
        # shuffle so that at most three int buffers of the epoch's size are alive at once.
        plan = torch.empty(self.num_samples, dtype=self.index.order.dtype)
        taken = [0] * self.num_groups
        position = 0
        for s in range(len(segments)):
            for g in torch.nonzero(counts[s]).flatten().tolist():
                c = int(counts[s, g])
                plan[position : position + c] = streams[g][taken[g] : taken[g] + c]
                taken[g] += c
                position += c
        del streams
        start = 0
        for s, (length, _) in enumerate(segments):
            generator = _torch_generator(self.seed, epoch, s, _SHUFFLE)
            shuffle = torch.randperm(length, generator=generator, dtype=_index_dtype(length))
            # index_select is several times faster than advanced indexing for int32 indices.
            plan[start : start + length] = torch.index_select(plan[start : start + length], 0, shuffle)
            start += length
        return plan

    # ------------------------------------------------------------------ planning stages
    def _progress_steps(self) -> Optional[int]:
        if not is_schedule(self.temperature):
            return None
        if self.total_samples is None:
            raise ValueError(
                "`temperature` is a schedule, so the sampler needs the length of training: pass"
                " `total_samples=` (global samples over the whole run) to `TemperatureSampler`, or use"
                " `BalancedDataModule`, which sets it from the Trainer's `max_steps` or `max_epochs`."
            )
        return max(1, math.ceil(self.total_samples / self.step_size))

    def _segments(self, epoch: int) -> list[tuple[int, float]]:
        """``(length, temperature)`` runs of constant temperature covering the epoch, in order.

        With more steps in the epoch than ``_MAX_SCHEDULE_BLOCKS``, the schedule is read once per block of steps,
        and where two blocks differ a bisection finds the steps where the value changes. A step schedule such as
        Cooldown therefore still switches on its exact step (up to two changes per block are placed exactly); a
        smooth ramp is held constant over stretches of at most a block.
        """
        total_steps = self._progress_steps()
        if total_steps is None:
            return [(self.num_samples, resolve_temperature(self.temperature, 0.0))]
        first = epoch * self.num_samples
        last = first + self.num_samples  # exclusive, in global samples since the start of training
        step_lo, step_hi = first // self.step_size, (last - 1) // self.step_size + 1

        def at(step: int) -> float:
            return resolve_temperature(self.temperature, step / total_steps)

        stride = max(1, math.ceil((step_hi - step_lo) / _MAX_SCHEDULE_BLOCKS))
        # Probe every block start and the epoch's last step. Between two probes that differ, bisect for the first
        # step that leaves the old value and for the first step that holds the new one: one or two changes per
        # block land on their exact steps, and a smooth schedule costs at most three segments per block.
        probes = list(range(step_lo, step_hi, stride))
        if probes[-1] != step_hi - 1:
            probes.append(step_hi - 1)
        changes = [(step_lo, at(step_lo))]
        previous = step_lo
        for probe in probes[1:]:
            target = at(probe)
            old = changes[-1][1]
            if old != target:
                left = _first_step(at, max(previous, changes[-1][0]), probe, functools.partial(operator.ne, old))
                changes.append((left, at(left)))
                if changes[-1][1] != target:
                    changes.append((_first_step(at, left, probe, functools.partial(operator.eq, target)), target))
            previous = probe
        segments: list[tuple[int, float]] = []
        bounds = [max(step * self.step_size, first) for step, _ in changes] + [last]
        for (_, t), lo_sample, hi_sample in zip(changes, bounds[:-1], bounds[1:], strict=True):
            if segments and segments[-1][1] == t:
                segments[-1] = (segments[-1][0] + hi_sample - lo_sample, t)
            elif hi_sample > lo_sample:
                segments.append((hi_sample - lo_sample, t))
        return segments

    def _segment_counts(self, epoch: int, segments: list[tuple[int, float]]) -> torch.Tensor:
        """Draws of every group in every segment: ``[num_segments, num_groups]``, one multinomial each."""
        rng = np.random.Generator(np.random.PCG64(_seed(self.seed, epoch, _COUNTS)))
        probs_cache: dict[float, np.ndarray] = {}
        rows = []
        for length, t in segments:
            if t not in probs_cache:
                probs_cache[t] = temperature_probs(self.index.counts, t).numpy()
            rows.append(rng.multinomial(length, probs_cache[t]))
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def _epoch_group_counts(self, epoch: int) -> torch.Tensor:
        """Draws of every group over the whole ``epoch`` (cached: later epochs continue each group's walk)."""
        if epoch not in self._epoch_counts_cache:
            self._epoch_counts_cache[epoch] = self._segment_counts(epoch, self._segments(epoch)).sum(0)
        return self._epoch_counts_cache[epoch]

    def _pass_block(self, group: int, block: int, size: int, passes: int) -> torch.Tensor:
        """``passes`` consecutive permutations of ``range(size)`` for ``group``, flattened."""
        gen = _torch_generator(self.seed, group, block, _PASSES)
        if passes == 1:
            return torch.randperm(size, generator=gen, dtype=_index_dtype(size))
        keys = torch.rand(passes, size, generator=gen)
        return keys.argsort(dim=1).to(_index_dtype(size)).flatten()

    def _group_stream(self, group: int, start: int, count: int) -> torch.Tensor:
        """Dataset indices at positions ``[start, start + count)`` of ``group``'s chain of permutations."""
        size = int(self.index.counts[group])
        if count == 0 or size == 0:
            return self.index.order[:0]
        passes = max(1, _PASS_BLOCK // size)
        block_len = passes * size
        pieces = []
        position, end = start, start + count
        while position < end:
            block = position // block_len
            base = block * block_len
            local = self._pass_block(group, block, size, passes)
            pieces.append(local[position - base : min(end - base, block_len)])
            position = base + min(end - base, block_len)
        local_positions = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        return torch.index_select(self.index.members(group), 0, local_positions)

    def _window(self, epoch: int, start: int) -> torch.Tensor:
        """One epoch's worth of the global stream (``len(self)`` per rank) from ``start`` of ``epoch``'s plan."""
        needed = len(self) * self.num_replicas
        pieces = [self.epoch_plan(epoch)[start:]]
        available = len(pieces[0])
        while available < needed:
            epoch += 1
            pieces.append(self.epoch_plan(epoch))
            available += len(pieces[-1])
        return torch.cat(pieces)[:needed] if len(pieces) > 1 else pieces[0][:needed]

    def _rank_slice(self, plan: torch.Tensor, start: int) -> torch.Tensor:
        """This rank's share of ``plan[start:]``, padded or trimmed to the same length on every rank."""
        remaining = plan[start:]
        replicas = self.num_replicas
        if self.drop_last:
            remaining = remaining[: len(remaining) - len(remaining) % replicas]
        elif len(remaining) % replicas:
            pad = replicas - len(remaining) % replicas
            # As DistributedSampler: pad with the epoch's first samples, repeated if the epoch is tiny.
            repeats = math.ceil(pad / len(plan))
            remaining = torch.cat([remaining, plan.repeat(repeats)[:pad]])
        return remaining[self.rank :: replicas]


def _first_step(at: Callable[[int], float], lo: int, hi: int, reached: Callable[[float], bool]) -> int:
    """The first step in ``(lo, hi]`` whose value is ``reached``, by bisection; ``at(hi)`` must be reached.

    Exact when ``reached`` holds from some step on, as it does for a schedule that changes once in the range.
    """
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reached(at(mid)):
            hi = mid
        else:
            lo = mid
    return hi


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value!r}.")
    return int(value)


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
