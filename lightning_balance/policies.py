r"""
Mixing policies
^^^^^^^^^^^^^^^

A policy maps per-group training signals to new group sampling probabilities and/or loss weights. It is a plain
object, testable without a Trainer: :class:`~lightning_balance.AdaptiveMixing` gathers the signals (reduced
across processes, so every rank decides the same), calls the policy, and applies its decision through the mixture
core.

* :class:`GroupDRO` (Sagawa et al., ICLR 2020): exponentiated-gradient weights on the groups' training losses,
  applied as loss weights.
* :class:`OnlineMixing` (Albalak et al., 2023): EXP3 over the groups' sampling probabilities, the training loss
  as reward, with a decaying exploration rate.
* :class:`OverfitGuard`: upsample as configured, but when a group's smoothed validation loss has risen for
  ``patience`` evaluations while its training loss kept falling, sample that group naturally from then on and
  give its loss the weight that keeps the objective. The paper's failure of upsampling (the tail overfits before
  the head has converged) is per group and happens at a time no fixed Cooldown knows in advance.

Every policy keeps its state as plain values (``state_dict``/``load_state_dict``), so a resume continues it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch

__all__ = ["GroupSignals", "MixingDecision", "MixingPolicy", "GroupDRO", "OnlineMixing", "OverfitGuard"]


@dataclass
class GroupSignals:
    """What a policy sees at an update. Every tensor is float64 ``[K]`` on the CPU.

    Attributes:
        step: the optimizer step.
        train_loss: mean training loss per group since the last update (NaN for a group with no sample).
        train_count: training samples per group since the last update.
        val_loss: mean validation loss per group at the last validation (NaN where unknown), or ``None``.
        draws: draws of every group so far.
        epochs: passes over every group's data so far.
        probs: the sampling probabilities in force.
        natural: the natural probabilities ``n_i / N``.
        loss_weights: the policy loss weights in force (ones if none).
    """

    step: int
    train_loss: torch.Tensor
    train_count: torch.Tensor
    val_loss: Optional[torch.Tensor]
    draws: torch.Tensor
    epochs: torch.Tensor
    probs: torch.Tensor
    natural: torch.Tensor
    loss_weights: torch.Tensor

    def __post_init__(self) -> None:
        # Policies compute in float64 on the CPU whatever they are handed.
        for name in ("train_loss", "train_count", "val_loss", "draws", "epochs", "probs", "natural", "loss_weights"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, torch.as_tensor(value).detach().to("cpu", torch.float64))


@dataclass
class MixingDecision:
    """A policy's answer: new sampling probabilities and/or loss weights (``None`` keeps the current ones)."""

    probs: Optional[torch.Tensor] = None
    loss_weights: Optional[torch.Tensor] = None


class MixingPolicy(Protocol):
    """What :class:`~lightning_balance.AdaptiveMixing` calls."""

    def __call__(self, signals: GroupSignals) -> MixingDecision: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"Expected argument `{name}` to be a positive number, but got {value!r}.")
    return number


def _observed(loss: torch.Tensor) -> torch.Tensor:
    """Losses with unobserved groups (NaN) as 0, so they neither gain nor lose weight."""
    return torch.nan_to_num(loss, nan=0.0)


