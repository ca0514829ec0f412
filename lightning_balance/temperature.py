r"""
Temperature sampling and scalarization
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

The two ways of balancing groups of very different sizes (Li et al., NAACL 2025, arXiv 2410.04579):

* **upsampling** draws group ``i`` with probability :math:`p_i(T) \propto n_i^{1/T}`;
* **upweighting** (scalarization) samples naturally and scales the loss of group ``i`` by
  :math:`w_i = p_i(T) / p_i(1)`.

Both have the same expected gradient; :func:`scalarization_variance_factor` gives how much larger the
mini-batch gradient variance of upweighting is (Theorem 2 of the paper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

CountsLike = Union[Sequence[int], Sequence[float], np.ndarray, torch.Tensor]

__all__ = ["temperature_probs", "scalarization_weights", "scalarization_variance_factor", "unimax_probs"]


def _validate_temperature(temperature: float, name: str = "temperature") -> float:
    """Return ``temperature`` as a float, or raise a ``ValueError`` that says how to fix it."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise TypeError(
            f"Expected argument `{name}` to be a positive float (or float('inf')), but got {temperature!r} of type"
            f" {type(temperature).__name__}."
        )
    value = float(temperature)
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"Expected argument `{name}` to be > 0 (1 = natural sampling, float('inf') = uniform over groups),"
            f" but got {value!r}."
        )
    return value


def _validate_counts(counts: CountsLike, name: str = "counts") -> torch.Tensor:
    """Return ``counts`` as a 1-D float64 tensor of non-negative, finite values with at least one positive."""
    try:
        tensor = torch.as_tensor(np.asarray(counts) if not isinstance(counts, torch.Tensor) else counts)
    except (TypeError, ValueError) as err:
        raise TypeError(f"Expected argument `{name}` to be a 1-D sequence of group sizes, but got {counts!r}.") from err
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"Expected argument `{name}` to hold real numbers, but got dtype {tensor.dtype}.")
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty 1-D sequence with one size per group, but got shape"
            f" {tuple(tensor.shape)}."
        )
    tensor = tensor.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"Expected argument `{name}` to be finite, but got {tensor.tolist()!r}.")
    if (tensor < 0).any():
        bad = torch.nonzero(tensor < 0).flatten().tolist()
        raise ValueError(
            f"Expected argument `{name}` to be non-negative group sizes, but groups {bad} have negative counts"
            f" {tensor[tensor < 0].tolist()}."
        )
    if not (tensor > 0).any():
        raise ValueError(
            f"Expected argument `{name}` to have at least one non-empty group, but every group is empty."
            " Check that the group ids match the dataset."
        )
    return tensor


def temperature_probs(counts: CountsLike, temperature: float) -> torch.Tensor:
    r"""Group sampling probabilities :math:`p_i(T) = n_i^{1/T} / \sum_j n_j^{1/T}`.

    Args:
        counts: size :math:`n_i` of every group. Empty groups are allowed and get probability 0.
        temperature: :math:`T > 0`. ``1`` is natural (proportional) sampling, larger values flatten the
            distribution and ``float("inf")`` is uniform over the non-empty groups.

    Returns:
        A float64 tensor of probabilities that sums to 1.

    Example:
        >>> temperature_probs([900, 90, 10], temperature=1.0)
        tensor([0.9000, 0.0900, 0.0100], dtype=torch.float64)
        >>> temperature_probs([900, 90, 10, 0], temperature=float("inf"))
        tensor([0.3333, 0.3333, 0.3333, 0.0000], dtype=torch.float64)
    """
    n = _validate_counts(counts)
    t = _validate_temperature(temperature)
    nonempty = n > 0
    # Work in log space: n_i ** (1/T) overflows for large n at small T, and the softmax is exact there.
    logits = torch.full_like(n, -math.inf)
    # Shifting by the largest log-size keeps a tiny T from turning log(n) / T into inf - inf.
    log_n = torch.log(n[nonempty])
    logits[nonempty] = (log_n - log_n.max()) / t
    return torch.softmax(logits, dim=0)


