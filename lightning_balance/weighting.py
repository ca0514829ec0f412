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
        weights: ``[B]`` non-negative weights, e.g. the scalarization weight of each sample's group.
        normalize: ``"batch"`` divides :math:`\sum_j w_j \ell_j` by the batch size ``B``. Under natural sampling
            the expected weight is 1, so this is an unbiased estimate of the temperature-sampled loss (the form
            analysed by Li et al., 2025). ``"weights"`` divides by :math:`\sum_j w_j` instead: biased, but the
            loss scale no longer swings with how many tail samples a batch happens to hold.

    Example:
        >>> losses = torch.tensor([1.0, 1.0, 4.0])
        >>> weights = torch.tensor([0.5, 0.5, 1.0])
        >>> weighted_mean(losses, weights)
        tensor(1.6667)
        >>> weighted_mean(losses, weights, normalize="weights")
        tensor(2.5000)
        >>> weighted_mean(losses, torch.ones(3))
        tensor(2.)
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
    weights = weights.to(device=per_sample_loss.device, dtype=per_sample_loss.dtype)
    total = (per_sample_loss * weights).sum()
    if normalize == "batch":
        return total / max(per_sample_loss.numel(), 1)
    return total / weights.sum().clamp_min(torch.finfo(per_sample_loss.dtype).tiny)
