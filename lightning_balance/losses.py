r"""
Loss-side baselines
^^^^^^^^^^^^^^^^^^^

The re-balancing a practitioner compares sampling against, as pure functions (the DataModule selects them by
``strategy=``, so a model never changes between them):

* **class-balanced loss** (Cui et al., CVPR 2019): class weights :math:`(1 - \beta) / (1 - \beta^{n_y})`,
  normalised to sum to the number of classes, :math:`\beta = 0.9999`;
* **logit adjustment** (Menon et al., ICLR 2021): train on :math:`\mathrm{CE}(z + \tau \log \pi, y)` (the loss
  form), or train plainly and predict with :math:`z - \tau \log \pi` (post hoc), :math:`\tau = 1`;
* **deferred re-weighting** (Cao et al., NeurIPS 2019): plain training, then class-balanced weights for the last
  part of training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_balance.temperature import CountsLike, _validate_counts

__all__ = ["class_balanced_weights", "logit_adjusted_cross_entropy", "posthoc_logit_adjustment", "class_priors"]


def _check_beta(beta: float) -> float:
    value = float(beta)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Expected argument `beta` to be in [0, 1), but got {beta!r}.")
    return value


def _check_tau(tau: float) -> float:
    value = float(tau)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Expected argument `tau` to be a non-negative number, but got {tau!r}.")
    return value


def class_balanced_weights(counts: CountsLike, beta: float = 0.9999) -> torch.Tensor:
    r"""Cui et al.'s weights :math:`(1-\beta)/(1-\beta^{n_c})`, normalised to sum to the number of classes.

    An empty class gets weight 0. ``beta = 0`` gives equal weights.

    Example:
        >>> class_balanced_weights([900, 90, 10], beta=0.99)
        tensor([0.2284, 0.3836, 2.3880], dtype=torch.float64)
    """
    n = _validate_counts(counts)
    b = _check_beta(beta)
    nonempty = n > 0
    raw = torch.zeros_like(n)
    # 1 - beta^n computed as -expm1(n log beta): exact for beta close to 1 and large n.
    raw[nonempty] = (1.0 - b) / -torch.expm1(n[nonempty] * math.log(b)) if b > 0 else 1.0
    return raw * int(nonempty.sum()) / raw.sum()


def class_priors(counts: CountsLike) -> torch.Tensor:
    r"""The training label distribution :math:`\pi_c = n_c / N` (float64)."""
    n = _validate_counts(counts)
    return n / n.sum()


def logit_adjusted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, priors: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    r"""Per-sample :math:`\mathrm{CE}(z + \tau \log \pi, y)`, Menon et al.'s logit-adjusted loss.

    A class with prior 0 gets :math:`-\infty` added, so it is never the target of a probability mass.

    Example:
        >>> logits = torch.zeros(2, 3)
        >>> loss = logit_adjusted_cross_entropy(logits, torch.tensor([0, 2]), torch.tensor([0.9, 0.09, 0.01]))
        >>> [round(v, 4) for v in loss.tolist()]
        [0.1054, 4.6052]
    """
    t = _check_tau(tau)
    shift = t * torch.log(priors.to(device=logits.device, dtype=torch.float64)).to(logits.dtype)
    return F.cross_entropy(logits + shift, target, reduction="none")


def posthoc_logit_adjustment(logits: torch.Tensor, priors: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    r"""Logits for prediction after plain training: :math:`z - \tau \log \pi` (Menon et al., post hoc).

    Example:
        >>> posthoc_logit_adjustment(torch.zeros(1, 2), torch.tensor([0.9, 0.1])).argmax(-1)
        tensor([1])
    """
    t = _check_tau(tau)
    return logits - t * torch.log(priors.to(device=logits.device, dtype=torch.float64)).to(logits.dtype)
