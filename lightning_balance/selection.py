r"""
Batch selection
^^^^^^^^^^^^^^^

The pure functions behind :class:`~lightning_balance.callbacks.SALN`: how many samples of a batch to keep,
which ones given a score, and the scores of the baselines it is compared with.

* **spectral** (SALN): :func:`~lightning_balance.functional.spectral_scores` of the batch's features.
* **random**: uniform scores, so the kept part is a uniform random subset.
* **loss**: the learner's per-sample loss, the ``k`` highest kept: a deterministic top-k (not Selective
  Backprop, which draws).
* **selective_backprop** (Jiang et al., 2019, as Composer's ``select_using_loss`` does it):
  :func:`selective_backprop_select`, ``k`` samples drawn without replacement with probability proportional to
  the percentile of their loss in the batch raised to ``beta``.
* **rho_loss** (RHO-LOSS, Mindermann et al., 2022): :func:`reducible_loss_scores`, learner loss minus a reference
  model's loss, the ``k`` highest kept: samples the learner has not learned yet but that are learnable.
* **jest** (Evans et al., 2024): the same learnability score, but the ``k`` samples are drawn in ``n_chunks``
  chunks, each from a softmax over the scores conditioned on the samples already drawn
  (:func:`jest_select`). JEST's conditioning has pairwise terms because its loss is contrastive (a sample's
  loss depends on the rest of the sub-batch); with a per-sample loss the conditional is the softmax over the
  samples not yet drawn, which is what :func:`jest_select` samples.

Every draw takes a ``torch.Generator``, so a caller that seeds it from ``(seed, step)`` gets the same selection at
the same step of every run, a resumed one included; nothing here reads a tensor's value on the host, so none of
it waits for a GPU.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Optional, Union

import torch

__all__ = [
    "KeepLike",
    "filter_ratio_count",
    "jest_select",
    "keep_count",
    "learnability_scores",
    "reducible_loss_scores",
    "resolve_keep",
    "select_top_k",
    "selective_backprop_select",
    "super_batch_size",
]

KeepLike = Union[float, Callable[[float], float]]


def _is_real(value: object) -> bool:
    # numbers.Real covers numpy scalars (np.float32, np.int64); bool (and np.bool_, which is not Real) is a bug.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate_fraction(value: object, name: str = "keep") -> float:
    if not _is_real(value) or math.isnan(value) or not 0.0 < value <= 1.0:  # type: ignore[arg-type, operator]
        raise ValueError(
            f"Expected argument `{name}` to be the fraction of each batch to train on, in (0, 1], but got {value!r}."
            " Use keep=1.0 to train on every sample, or a schedule `keep(progress) -> fraction`."
        )
    return float(value)  # type: ignore[arg-type]


def resolve_keep(keep: KeepLike, progress: float) -> float:
    """The kept fraction in force at ``progress`` (fraction of training done), validated.

    Example:
        >>> resolve_keep(0.25, 0.9)
        0.25
        >>> from lightning_balance.schedules import LinearRamp
        >>> resolve_keep(LinearRamp(start=1.0, end=0.5), 0.5)  # a temperature schedule works as a keep schedule
        0.75
        >>> resolve_keep(lambda p: 2.0, 0.1)
        Traceback (most recent call last):
        ...
        ValueError: The keep schedule <lambda> returned 2.0 at progress 0.1; a keep schedule must return ...
    """
    if not callable(keep):
        return _validate_fraction(keep)
    progress = min(max(float(progress), 0.0), 1.0)
    value = keep(progress)
    try:
        return _validate_fraction(value)
    except ValueError:
        name = getattr(keep, "__name__", type(keep).__name__)
        raise ValueError(
            f"The keep schedule {name} returned {value!r} at progress {progress}; a keep schedule must return a"
            " fraction in (0, 1]."
        ) from None


def keep_count(keep: float, batch_size: int) -> int:
    r"""Samples kept out of ``batch_size``: :math:`\lceil keep \cdot B \rceil`, at least 1.

    It depends only on its two arguments, so ranks with the same batch size keep the same number of samples
    and no rank waits for another at the gradient all-reduce. Under DDP ``batch_size`` is the batch of one rank.

    Raises:
        ValueError: if ``keep`` is not in ``(0, 1]`` or ``batch_size`` is not a positive integer.

    Example:
        >>> keep_count(0.5, 64), keep_count(0.1, 30), keep_count(0.01, 10), keep_count(1.0, 7)
        (32, 3, 1, 7)
        >>> keep_count(0.5, 0)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `batch_size` to be a positive integer (the samples in the batch), but got 0. ...
    """
    keep = _validate_fraction(keep)
    if not _is_integer(batch_size) or batch_size < 1:
        raise ValueError(
            f"Expected argument `batch_size` to be a positive integer (the samples in the batch), but got"
            f" {batch_size!r}. Pass `len(batch)` of a non-empty batch, e.g. `int(indices.shape[0])`."
        )
    batch_size = int(batch_size)
    # The small tolerance keeps products such as 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
    return min(batch_size, max(1, math.ceil(keep * batch_size - 1e-9)))


def select_top_k(
    scores: torch.Tensor,
    k: int,
    *,
    protected: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Positions of the ``k`` highest scores along the last dimension, in increasing order.

    Args:
        scores: ``[..., B]`` scores; higher is kept first. NaN scores rank last, below ``-inf``: a sample whose
            score could not be computed is never preferred over one whose score could.
        k: how many to keep, ``0 <= k <= B``.
        protected: optional ``[..., B]`` boolean mask of samples kept before any other (for example the samples
            of rare groups). When more than ``k`` are protected, the ``k`` best-scored of them are kept, so exactly
            ``k`` positions come back in every case.
        generator: breaks ties between equal scores at random; without it, ties go to the earlier position.
            It must live on the scores' device.

    Returns:
        ``[..., k]`` int64 positions, sorted, on the scores' device.

    Example:
        >>> select_top_k(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2)
        tensor([1, 3])
        >>> select_top_k(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2, protected=torch.tensor([True, False, False, False]))
        tensor([0, 1])
        >>> select_top_k(torch.tensor([float("nan"), 0.2, -1.0]), 2)
        tensor([1, 2])
    """
    b = scores.shape[-1]
    if not _is_integer(k) or not 0 <= k <= b:
        raise ValueError(f"Expected argument `k` to be an integer in [0, {b}] (the batch size), but got {k!r}.")
    k = int(k)
    if protected is not None and protected.shape != scores.shape:
        raise RuntimeError(
            f"Expected argument `protected` to have the shape of `scores` {tuple(scores.shape)}, but got"
            f" {tuple(protected.shape)}."
        )
    if generator is not None:
        # A random order first, then a stable sort: equal scores end up in random order.
        shuffle = torch.rand(scores.shape, generator=generator, device=scores.device).argsort(dim=-1)
    else:
        shuffle = torch.arange(b, device=scores.device).expand(scores.shape)
    order = shuffle.gather(-1, scores.gather(-1, shuffle).argsort(dim=-1, descending=True, stable=True))
    if scores.is_floating_point():
        # torch sorts NaN above +inf, so a descending sort would keep NaN scores first; a stable sort on the NaN
        # flag moves them behind every number and keeps the order of the rest.
        last = scores.gather(-1, order).isnan().to(torch.int8).argsort(dim=-1, stable=True)
        order = order.gather(-1, last)
    if protected is not None:
        first = protected.gather(-1, order).to(torch.int8).argsort(dim=-1, descending=True, stable=True)
        order = order.gather(-1, first)
    return order[..., :k].sort(dim=-1).values


