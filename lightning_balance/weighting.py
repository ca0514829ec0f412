r"""
Loss weighting
^^^^^^^^^^^^^^

Upweighting reaches the loss through one reduction: the model computes a per-sample loss
(``reduction="none"``) and the weighted reduction here turns it into the training loss. With weights all 1
it is the plain mean, so the same ``training_step`` serves every strategy.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Normalization", "weighted_mean"]

Normalization = Literal["batch", "weights"]
_NORMALIZATIONS = ("batch", "weights")


def weighted_mean(
    per_sample_loss: torch.Tensor, weights: torch.Tensor, normalize: Normalization = "batch"
) -> torch.Tensor:
    r"""Reduce a per-sample loss with per-sample weights.

    Args:
        per_sample_loss: ``[B]`` losses, e.g. ``F.cross_entropy(logits, y, reduction="none")``.
        weights: ``[B]`` finite, non-negative weights, e.g. the scalarization weight of each sample's group.
        normalize: ``"batch"`` divides :math:`\sum_j w_j \ell_j` by the batch size ``B``. Under natural sampling
            the expected weight is 1, so this is an unbiased estimate of the temperature-sampled loss (the form
            analysed by Li et al., 2025). ``"weights"`` divides by :math:`\sum_j w_j` instead: biased, but the
            loss scale no longer swings with how many tail samples a batch happens to hold.

    Raises:
        ValueError: if ``normalize`` is unknown, or a weight is negative, NaN or infinite (checked at once for
            weights on the CPU; for CUDA weights the check runs on the device and stops the run at its next
            synchronisation, see the comment in the code).
        RuntimeError: if the loss is not ``[B]`` or the weights do not match it.

    Example:
        >>> losses = torch.tensor([1.0, 1.0, 4.0])
        >>> weights = torch.tensor([0.5, 0.5, 1.0])
        >>> weighted_mean(losses, weights)
        tensor(1.6667)
        >>> weighted_mean(losses, weights, normalize="weights")
        tensor(2.5000)
        >>> weighted_mean(losses, torch.ones(3))
        tensor(2.)
        >>> weighted_mean(losses, torch.tensor([1.0, -1.0, 1.0]))
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `weights` to be finite and non-negative, but 1 of 3 weights are not ...
    """
    if normalize not in _NORMALIZATIONS:
        raise ValueError(f"Expected argument `normalize` to be one of {_NORMALIZATIONS}, but got {normalize!r}.")
    if per_sample_loss.ndim != 1:
        raise RuntimeError(
            f"Expected a per-sample loss of shape [B], but got shape {tuple(per_sample_loss.shape)}."
            " Compute the loss with `reduction='none'` (and flatten any extra dimensions) before weighting it."
        )
    if weights.shape != per_sample_loss.shape:
        raise RuntimeError(
            f"Expected one weight per sample: the loss has shape {tuple(per_sample_loss.shape)} but the weights"
            f" have shape {tuple(weights.shape)}. Pass the group ids of the same batch the loss was computed on."
        )
    _check_weights(weights)
    weights = weights.to(device=per_sample_loss.device, dtype=per_sample_loss.dtype)
    total = (per_sample_loss * weights).sum()
    if normalize == "batch":
        return total / max(per_sample_loss.numel(), 1)
    return total / weights.sum().clamp_min(torch.finfo(per_sample_loss.dtype).tiny)


def _check_weights(weights: torch.Tensor) -> None:
    """Refuse negative, NaN and infinite weights without stalling a CUDA step.

    A negative weight turns the loss into something to maximise and a NaN one poisons every parameter, so both
    must stop the run. The check runs on the weights' own device, before they move to the loss's. CPU weights
    are checked eagerly with a clear ``ValueError``, which costs no device synchronisation. Reading a CUDA
    tensor's verdict on the host would synchronise every training step, so CUDA weights are checked on the
    device with ``torch._assert_async`` instead: a bad weight stops the run at the next synchronisation with a
    device-side assertion (which leaves the CUDA context unusable, acceptable for a run that must stop anyway)
    rather than silently training on a wrong loss. Other devices are checked eagerly.
    """
    # Integer and bool weights cannot be NaN or infinite; only their sign needs a look.
    bad = (~torch.isfinite(weights) | (weights < 0)) if weights.is_floating_point() else weights < 0
    if weights.device.type == "cuda":
        torch._assert_async(
            ~bad.any(), "Expected argument `weights` of weighted_mean to be finite and non-negative, but some are not."
        )
        return
    if bool(bad.any()):
        negative = int((weights < 0).sum())
        raise ValueError(
            f"Expected argument `weights` to be finite and non-negative, but {int(bad.sum())} of {weights.numel()}"
            f" weights are not ({negative} negative, {int(bad.sum()) - negative} NaN or infinite; first:"
            f" {weights[bad][:5].tolist()}). Build them from finite, non-negative group weights, e.g."
            " `scalarization_weights(...)`."
        )
