r"""
Stateless mixtures
^^^^^^^^^^^^^^^^^^

A :class:`Mixture` maps a global sample position ``k`` to a group and an example of it as a pure function of
``(seed, group sizes, schedule, k)``. Nothing of the size of the data is built or stored: the state is O(groups)
integers per schedule segment, a resume is one integer (the position), and seeking to position 10^11 costs the
same as seeking to 0.

How a position becomes an example
---------------------------------
1. **Temperature.** Position ``k`` belongs to optimizer step ``k // step_size``. The schedule is evaluated for
   every step (progress = ``step / total_steps``), and runs of equal temperature form *segments*. The draws of a
   step always use the temperature that :meth:`Mixture.temperature_at` reports for it, however short an
   excursion.
2. **Group** (``order="stratified"``, the default). The groups are the leaves of a balanced binary tree. Each
   node sends its ``t``-th visitor left when ``floor((t + 1) q + phase)`` exceeds ``floor(t q + phase)``, where
   ``q`` is the left subtree's share of the probability: a Sturmian (Beatty) sequence, in exact integer
   arithmetic with ``q`` in units of 2^-32. Every prefix of the stream is then within a few draws of its quota
   (at most the tree depth, ~log2 K) at every temperature, the counts at any position come in closed form, and
   the phase carries across segments and temperature changes. The realised probabilities, after the 2^-32
   rounding, are what :meth:`Mixture.probs_at` reports.
   ``order="iid"`` draws the group of every position independently from ``p(T)``, the setting the paper
   analyses: each block of 2^16 positions gets multinomial counts (split exactly from its superblock's by
   hypergeometric draws, so the whole sequence is i.i.d.) arranged in a keyed random order. Seeking costs one
   multinomial per 2^29 positions before the target in its segment.
   ``order="epoch"`` (temperature 1 only) is plain natural sampling as ``shuffle=True`` knows it: each epoch is a
   fresh permutation of all examples, so every example is seen exactly once per epoch.
3. **Example.** The ``d``-th draw of group ``g`` is example ``perm_{g, pass}(d mod n_g)`` with
   ``pass = d // n_g``: a keyed Feistel permutation (:mod:`~lightning_balance.permutation`) of the group per
   pass. No example repeats before its whole group has been seen, and since draws are counted over the whole
   run, a temperature change neither loses nor repeats an example.

The global sequence depends on nothing but ``(seed, sizes, schedule, step_size, total_steps, order)``: not the
number of processes, DataLoader workers or per-process batch. :class:`~lightning_balance.MixtureSampler` hands
rank ``r`` of ``R`` the positions ``r, r + R, ...`` of it.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import numpy as np
import torch

from lightning_balance.permutation import bit_width, derive_key, mix64, permute
from lightning_balance.schedules import TemperatureLike, constant_runs, is_schedule, resolve_temperature

__all__ = ["Mixture", "Order"]

Order = Literal["stratified", "iid", "epoch"]
_ORDERS = ("stratified", "iid", "epoch")
SizesLike = Union[Sequence[int], np.ndarray, torch.Tensor]

# Probabilities at a tree node are integers in units of 2^-32.
_Q_BITS = 32
_Q_ONE = 1 << _Q_BITS
# Per-position arithmetic uses node-local offsets below 2^30 inside a block, so t * q + phase < 2^63 stays exact
# in uint64; block boundaries are computed with full-width arithmetic.
_BLOCK = 1 << 30
# Positions are kept below 2^62 so that every full-width product fits in uint64.
_MAX_POSITION = 1 << 62
# Segment-start states kept at most (K * this many integers in all); the rest are recomputed from the nearest.
_STATE_BUDGET = 1 << 22
# Tags that keep the key streams of the different stages apart.
_TAG_PHASE, _TAG_PASS, _TAG_EPOCH, _TAG_IID_COUNTS, _TAG_IID_SPLIT, _TAG_IID_ORDER = 11, 12, 13, 14, 15, 16
# order="iid": a segment is cut into superblocks whose group counts are independent multinomials, split down a
# binary tree of multivariate hypergeometric draws into blocks, each arranged by a keyed permutation. Superblocks
# stay below numpy's 10^9 limit on hypergeometric populations.
_IID_SUPER = 1 << 29
_IID_BLOCK = 1 << 16


def _validate_sizes(sizes: SizesLike) -> np.ndarray:
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.detach().cpu().numpy()
    try:
        array = np.asarray(sizes)
    except (TypeError, ValueError) as err:
        raise TypeError(f"Expected argument `sizes` to be a 1-D sequence of group sizes, but got {sizes!r}.") from err
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"Expected argument `sizes` to be a non-empty 1-D sequence (one size per group), but got shape"
            f" {array.shape}."
        )
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"Expected argument `sizes` to hold integers, but got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            bad = array[~np.isfinite(array) | (array != np.round(array))][:3].tolist()
            raise ValueError(f"Expected argument `sizes` to hold whole numbers of examples, but found {bad}.")
    if (array < 0).any():
        raise ValueError(
            f"Expected argument `sizes` to be non-negative, but groups {np.flatnonzero(array < 0)[:5].tolist()} have"
            f" sizes {array[array < 0][:5].tolist()}."
        )
    array = array.astype(np.int64)
    if not (array > 0).any():
        raise ValueError("Expected argument `sizes` to have at least one non-empty group, but every group is empty.")
    if int(array.sum()) >= _MAX_POSITION:
        raise ValueError(f"Expected the total of `sizes` to be below 2^62, but got {int(array.sum())}.")
    return array


def _validate_probs(probs: Sequence[float], sizes: np.ndarray) -> np.ndarray:
    array = np.asarray(probs, dtype=np.float64)
    if array.shape != sizes.shape or not np.isfinite(array).all() or (array < 0).any() or array.sum() <= 0:
        raise ValueError(
            f"Expected argument `probs` to hold one finite, non-negative probability per group ({len(sizes)}), not all"
            f" zero, but got {list(probs)!r}."
        )
    if ((array > 0) & (sizes == 0)).any():
        raise ValueError("Expected argument `probs` to give probability 0 to empty groups, but an empty group has > 0.")
    return array / array.sum()


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"Expected argument `{name}` to be a non-negative integer, but got {value!r}.")
    return int(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value!r}.")
    return int(value)


class _Tree:
    """A complete binary tree in heap order over ``2^D >= K`` leaf slots; groups fill the first ``K`` slots.

    Node ``i`` has children ``2i + 1`` and ``2i + 2``; the leaf of slot ``j`` is node ``L - 1 + j`` with
    ``L = 2^D``. Slots past ``K`` have probability 0 and are never reached. Every leaf is at depth ``D``, so a
    descent is ``D`` identical passes over all positions, with no bookkeeping of which ones are still descending.
    """

    def __init__(self, num_groups: int) -> None:
        k = num_groups
        self.num_groups = k
        depth = max(k - 1, 0).bit_length()
        self.depth = depth
        self.leaves = 1 << depth
        internal = self.leaves - 1
        nodes = np.arange(internal, dtype=np.int64)
        level_of = np.zeros(internal, dtype=np.int64)
        for d in range(depth):
            level_of[(1 << d) - 1 : (1 << (d + 1)) - 1] = d
        width = np.left_shift(1, depth - level_of)  # slots under each node
        first = (nodes - ((1 << level_of) - 1)) * width
        self.lo = np.minimum(first, k)
        self.mid = np.minimum(first + width // 2, k)
        self.hi = np.minimum(first + width, k)
        self.left = 2 * nodes + 1
        self.right = 2 * nodes + 2
        self.levels = [np.arange((1 << d) - 1, (1 << (d + 1)) - 1, dtype=np.int64) for d in range(depth)]

    def shares(self, probs: np.ndarray) -> np.ndarray:
        """Each node's left share of its probability, as an integer in ``[0, 2^32]``."""
        cumulative = np.concatenate([[0.0], np.cumsum(probs)])
        total = cumulative[self.hi] - cumulative[self.lo]
        left = cumulative[self.mid] - cumulative[self.lo]
        right = cumulative[self.hi] - cumulative[self.mid]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, left / np.where(total > 0, total, 1.0), 0.0)
        q = np.rint(share * _Q_ONE).astype(np.int64)
        # A side with any probability keeps at least one unit, so no non-empty group is rounded away.
        q = np.where((left > 0) & (q == 0), 1, q)
        q = np.where((right > 0) & (q == _Q_ONE), _Q_ONE - 1, q)
        return q.astype(np.uint64)

    def realised(self, q: np.ndarray) -> np.ndarray:
        """Leaf probabilities implied by the node shares ``q`` (the rounding made exact)."""
        k = self.num_groups
        if k == 1:
            return np.ones(1)
        mass = np.zeros(2 * self.leaves - 1)
        mass[0] = 1.0
        share = q.astype(np.float64) / _Q_ONE
        for level in self.levels:
            mass[self.left[level]] = mass[level] * share[level]
            mass[self.right[level]] = mass[level] * (1.0 - share[level])
        return mass[self.leaves - 1 : self.leaves - 1 + k]