def reducible_loss_scores(learner_loss: torch.Tensor, reference_loss: torch.Tensor) -> torch.Tensor:
    """RHO-LOSS's reducible loss: learner loss minus reference-model loss, per sample.

    A high score is a sample the learner still gets wrong but a model trained on good data gets right; noisy
    or ambiguous samples, which both get wrong, score low. Keeping the top-k of it is RHO-LOSS selection
    (Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and Not Yet Learnt",
    ICML 2022).

    Example:
        >>> reducible_loss_scores(torch.tensor([2.0, 2.0, 0.1]), torch.tensor([0.1, 2.0, 0.1]))
        tensor([1.9000, 0.0000, 0.0000])
    """
    if learner_loss.shape != reference_loss.shape:
        raise RuntimeError(
            f"Expected the learner and reference per-sample losses to have the same shape, but got"
            f" {tuple(learner_loss.shape)} and {tuple(reference_loss.shape)}."
        )
    return learner_loss - reference_loss.to(learner_loss)


def learnability_scores(learner_loss: torch.Tensor, reference_loss: torch.Tensor) -> torch.Tensor:
    """Deprecated name of :func:`reducible_loss_scores`; a per-sample top-k of it is RHO-LOSS, not JEST."""
    warnings.warn(
        "`learnability_scores` is deprecated: the per-sample learner-minus-reference loss is RHO-LOSS's reducible"
        " loss. Use `reducible_loss_scores`.",
        DeprecationWarning,
        stacklevel=2,
    )
    return reducible_loss_scores(learner_loss, reference_loss)


# ------------------------------------------------------------------------------------------------ drawn selections