def scalarization_weights(counts: CountsLike, temperature: float) -> torch.Tensor:
    r"""Per-group loss weights :math:`w_i = p_i(T) / p_i(1)` that make natural sampling match temperature ``T``.

    Under natural sampling, the expected weight of a sample is :math:`\sum_i p_i(1) w_i = 1`, so the weighted
    *mean* loss of a batch is an unbiased estimate of the loss under temperature sampling.
    Empty groups get weight 0: they are never drawn.

    Example:
        >>> w = scalarization_weights([900, 90, 10], temperature=float("inf"))
        >>> w
        tensor([ 0.3704,  3.7037, 33.3333], dtype=torch.float64)
        >>> float((temperature_probs([900, 90, 10], 1.0) * w).sum())  # mean weight under natural sampling
        1.0
    """
    natural = temperature_probs(counts, 1.0)
    target = temperature_probs(counts, temperature)
    weights = torch.zeros_like(natural)
    nonempty = natural > 0
    weights[nonempty] = target[nonempty] / natural[nonempty]
    return weights


def scalarization_variance_factor(counts: CountsLike, temperature: float) -> float:
    r""":math:`F(T) = \sum_i p_i(T)^2 / p_i(1)`, the variance penalty of upweighting over upsampling.

    Theorem 2 of Li et al. (2025): when every group has the same per-sample gradient second moment
    :math:`m`, the single-sample gradient second moment is :math:`m` under temperature sampling and
    :math:`F(T)\,m` under scalarization. :math:`F(T) \ge 1` by Cauchy–Schwarz, with equality at ``T = 1``.

    Example:
        >>> round(scalarization_variance_factor([900, 90, 10], 1.0), 6)
        1.0
        >>> round(scalarization_variance_factor([900, 90, 10], float("inf")), 3)
        12.469
    """
    natural = temperature_probs(counts, 1.0)
    target = temperature_probs(counts, temperature)
    nonempty = natural > 0
    return float((target[nonempty] ** 2 / natural[nonempty]).sum())


def unimax_probs(counts: CountsLike, budget: float, max_epochs: float = 1.0) -> torch.Tensor:
    r"""UniMax group probabilities (Chung et al., ICLR 2023): a budget spread uniformly, capped per group.

    Groups are visited from the smallest: each gets an equal share of the budget still unassigned, but no more than
    ``max_epochs`` passes over its own data; what a capped group leaves is shared by the larger ones. When every
    group is capped (the budget exceeds ``max_epochs`` passes over everything), the caps are scaled up together,
    so each group still gets the same number of epochs.

    Args:
        counts: size :math:`n_i` of every group.
        budget: samples the whole run draws.
        max_epochs: the cap :math:`N`, in passes over a group's data.

    Returns:
        float64 probabilities summing to 1.

    Example:
        >>> unimax_probs([900, 90, 10], budget=300, max_epochs=1.0)  # the two small groups capped at one pass
        tensor([0.6667, 0.3000, 0.0333], dtype=torch.float64)
        >>> unimax_probs([900, 90, 10], budget=300, max_epochs=100.0)  # no cap binds: uniform
        tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64)
    """
    n = _validate_counts(counts)
    try:
        budget_value = float(budget)
        cap = float(max_epochs)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Expected `budget` and `max_epochs` to be numbers, but got {budget!r}, {max_epochs!r}."
        ) from err
    if not math.isfinite(budget_value) or budget_value <= 0:
        raise ValueError(f"Expected argument `budget` to be a positive number of samples, but got {budget!r}.")
    if not math.isfinite(cap) or cap <= 0:
        raise ValueError(f"Expected argument `max_epochs` to be a positive number of passes, but got {max_epochs!r}.")
    alloc = torch.zeros_like(n)
    nonempty = torch.nonzero(n > 0).flatten()
    order = nonempty[torch.argsort(n[nonempty], stable=True)]
    remaining = budget_value
    for i, g in enumerate(order.tolist()):
        share = remaining / (len(order) - i)
        alloc[g] = min(share, cap * float(n[g]))
        remaining -= float(alloc[g])
    return alloc / alloc.sum()