def _split_full(t: np.ndarray, q: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``divmod(t * q + phase, 2^32)`` exactly for ``t < 2^62``, ``q <= 2^32``, ``phase < 2^32`` (uint64)."""
    t = t.astype(np.uint64)
    high, low = t >> np.uint64(31), t & np.uint64((1 << 31) - 1)
    x = high * q  # < 2^63
    y = low * q + phase + ((x & np.uint64(1)) << np.uint64(31))  # < 2^64
    return (x >> np.uint64(1)) + (y >> np.uint64(_Q_BITS)), y & np.uint64(_Q_ONE - 1)


class _Segment:
    """One run of constant temperature: its probabilities and the tree's node shares."""

    def __init__(self, probs: np.ndarray, q: np.ndarray, tree: _Tree) -> None:
        self.probs, self.q, self._tree = probs, q, tree
        self._realised: Optional[np.ndarray] = None

    @property
    def realised(self) -> np.ndarray:
        # Only reports need it: a walk over many segments (a seek into a smooth schedule) does not.
        if self._realised is None:
            self._realised = self._tree.realised(self.q)
        return self._realised


class Mixture:
    r"""A pure function from global sample position to (group, example), for any number of groups and examples.

    Args:
        sizes: examples per group. Group ``g`` owns the dataset indices ``[offset_g, offset_g + n_g)`` with
            ``offset_g = n_0 + ... + n_{g-1}``. Sizes may be virtual (10^12 examples cost nothing).
        temperature: ``T > 0`` (``float("inf")`` is uniform over the non-empty groups), or a schedule
            ``schedule(progress) -> T`` such as :class:`~lightning_balance.Cooldown`, evaluated at every
            optimizer step with ``progress = step / total_steps``.
        seed: the seed of the whole stream.
        step_size: global samples per optimizer step (the global batch times gradient accumulation). The
            temperature changes only between steps.
        total_steps: optimizer steps in the run; needed with a schedule (after it, the schedule holds its value at
            progress 1).
        order: ``"stratified"`` (default: lowest variance, every prefix within a few draws of its quota), ``"iid"``
            (independent draws, the paper's setting) or ``"epoch"`` (temperature 1 only: a fresh permutation of
            all examples every ``sum(sizes)`` positions, the ``shuffle=True`` of natural sampling).
        num_samples: optional finite length of the stream; positions at or past it are refused.
        history: stretches of the stream after the first, as ``(position, step, step_size)``; see :meth:`rebased`.
        probs: fixed group probabilities instead of ``p(T)`` (e.g. :func:`~lightning_balance.unimax_probs`).
        adaptations: ``(position, probs)`` changes of the mixture during training; see :meth:`with_probs`.
        epoch_length: with ``order="epoch"``, positions per epoch (default: every example once). Each epoch is a
            fresh permutation of all examples, cut short (or followed by more permutations) to this length.

    Example:
        >>> mix = Mixture([900, 90, 10], temperature=float("inf"), seed=0)
        >>> mix.counts(300).tolist()  # every prefix is within a few draws of its quota
        [100, 100, 100]
        >>> groups = mix.groups(0, 6).tolist()
        >>> sorted(groups)
        [0, 0, 1, 1, 2, 2]
        >>> idx = mix.indices(0, 30)
        >>> bool(((idx >= 990) & (idx < 1000)).sum() == 10)  # the 10 tail examples, each once
        True
        >>> len(set(idx[(idx >= 990)].tolist()))
        10
    """

    def __init__(
        self,
        sizes: SizesLike,
        temperature: TemperatureLike = 1.0,
        *,
        seed: int = 0,
        step_size: int = 1,
        total_steps: Optional[int] = None,
        order: Order = "stratified",
        num_samples: Optional[int] = None,
        history: Optional[Sequence[Sequence[int]]] = None,
        probs: Optional[Sequence[float]] = None,
        adaptations: Optional[Sequence[tuple[int, Sequence[float]]]] = None,
        epoch_length: Optional[int] = None,
    ) -> None:
        self.sizes = _validate_sizes(sizes)
        self.fixed_probs = None if probs is None else _validate_probs(probs, self.sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        # order="epoch": an epoch is `epoch_length` positions, fresh permutations of all examples (the last one cut
        # short), as `shuffle=True` with `drop_last` does when the epoch is not a multiple of the data.
        self.epoch_length = self.total if epoch_length is None else _positive_int(epoch_length, "epoch_length")
        self.seed = _non_negative_int(seed, "seed")
        self.step_size = _positive_int(step_size, "step_size")
        self.total_steps = None if total_steps is None else _positive_int(total_steps, "total_steps")
        self.num_samples = None if num_samples is None else _positive_int(num_samples, "num_samples")
        if order not in _ORDERS:
            raise ValueError(f"Expected argument `order` to be one of {_ORDERS}, but got {order!r}.")
        self.order: Order = order
        if isinstance(temperature, type):
            raise TypeError(
                f"Expected argument `temperature` to be a number or a schedule instance, but got the class"
                f" {temperature.__name__}. Instantiate it, e.g. `{temperature.__name__}()`."
            )
        self.temperature = temperature
        if is_schedule(temperature):
            if self.total_steps is None:
                raise ValueError(
                    f"A temperature schedule ({temperature!r}) needs the run's length: pass `total_steps=` (optimizer"
                    " steps), since progress is step / total_steps."
                )
            self._run_steps, self._run_temps = constant_runs(temperature, self.total_steps)
        else:
            self._run_steps, self._run_temps = np.zeros(1, dtype=np.int64), [resolve_temperature(temperature, 0.0)]
        if order == "epoch" and (len(self._run_temps) != 1 or self._run_temps[0] != 1.0):
            raise ValueError(
                f"`order='epoch'` is natural sampling (a permutation of every example per epoch) and needs temperature"
                f" 1, but got temperature={temperature!r}. Use order='stratified' for other temperatures."
            )
        self.history = self._validate_history(history)
        if adaptations and order == "epoch":
            raise ValueError("`order='epoch'` is natural sampling; adaptive probabilities need 'stratified' or 'iid'.")
        self.adaptations: list[tuple[int, tuple[float, ...]]] = []
        for entry in adaptations or []:
            position, values = entry
            position = _non_negative_int(position, "adaptations position")
            if self.adaptations and position <= self.adaptations[-1][0]:
                raise ValueError(f"Expected `adaptations` in increasing positions, but {position} follows"
                                 f" {self.adaptations[-1][0]}.")
            self.adaptations.append((position, tuple(float(v) for v in _validate_probs(values, self.sizes))))
        self._seg_starts, self._seg_temps = self._position_segments()
        self._tree = _Tree(len(self.sizes))
        self._log_sizes: Optional[np.ndarray] = None
        self._group_keys = derive_key(self.seed, _TAG_PASS, np.arange(len(self.sizes)))
        self._group_bits = bit_width(np.maximum(self.sizes, 1))
        self._segments: OrderedDict[int, _Segment] = OrderedDict()
        # States at segment starts: (group draw counts, node phases). Segment 0 starts from keyed random phases.
        internal = max(self._tree.leaves - 1, 0) if len(self.sizes) > 1 else 0
        phases = derive_key(self.seed, _TAG_PHASE, np.arange(internal)) >> np.uint64(64 - _Q_BITS)
        phases = phases.astype(np.uint64)
        self._states: dict[int, tuple[np.ndarray, np.ndarray]] = {0: (np.zeros(len(self.sizes), np.int64), phases)}
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._state_stride = max(1, math.ceil(len(self._seg_temps) * len(self.sizes) / _STATE_BUDGET))

    # ------------------------------------------------------------------ schedule
    @property
    def num_groups(self) -> int:
        return len(self.sizes)

    def temperature_at(self, step: int) -> float:
        """The temperature whose draws fill optimizer step ``step``."""
        step = _non_negative_int(step, "step")
        return self._run_temps[int(np.searchsorted(self._run_steps, step, side="right")) - 1]

    def probs_at(self, step: int) -> torch.Tensor:
        """The group probabilities realised at optimizer step ``step`` (``p(T)`` after 2^-32 rounding)."""
        if self.order == "epoch":
            return torch.from_numpy(self.sizes / self.total)
        probs = self._probs_of(self.temperature_at(step))
        if self.order == "iid":
            return torch.from_numpy(probs)
        return torch.from_numpy(self._tree.realised(self._tree.shares(probs)))

    @property
    def segments(self) -> list[tuple[int, float]]:
        """``(first optimizer step, temperature)`` of every constant-temperature run of the schedule."""
        return [(int(s), t) for s, t in zip(self._run_steps.tolist(), self._run_temps, strict=True)]

    def step_of(self, position: int) -> int:
        """The optimizer step that global sample ``position`` belongs to."""
        position = _non_negative_int(position, "position")
        starts = [p for p, _, _ in self._pieces()]
        piece = int(np.searchsorted(np.asarray(starts), position, side="right")) - 1
        start, step, size = self._pieces()[piece]
        return step + (position - start) // size

    def probs_at_position(self, position: int) -> torch.Tensor:
        """The group probabilities in force at global sample ``position`` (realised, as :meth:`probs_at`)."""
        position = self._check_position(position, "position")
        if self.order == "epoch":
            return torch.from_numpy(self.sizes / self.total)
        segment = int(np.searchsorted(self._seg_starts, position, side="right")) - 1
        found = self._segment(segment)
        return torch.from_numpy((found.probs if self.order == "iid" else found.realised).copy())

    def with_probs(self, position: int, probs: Sequence[float]) -> Mixture:
        """The same stream before ``position``; from there on, group probabilities ``probs``.

        Every draw before ``position`` is unchanged, and each group's walk through its passes continues, so the
        change loses and repeats no example.

        Example:
            >>> mix = Mixture([90, 10], temperature=1.0, seed=0)
            >>> changed = mix.with_probs(100, [0.5, 0.5])
            >>> bool((changed.indices(0, 100) == mix.indices(0, 100)).all())
            True
            >>> changed.counts(300).tolist()  # 90 + 10 natural draws, then 100 + 100
            [190, 110]
        """
        position = self._check_position(position, "position")
        kept = [(p, list(v)) for p, v in self.adaptations if p < position]
        return self._rebuild(history=self.history, adaptations=kept + [(position, list(probs))])

    def _rebuild(self, *, history: Sequence[Sequence[int]], adaptations: Sequence[Any]) -> Mixture:
        return Mixture(
            self.sizes, self.temperature, seed=self.seed, step_size=self.step_size, total_steps=self.total_steps,
            order=self.order, num_samples=self.num_samples, history=history,
            probs=None if self.fixed_probs is None else self.fixed_probs.tolist(),
            adaptations=adaptations, epoch_length=self.epoch_length if self.order == "epoch" else None,
        )

    def rebased(self, position: int, step: int, step_size: int) -> Mixture:
        """The same stream before ``position``; from there on, ``step_size`` samples per step from step ``step``.

        This is how a resume onto another global batch (another number of processes, batch size or gradient
        accumulation) keeps the schedule on its optimizer steps while the sample stream continues from its
        position.

        Example:
            >>> from lightning_balance import Cooldown
            >>> mix = Mixture([90, 10], temperature=Cooldown(5.0, 1.0, 0.5), step_size=8, total_steps=10)
            >>> later = mix.rebased(position=16, step=2, step_size=4)  # half the batch from step 2 on
            >>> later.step_of(15), later.step_of(16), later.step_of(35), later.step_of(36)
            (1, 2, 6, 7)
            >>> bool((later.indices(0, 16) == mix.indices(0, 16)).all())
            True
        """
        position = _non_negative_int(position, "position")
        step = _non_negative_int(step, "step")
        step_size = _positive_int(step_size, "step_size")
        if self.step_of(position) == step and self._pieces()[-1][2] == step_size:
            return self
        history = [list(piece) for piece in self.history if piece[0] < position] + [[position, step, step_size]]
        return self._rebuild(history=history, adaptations=[(p, list(v)) for p, v in self.adaptations])

    # ------------------------------------------------------------------ counts
    def counts(self, position: int) -> torch.Tensor:
        """Draws of every group among the positions before ``position`` (int64 ``[K]``)."""
        position = self._check_position(position, "position")
        if self.order == "epoch":
            return torch.from_numpy(self._epoch_counts(position))
        if self.order == "iid":
            segment = int(np.searchsorted(self._seg_starts, position, side="right")) - 1
            counts, _ = self._segment_state(segment)
            return torch.from_numpy(counts + self._iid_prefix(segment, position - int(self._seg_starts[segment])))
        segment, block_start = self._locate(position)
        counts, phase = self._block_state(segment, block_start)
        extra, _ = self._descend(self._segment(segment).q, phase, position - block_start)
        return torch.from_numpy(counts + extra)

    def epochs(self, position: int) -> torch.Tensor:
        """How many times each group's data has been gone through before ``position`` (float64 ``[K]``)."""
        counts = self.counts(position).double()
        sizes = torch.from_numpy(self.sizes).double()
        return torch.where(sizes > 0, counts / sizes.clamp_min(1), torch.zeros_like(counts))

    # ------------------------------------------------------------------ positions
    def groups(self, start: int, stop: int) -> torch.Tensor:
        """The group of each global position in ``[start, stop)`` (int64)."""
        return torch.from_numpy(self._draws(start, stop)[0])

    def indices(self, start: int, stop: int) -> torch.Tensor:
        """The dataset index of each global position in ``[start, stop)`` (int64)."""
        groups, draws = self._draws(start, stop)
        if self.order == "epoch":
            return torch.from_numpy(draws)
        sizes = self.sizes[groups]
        passes, within = np.divmod(draws, sizes)
        # One hash per element: the group's key (computed once per group) mixed with the pass.
        key = mix64(self._group_keys[groups] ^ passes.astype(np.uint64))
        local = permute(within, sizes, key, self._group_bits[groups]).astype(np.int64)
        return torch.from_numpy(self.offsets[groups] + local)

    def config(self) -> dict[str, Any]:
        """Plain values that identify the stream, for checkpoints: a resume must match them."""
        digest = hashlib.sha1(self.sizes.tobytes()).hexdigest()[:16]
        return {
            "num_groups": self.num_groups,
            "total": self.total,
            "sizes_digest": digest,
            "seed": self.seed,
            "order": self.order,
            "epoch_length": self.epoch_length,
            "step_size": self.step_size,
            "total_steps": self.total_steps,
            # The first runs for a reader; the digest covers all of them, so any change of schedule is seen.
            "segments": [[s, t] for s, t in self.segments][:64],
            "segments_digest": hashlib.sha1(repr(self.segments).encode()).hexdigest()[:16],
            "history": [list(piece) for piece in self.history],
            "probs": None if self.fixed_probs is None else [round(float(p), 12) for p in self.fixed_probs][:64],
            "adaptations": [[p, list(v)] for p, v in self.adaptations],
        }

    def __repr__(self) -> str:
        return (
            f"Mixture(groups={self.num_groups}, examples={self.total}, temperature={self.temperature!r},"
            f" seed={self.seed}, step_size={self.step_size}, total_steps={self.total_steps}, order={self.order!r})"
        )

    # ------------------------------------------------------------------ internals
    def _probs_of(self, temperature: Union[float, tuple[float, ...]]) -> np.ndarray:
        if isinstance(temperature, tuple):
            return np.asarray(temperature, dtype=np.float64)
        if self.fixed_probs is not None:
            return self.fixed_probs
        if self._log_sizes is None:
            # The validated sizes once, then p(T) as a numpy softmax per segment: a smooth schedule has one segment
            # per step, and a seek walks all the earlier ones.
            with np.errstate(divide="ignore"):
                log_sizes = np.log(self.sizes.astype(np.float64))
            self._log_sizes = log_sizes - log_sizes[self.sizes > 0].max()
        if math.isinf(temperature):
            probs = (self.sizes > 0).astype(np.float64)
            return probs / probs.sum()
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # A tiny T sends every group but the largest to -inf: exactly the limit.
            logits = self._log_sizes / temperature
            weights = np.exp(logits - logits.max())
        return weights / weights.sum()

    def _validate_history(self, history: Optional[Sequence[Sequence[int]]]) -> list[list[int]]:
        pieces: list[list[int]] = []
        last_position, last_step = 0, 0
        for entry in history or []:
            try:
                position, step, size = (int(v) for v in entry)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"Expected every entry of `history` to be (position, step, step_size), but got {entry!r}."
                ) from err
            if position <= last_position and pieces or position < 0 or step < last_step or size <= 0:
                raise ValueError(
                    f"Expected `history` entries with increasing positions, non-decreasing steps and positive step"
                    f" sizes, but got {entry!r} after position {last_position}, step {last_step}."
                )
            pieces.append([position, step, size])
            last_position, last_step = position, step
        return pieces

    def _pieces(self) -> list[tuple[int, int, int]]:
        """(first position, its step, samples per step) of every stretch of the stream."""
        return [(0, 0, self.step_size)] + [(p, s, z) for p, s, z in self.history]

    def _position_segments(self) -> tuple[np.ndarray, list[float]]:
        """Runs of constant temperature in positions: the step runs mapped through every stretch."""
        pieces = self._pieces()
        starts: list[int] = []
        temps: list[float] = []

        def add(position: int, temperature: float) -> None:
            if not temps or temps[-1] != temperature:
                starts.append(position)
                temps.append(temperature)

        for i, (first, step, size) in enumerate(pieces):
            end = pieces[i + 1][0] if i + 1 < len(pieces) else None
            run = int(np.searchsorted(self._run_steps, step, side="right")) - 1
            add(first, self._run_temps[run])
            for j in range(run + 1, len(self._run_steps)):
                position = first + (int(self._run_steps[j]) - step) * size
                if end is not None and position >= end:
                    break
                add(position, self._run_temps[j])
        if self.adaptations:
            # From the first change on, the policy's probabilities replace the schedule's.
            first = self.adaptations[0][0]
            keep = [i for i, start in enumerate(starts) if start < first]
            starts = [starts[i] for i in keep]
            temps = [temps[i] for i in keep]
            for position, values in self.adaptations:
                add(position, values)  # type: ignore[arg-type]
        return np.asarray(starts, dtype=np.int64), temps

    def _check_position(self, value: Any, name: str) -> int:
        value = _non_negative_int(value, name)
        limit = self.num_samples if self.num_samples is not None else _MAX_POSITION
        if value > limit:
            raise ValueError(
                f"Expected argument `{name}` to be at most the stream's length {limit}, but got {value}."
                + (" Raise `num_samples`, or leave it unset for an endless stream." if self.num_samples else "")
            )
        return value

    def _segment(self, index: int) -> _Segment:
        cached = self._segments.get(index)
        if cached is not None:
            self._segments.move_to_end(index)
            return cached
        probs = self._probs_of(self._seg_temps[index])
        q = self._tree.shares(probs)
        segment = _Segment(probs, q, self._tree)
        self._segments[index] = segment
        if len(self._segments) > 64:
            self._segments.popitem(last=False)
        return segment

    def _locate(self, position: int) -> tuple[int, int]:
        """The segment holding ``position`` and the start of its block."""
        segment = int(np.searchsorted(self._seg_starts, position, side="right")) - 1
        seg_start = int(self._seg_starts[segment])
        return segment, seg_start + (position - seg_start) // _BLOCK * _BLOCK

    def _descend(self, q: np.ndarray, phase: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Group counts among the first ``length`` positions from a state, and the node phases after them."""
        k = self.num_groups
        if k == 1:
            return np.array([length], dtype=np.int64), phase
        tree = self._tree
        visits = np.zeros(2 * tree.leaves - 1, dtype=np.uint64)
        visits[0] = length
        after = phase.copy()
        for level in tree.levels:
            left, rest = _split_full(visits[level], q[level], phase[level])
            after[level] = rest
            visits[tree.left[level]] = left
            visits[tree.right[level]] = visits[level] - left
        return visits[tree.leaves - 1 : tree.leaves - 1 + k].astype(np.int64), after

    def _segment_state(self, segment: int) -> tuple[np.ndarray, np.ndarray]:
        """(group counts, node phases) at the start of ``segment``."""
        if segment in self._states:
            return self._states[segment]
        if segment in self._recent:
            return self._recent[segment]
        # Walk from the nearest known state: a kept one, or one of the last few computed (a sequential read across
        # segments then walks one segment per segment, whatever the stride of the kept states).
        known = max(s for s in self._states if s <= segment)
        near = [s for s in self._recent if known < s <= segment]
        if near:
            known = max(near)
            counts, phase = self._recent[known]
        else:
            counts, phase = self._states[known]
        for s in range(known, segment):
            length = int(self._seg_starts[s + 1] - self._seg_starts[s])
            if self.order == "iid":
                extra = self._iid_prefix(s, length)
            else:
                extra, phase = self._descend(self._segment(s).q, phase, length)
            counts = counts + extra
            if (s + 1) % self._state_stride == 0:
                self._states[s + 1] = (counts, phase)
        self._recent[segment] = (counts, phase)
        if len(self._recent) > 8:
            self._recent.popitem(last=False)
        return counts, phase

    def _block_state(self, segment: int, block_start: int) -> tuple[np.ndarray, np.ndarray]:
        counts, phase = self._segment_state(segment)
        offset = block_start - int(self._seg_starts[segment])
        if offset == 0:
            return counts, phase
        extra, phase = self._descend(self._segment(segment).q, phase, offset)
        return counts + extra, phase

    def _epoch_counts(self, position: int) -> np.ndarray:
        length = self.epoch_length
        epoch, within = divmod(position, length)
        passes, rest = divmod(length, self.total)
        counts = self.sizes * (epoch * passes)
        if rest:
            # Every epoch ends with the first `rest` examples of one more permutation; count the smaller side of it.
            for e in range(epoch):
                counts = counts + self._pass_prefix_counts(e, passes, rest)
        if within:
            groups, _ = self._epoch_draws(epoch * length, position)
            counts = counts + np.bincount(groups, minlength=self.num_groups)
        return counts

    def _pass_prefix_counts(self, epoch: int, pass_: int, rest: int) -> np.ndarray:
        key = derive_key(self.seed, _TAG_EPOCH, epoch, pass_)
        if rest <= self.total - rest:
            index = permute(np.arange(rest), self.total, key).astype(np.int64)
            return np.bincount(np.searchsorted(self.offsets, index, side="right") - 1, minlength=self.num_groups)
        index = permute(np.arange(rest, self.total), self.total, key).astype(np.int64)
        dropped = np.bincount(np.searchsorted(self.offsets, index, side="right") - 1, minlength=self.num_groups)
        return self.sizes - dropped

    def _draws(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Group and per-group draw number (for ``order='epoch'``: dataset index) of positions ``[start, stop)``."""
        start = self._check_position(start, "start")
        stop = self._check_position(stop, "stop")
        if stop < start:
            raise ValueError(f"Expected `start <= stop`, but got start={start}, stop={stop}.")
        if self.order == "epoch":
            return self._epoch_draws(start, stop)
        if self.order == "iid":
            return self._iid_draws(start, stop)
        groups, draws = [], []
        position = start
        while position < stop:
            segment, block_start = self._locate(position)
            seg_end = int(self._seg_starts[segment + 1]) if segment + 1 < len(self._seg_starts) else _MAX_POSITION
            end = min(stop, seg_end, block_start + _BLOCK)
            g, d = self._block_draws(segment, block_start, position - block_start, end - block_start)
            groups.append(g)
            draws.append(d)
            position = end
        if not groups:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(groups), np.concatenate(draws)

    def _block_draws(self, segment: int, block_start: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        counts, phase = self._block_state(segment, block_start)
        k = self.num_groups
        t = np.arange(lo, hi, dtype=np.uint64)
        if k == 1:
            return np.zeros(len(t), np.int64), counts[0] + t.astype(np.int64)
        q = self._segment(segment).q
        tree = self._tree
        node = np.zeros(len(t), dtype=np.int64)
        one = np.uint64(_Q_ONE)
        mask = np.uint64(_Q_ONE - 1)
        shift = np.uint64(_Q_BITS)
        for _ in range(tree.depth):
            qa = q[node]
            # Offsets inside a block are < 2^30, so t * q + phase < 2^63 is exact without splitting.
            value = t * qa + phase[node]
            before = value >> shift
            goes_left = (value & mask) + qa >= one
            t = np.where(goes_left, before, t - before)
            node = 2 * node + 2 - goes_left
        groups = node - (tree.leaves - 1)
        return groups, counts[groups] + t.astype(np.int64)

    def _epoch_draws(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        positions = np.arange(start, stop, dtype=np.int64)
        epochs, within = np.divmod(positions, self.epoch_length)
        passes, within = np.divmod(within, self.total)
        index = permute(within, self.total, derive_key(self.seed, _TAG_EPOCH, epochs, passes)).astype(np.int64)
        groups = np.searchsorted(self.offsets, index, side="right") - 1
        return groups, index

    # ------------------------------------------------------------------ order="iid"
    def _iid_rng(self, *keys: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(int(derive_key(self.seed, *keys)[()])))

    def _iid_super_counts(self, segment: int, index: int, length: int) -> np.ndarray:
        """Group counts of superblock ``index`` of ``segment`` (``length`` positions): a multinomial draw."""
        probs = self._segment(segment).probs
        rng = self._iid_rng(_TAG_IID_COUNTS, int(self._seg_starts[segment]), index)
        return rng.multinomial(length, probs / probs.sum()).astype(np.int64)

    def _iid_block(self, segment: int, index: int, length: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts of ``block`` within its superblock, counts of the blocks before it), by hypergeometric splits."""
        counts = self._iid_super_counts(segment, index, length)
        before = np.zeros_like(counts)
        lo, hi = 0, -(-length // _IID_BLOCK)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            nonzero = np.flatnonzero(counts)
            rng = self._iid_rng(_TAG_IID_SPLIT, int(self._seg_starts[segment]), index, lo, hi)
            left = np.zeros_like(counts)
            draws = (mid - lo) * _IID_BLOCK
            left[nonzero] = rng.multivariate_hypergeometric(counts[nonzero], draws, method="marginals")
            if block < mid:
                counts, hi = left, mid
            else:
                before, counts, lo = before + left, counts - left, mid
        return counts, before

    def _iid_prefix(self, segment: int, offset: int) -> np.ndarray:
        """Group counts among the first ``offset`` positions of ``segment``."""
        total = np.zeros(self.num_groups, dtype=np.int64)
        index, within = divmod(offset, _IID_SUPER)
        for j in range(index):
            total += self._iid_super_counts(segment, j, _IID_SUPER)
        if within:
            block, inside = divmod(within, _IID_BLOCK)
            counts, before = self._iid_block(segment, index, _IID_SUPER, block)
            total += before
            if inside:
                groups = self._iid_block_groups(segment, index, block, counts)[:inside]
                total += np.bincount(groups, minlength=self.num_groups)
        return total

    def _iid_block_groups(self, segment: int, index: int, block: int, counts: np.ndarray) -> np.ndarray:
        """The group of every position of a block: its counts laid out in a keyed random order."""
        length = int(counts.sum())
        slots = permute(np.arange(length), length, derive_key(self.seed, _TAG_IID_ORDER,
                                                              int(self._seg_starts[segment]), index, block))
        return np.searchsorted(np.cumsum(counts), slots.astype(np.int64), side="right")

    def _iid_draws(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        groups, draws = [], []
        position = start
        while position < stop:
            segment = int(np.searchsorted(self._seg_starts, position, side="right")) - 1
            seg_start = int(self._seg_starts[segment])
            seg_len = (
                int(self._seg_starts[segment + 1]) - seg_start if segment + 1 < len(self._seg_starts) else _MAX_POSITION
            )
            offset = position - seg_start
            index, within = divmod(offset, _IID_SUPER)
            block, inside = divmod(within, _IID_BLOCK)
            block_start = seg_start + index * _IID_SUPER + block * _IID_BLOCK
            end = min(stop, block_start + _IID_BLOCK, seg_start + seg_len)
            # Superblocks are always drawn whole and a segment that ends early uses a prefix of one, so that cutting a
            # segment later (an adaptive change of the mixture) leaves every earlier draw as it was.
            counts, before = self._iid_block(segment, index, _IID_SUPER, block)
            block_groups = self._iid_block_groups(segment, index, block, counts)[: end - block_start]
            # Rank of every position among the block's earlier positions of its group: a stable sort by group.
            order = np.argsort(block_groups, kind="stable")
            first = np.searchsorted(block_groups[order], np.arange(self.num_groups))
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order)) - first[block_groups[order]]
            seg_counts, _ = self._segment_state(segment)
            earlier = seg_counts + before
            for j in range(index):
                earlier = earlier + self._iid_super_counts(segment, j, _IID_SUPER)
            g = block_groups[inside:]
            groups.append(g)
            draws.append(earlier[g] + rank[inside:])
            position = end
        if not groups:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(groups), np.concatenate(draws)