def filter_ratio_count(filter_ratio: float, super_batch_size: int) -> int:
    r"""Samples trained on out of a super-batch of ``B`` at filter ratio ``f``: :math:`\lceil (1 - f) B \rceil`.

    JEST's filter ratio is :math:`f = 1 - b / B`: the fraction of the super-batch that is *not* trained on.

    Raises:
        ValueError: if ``filter_ratio`` is not in ``[0, 1)`` or ``super_batch_size`` is not a positive integer.

    Example:
        >>> filter_ratio_count(0.5, 128), filter_ratio_count(0.8, 320), filter_ratio_count(0.0, 16)
        (64, 64, 16)
        >>> filter_ratio_count(1.0, 16)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `filter_ratio` to be in [0, 1) (the fraction of the super-batch left out), ...
    """
    _validate_filter_ratio(filter_ratio)
    return keep_count(1.0 - float(filter_ratio), super_batch_size)


def super_batch_size(batch_size: int, filter_ratio: float) -> int:
    r"""The largest super-batch ``B`` from which filter ratio ``f`` keeps ``batch_size`` samples:
    :math:`\lfloor b / (1 - f) \rfloor`, so that ``filter_ratio_count(f, B) == b``.

    Example:
        >>> super_batch_size(64, 0.5), super_batch_size(64, 0.8), super_batch_size(50, 0.7)
        (128, 320, 166)
        >>> filter_ratio_count(0.7, 166)
        50
    """
    f = _validate_filter_ratio(filter_ratio)
    keep_count(1.0, batch_size)  # validates batch_size
    return int(math.floor(batch_size / (1.0 - f) + 1e-9))


def _validate_filter_ratio(value: object) -> float:
    if not _is_real(value) or math.isnan(value) or not 0.0 <= value < 1.0:  # type: ignore[arg-type, operator]
        raise ValueError(
            "Expected argument `filter_ratio` to be in [0, 1) (the fraction of the super-batch left out), but got"
            f" {value!r}. JEST uses 0.5 to 0.9; 0 trains on the whole super-batch."
        )
    return float(value)  # type: ignore[arg-type]


def _validate_chunks(n_chunks: object, k: int) -> int:
    if not _is_integer(n_chunks) or n_chunks < 1 or (k >= 1 and n_chunks > k):  # type: ignore[operator]
        raise ValueError(
            f"Expected argument `n_chunks` to be an integer in [1, {max(k, 1)}] (at most one chunk per kept sample),"
            f" but got {n_chunks!r}. JEST draws about 16 chunks; use `n_chunks=min(16, k)`."
        )
    return int(n_chunks)  # type: ignore[call-overload]


def _validate_draw(scores: torch.Tensor, k: object, protected: Optional[torch.Tensor]) -> int:
    b = scores.shape[-1]
    if not _is_integer(k) or not 0 <= k <= b:  # type: ignore[operator]
        raise ValueError(f"Expected argument `k` to be an integer in [0, {b}] (the batch size), but got {k!r}.")
    if protected is not None and protected.shape != scores.shape:
        raise RuntimeError(
            f"Expected argument `protected` to have the shape of `scores` {tuple(scores.shape)}, but got"
            f" {tuple(protected.shape)}."
        )
    return int(k)  # type: ignore[call-overload]


def _gumbel(shape: torch.Size, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    # u in (0, 1]: -log(-log(u)) is finite except at u = 1, where it is +inf; 1 - rand is in (0, 1].
    u = 1.0 - torch.rand(shape, generator=generator, device=like.device, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp(max=1.0 - 2.0**-53)))


def _draw_logits(logits: torch.Tensor, protected: Optional[torch.Tensor]) -> torch.Tensor:
    """Finite float64 logits: NaN and -inf rank last, +inf first, and protected samples above all others.

    The protected offset exceeds the spread of the finite logits plus any Gumbel noise (at most 37 in float64), so
    a protected sample is always drawn before an unprotected one, and among the protected the draw is unchanged.
    """
    big = torch.finfo(torch.float64).max / 8
    x = logits.to(torch.float64)
    x = torch.nan_to_num(x, nan=-big, posinf=big, neginf=-big).clamp(-big, big)
    if protected is not None:
        finite = x.abs() < big
        spread = torch.where(finite, x, 0.0).amax(-1, keepdim=True) - torch.where(finite, x, 0.0).amin(-1, keepdim=True)
        x = torch.where(protected, x + spread + 100.0, x)
    return x