class GroupDRO:
    r"""Group DRO's online update (Sagawa et al., ICLR 2020).

    :math:`q_g \leftarrow q_g e^{\eta \ell_g}`, normalised; the loss is :math:`\sum_g q_g \ell_g`.

    The loss weights are :math:`q_g / p_g`, with :math:`p_g` the sampling probability in force, so that the batch
    mean of the weighted loss estimates :math:`\sum_g q_g L_g` whatever the sampling.

    Args:
        step_size: :math:`\eta`. Sagawa et al. use 0.01 with strong L2 regularisation or early stopping.

    Example:
        >>> policy = GroupDRO(step_size=1.0)
        >>> s = GroupSignals(0, torch.tensor([1.0, 2.0]), torch.ones(2), None, torch.zeros(2), torch.zeros(2),
        ...                  torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), torch.ones(2))
        >>> policy(s).loss_weights  # q = softmax([1, 2]) / p
        tensor([0.5379, 1.4621], dtype=torch.float64)
    """

    def __init__(self, step_size: float = 0.01) -> None:
        self.step_size = _positive(step_size, "step_size")
        self.log_q: Optional[torch.Tensor] = None

    def __call__(self, signals: GroupSignals) -> MixingDecision:
        if self.log_q is None:
            self.log_q = torch.zeros_like(signals.probs)
        self.log_q = self.log_q + self.step_size * _observed(signals.train_loss)
        q = torch.softmax(self.log_q, dim=0)
        weights = torch.where(signals.probs > 0, q / signals.probs.clamp_min(1e-300), torch.zeros_like(q))
        return MixingDecision(loss_weights=weights)

    def state_dict(self) -> dict[str, Any]:
        return {"log_q": None if self.log_q is None else self.log_q.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        log_q = state.get("log_q")
        self.log_q = None if log_q is None else torch.tensor(log_q, dtype=torch.float64)


class OnlineMixing:
    r"""EXP3 over the groups' sampling probabilities, rewarded by their training loss (Albalak et al., 2023).

    :math:`\pi = (1 - K\epsilon_t) w / \sum w + \epsilon_t` with :math:`\epsilon_t = \min(1/K, \sqrt{\ln K / (K t)})`,
    and :math:`\log w_g \mathrel{+}= \epsilon_{t-1} \hat r_g`, where :math:`\hat r_g` is group *g*'s mean training
    loss over the update (every group of a batch is observed, so no importance weighting is needed).

    Args:
        scale: multiplies the reward; losses of order 1 need none.

    Example:
        >>> policy = OnlineMixing()
        >>> s = GroupSignals(0, torch.tensor([0.1, 3.0]), torch.ones(2), None, torch.zeros(2), torch.zeros(2),
        ...                  torch.tensor([0.9, 0.1]), torch.tensor([0.9, 0.1]), torch.ones(2))
        >>> p = policy(s).probs
        >>> bool(p[1] > 0.1), round(float(p.sum()), 6)  # the higher-loss group gains probability
        (True, 1.0)
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _positive(scale, "scale")
        self.log_w: Optional[torch.Tensor] = None
        self.t = 0

    def _exploration(self, k: int, t: int) -> float:
        return min(1.0 / k, math.sqrt(math.log(max(k, 2)) / (k * max(t, 1))))

    def __call__(self, signals: GroupSignals) -> MixingDecision:
        k = len(signals.probs)
        active = signals.natural > 0
        if self.log_w is None:
            self.log_w = torch.zeros_like(signals.probs)
        self.t += 1
        self.log_w = self.log_w + self._exploration(k, self.t - 1) * self.scale * _observed(signals.train_loss)
        eps = self._exploration(k, self.t)
        w = torch.softmax(torch.where(active, self.log_w, torch.full_like(self.log_w, -math.inf)), dim=0)
        probs = (1 - int(active.sum()) * eps) * w + eps * active.double()
        return MixingDecision(probs=probs / probs.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"log_w": None if self.log_w is None else self.log_w.tolist(), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        log_w = state.get("log_w")
        self.log_w = None if log_w is None else torch.tensor(log_w, dtype=torch.float64)
        self.t = int(state.get("t", 0))


class OverfitGuard:
    r"""Stop upsampling a group once it overfits, and keep its share of the objective as a loss weight.

    At each validation it smooths every group's validation and training loss (exponential moving averages). A
    group whose smoothed validation loss has risen above its best for ``patience`` consecutive validations while
    its smoothed training loss kept falling is *guarded*: from then on it is sampled at (at most) its natural
    probability, and every group's loss weight becomes :math:`\pi^*_g / p_g`, with :math:`\pi^*` the mixture the run
    was configured with (the first one seen), so the expected loss stays :math:`\sum_g \pi^*_g L_g`: the emphasis
    moves from repetition to weighting. A guarded group stays guarded.

    Args:
        patience: validations in a row the validation loss must stay above its best.
        smoothing: weight of the newest value in the moving averages, in (0, 1].
        min_rise: how far above its best (relative) the smoothed validation loss must be to count as rising.

    Example:
        >>> guard = OverfitGuard(patience=2, smoothing=1.0)
        >>> def signals(val, train):
        ...     return GroupSignals(0, torch.tensor(train), torch.ones(2), torch.tensor(val), torch.zeros(2),
        ...                         torch.zeros(2), torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1]), torch.ones(2))
        >>> guard(signals([1.0, 1.0], [1.0, 1.0])).probs is None
        True
        >>> _ = guard(signals([0.9, 1.2], [0.9, 0.8]))  # group 1 rises once
        >>> decision = guard(signals([0.8, 1.3], [0.8, 0.6]))  # and again, while its training loss falls
        >>> [round(p, 6) for p in decision.probs.tolist()], guard.guarded.tolist()
        ([0.9, 0.1], [False, True])
    """

    def __init__(self, patience: int = 3, smoothing: float = 0.5, min_rise: float = 0.0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"Expected argument `patience` to be a positive integer, but got {patience!r}.")
        smoothing = _positive(smoothing, "smoothing")
        if smoothing > 1:
            raise ValueError(f"Expected argument `smoothing` to be in (0, 1], but got {smoothing!r}.")
        if not isinstance(min_rise, (int, float)) or isinstance(min_rise, bool) or min_rise < 0:
            raise ValueError(f"Expected argument `min_rise` to be a non-negative number, but got {min_rise!r}.")
        self.patience, self.smoothing, self.min_rise = patience, smoothing, float(min_rise)
        self.target: Optional[torch.Tensor] = None
        self.val: Optional[torch.Tensor] = None
        self.train: Optional[torch.Tensor] = None
        self.best: Optional[torch.Tensor] = None
        self.rises: Optional[torch.Tensor] = None
        self.guarded: Optional[torch.Tensor] = None

    def _smooth(self, old: Optional[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
        if old is None:
            return new.clone()
        fresh = torch.where(torch.isnan(new), old, new)
        return torch.where(torch.isnan(old), fresh, (1 - self.smoothing) * old + self.smoothing * fresh)

    def __call__(self, signals: GroupSignals) -> MixingDecision:
        if signals.val_loss is None:
            raise ValueError(
                "`OverfitGuard` decides from validation losses per group, but none were recorded. Use"
                " `AdaptiveMixing(OverfitGuard(), on='validation')` with a validation loop whose losses go through"
                " `balanced_loss` (the groups are the labels, or pass `groups=`)."
            )
        if self.target is None:
            self.target = signals.probs.clone()
            self.guarded = torch.zeros_like(signals.probs, dtype=torch.bool)
            self.rises = torch.zeros_like(signals.probs)
        assert self.guarded is not None and self.rises is not None
        train_before = self.train
        self.val = self._smooth(self.val, signals.val_loss)
        self.train = self._smooth(self.train, signals.train_loss)
        if self.best is None:
            self.best = self.val.clone()
            return MixingDecision()
        rising = self.val > self.best * (1 + self.min_rise)
        falling = self.train < train_before if train_before is not None else torch.zeros_like(rising)
        self.rises = torch.where(rising & falling, self.rises + 1, torch.where(rising, self.rises, 0.0))
        self.best = torch.where(torch.isnan(self.best), self.val, torch.minimum(self.best, self.val))
        newly = (self.rises >= self.patience) & ~self.guarded
        if not bool(newly.any()):
            return MixingDecision()
        self.guarded = self.guarded | newly
        probs = torch.where(self.guarded, torch.minimum(self.target, signals.natural), self.target)
        # The mass the guarded groups give up goes to the others in proportion to their configured share.
        free = 1.0 - float(probs.sum())
        others = ~self.guarded & (self.target > 0)
        if bool(others.any()):
            probs = torch.where(others, probs + free * self.target / float(self.target[others].sum()), probs)
        probs = probs / probs.sum()
        weights = torch.where(probs > 0, self.target / probs.clamp_min(1e-300), torch.zeros_like(probs))
        return MixingDecision(probs=probs, loss_weights=weights)

    def state_dict(self) -> dict[str, Any]:
        names = ("target", "val", "train", "best", "rises", "guarded")
        return {name: None if getattr(self, name) is None else getattr(self, name).tolist() for name in names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("target", "val", "train", "best", "rises"):
            value = state.get(name)
            setattr(self, name, None if value is None else torch.tensor(value, dtype=torch.float64))
        guarded = state.get("guarded")
        self.guarded = None if guarded is None else torch.tensor(guarded, dtype=torch.bool)
