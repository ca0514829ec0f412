r"""
Batch selection
^^^^^^^^^^^^^^^

The pure functions behind :class:`~lightning_balance.callbacks.SALN`: how many samples of a batch to keep,
which ones given a score, and the scores of the baselines it is compared with.

* **spectral** (SALN): :func:`~lightning_balance.functional.spectral_scores` of the batch's features.
* **random**: uniform scores, so the kept part is a uniform random subset.
* **loss**: the learner's per-sample loss, the ``k`` highest kept: a deterministic top-k. It ranks by the same
  loss as Selective Backprop (Jiang et al., 2019) but is not Selective Backprop, which keeps each sample with a
  probability given by the percentile of its loss among recent losses.
* **rho_loss** (RHO-LOSS, Mindermann et al., 2022): :func:`reducible_loss_scores`, learner loss minus a reference
  model's loss, the ``k`` highest kept: samples the learner has not learned yet but that are learnable. (JEST
  scores the same difference but samples whole sub-batches jointly; a per-sample top-k is RHO-LOSS selection.)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Optional, Union

import torch

__all__ = ["KeepLike", "keep_count", "learnability_scores", "reducible_loss_scores", "resolve_keep", "select_top_k"]

KeepLike = Union[float, Callable[[float], float]]


def _is_real(value: object) -> bool:
    # numbers.Real covers numpy scalars (np.float32, np.int64); bool (and np.bool_, which is not Real) is a bug.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate_fraction(value: object, name: str = "keep") -> float:
    if not _is_real(value) or math.isnan(value) or not 0.0 < value <= 1.0:  # type: ignore[arg-type]
        raise ValueError(
            f"Expected argument `{name}` to be the fraction of each batch to train on, in (0, 1], but got {value!r}."
            " Use keep=1.0 to train on every sample, or a schedule `keep(progress) -> fraction`."
        )
    return float(value)


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