def jest_select(
    scores: torch.Tensor,
    k: int,
    *,
    n_chunks: int = 16,
    generator: Optional[torch.Generator] = None,
    protected: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """JEST's chunked sampling (Evans et al., "Data curation via joint example selection", 2024) of ``k`` samples.

    The ``k`` samples are drawn in ``n_chunks`` chunks of ``k // n_chunks`` or one more. Chunk ``i`` is a draw
    without replacement from the softmax of ``scores`` over the samples that no earlier chunk drew, made with the
    Gumbel top-k trick (adding Gumbel noise to the logits and keeping the largest is a draw without replacement from
    their softmax). With JEST's contrastive loss the scores of the remaining samples would be recomputed given the
    chunks drawn so far; a per-sample score does not change, so the conditional is the softmax over the rest.

    Args:
        scores: ``[..., B]`` learnability scores (learner loss minus reference loss), used as logits. NaN and
            ``-inf`` are drawn last.
        k: samples to keep, ``0 <= k <= B`` (``B - k`` of the super-batch are filtered out).
        n_chunks: chunks, in ``[1, k]``; JEST uses 16.
        generator: the random source, on the scores' device.
        protected: optional ``[..., B]`` mask of samples drawn before any other (then the rest, as above).

    Returns:
        ``[..., k]`` sorted int64 positions, on the scores' device.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> jest_select(torch.tensor([5.0, -5.0, 4.0, -5.0, 6.0, -5.0]), 3, n_chunks=3, generator=gen)
        tensor([0, 2, 4])
    """
    k = _validate_draw(scores, k, protected)
    n_chunks = _validate_chunks(n_chunks, k)
    if k == 0:
        return torch.zeros((*scores.shape[:-1], 0), dtype=torch.long, device=scores.device)
    logits = _draw_logits(scores, protected)
    taken = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    sizes = [k // n_chunks + (i < k % n_chunks) for i in range(n_chunks)]
    chunks = []
    for size in sizes:
        # Fresh noise per chunk: the draw of a chunk is independent of the noise that decided the earlier ones.
        keys = (logits + _gumbel(scores.shape, scores, generator)).masked_fill(taken, -torch.inf)
        pick = keys.topk(size, dim=-1).indices
        taken.scatter_(-1, pick, True)
        chunks.append(pick)
    return torch.cat(chunks, dim=-1).sort(dim=-1).values


def selective_backprop_select(
    losses: torch.Tensor,
    k: int,
    *,
    beta: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    protected: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Selective Backprop's draw (Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest Losers",
    2019), the way Composer's ``select_using_loss`` makes it.

    Rank the ``B`` losses of the batch; the sample of rank ``r`` (0 = lowest) has percentile
    :math:`(r + 1/2) / B`, and ``k`` samples are drawn without replacement with probability proportional to
    :math:`\mathrm{percentile}^eta` (sequentially: each draw renormalises over the samples not drawn yet, as
    ``numpy.random.choice(replace=False, p=...)`` does). Composer's default :math:`eta = 1/keep - 1` with
    :math:`keep = k / B` is used when ``beta`` is None. The paper's percentile is taken over a history of recent
    losses and keeps a variable number of samples; Composer, and this function, rank within the batch and keep
    exactly ``k``, so every rank trains on the same number under DDP.

    Args:
        losses: ``[..., B]`` per-sample losses. Equal losses are ranked by position; NaN ranks lowest.
        k: samples to keep, ``0 <= k <= B``.
        beta: the exponent, ``>= 0`` (0 is a uniform draw); default ``B / k - 1``.
        generator: the random source, on the losses' device.
        protected: optional ``[..., B]`` mask of samples drawn before any other.

    Returns:
        ``[..., k]`` sorted int64 positions, on the losses' device.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> selective_backprop_select(torch.tensor([0.1, 3.0, 0.2, 2.5]), 2, beta=20.0, generator=gen)
        tensor([1, 3])
    """
    k = _validate_draw(losses, k, protected)
    b = losses.shape[-1]
    if k == 0:
        return torch.zeros((*losses.shape[:-1], 0), dtype=torch.long, device=losses.device)
    if beta is None:
        beta = b / k - 1.0
    if not _is_real(beta) or math.isnan(beta) or not 0.0 <= beta < math.inf:
        raise ValueError(
            f"Expected argument `beta` to be a finite number >= 0 (the exponent of the loss percentile), but got"
            f" {beta!r}. Composer uses 1 / keep - 1."
        )
    # NaN losses rank lowest: map them below every number before the stable sort.
    ordered = torch.nan_to_num(losses.to(torch.float64), nan=-torch.inf)
    rank = ordered.argsort(dim=-1, stable=True).argsort(dim=-1)
    percentile = (rank.to(torch.float64) + 0.5) / b
    logits = float(beta) * torch.log(percentile)
    keys = _draw_logits(logits, protected) + _gumbel(losses.shape, losses, generator)
    return keys.topk(k, dim=-1).indices.sort(dim=-1).values
