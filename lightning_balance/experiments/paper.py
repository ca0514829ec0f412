r"""
Reproducing "Upsample or Upweight?"
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

Four checks of Li et al. (NAACL 2025, arXiv 2410.04579) on the embedded long-tailed data, each a function that
returns plain numbers and a verdict: (a) and (b) on the long-tailed digits (small enough for the gradient of every
example), (c) and (d) on a comparison of the embedded task (``data``, long-tailed MNIST-1D by default, where the
head pays for balancing). Every check exercises the package itself, so that a wrong formula, a
sampler that ignores ``T`` or weights that are not applied make it fail:

(a) :func:`full_batch_equivalence`, Theorem 1. :func:`temperature_known_answer` first checks
    :func:`~lightning_balance.temperature_probs` against probabilities worked out by hand. Then the upsampled
    objective is built from the empirical draw frequencies of :class:`~lightning_balance.TemperatureSampler`,
    :math:`\sum_j \frac{c_j}{M}\,\ell_j` over ``M`` draws, and the upweighted one from
    :meth:`~lightning_balance.BalancedDataModule.reduce_loss` of a ``strategy="upweight"`` DataModule. The
    sampler's per-group draw counts must fit the share of the loss that ``reduce_loss`` gives every group (a
    chi-square test), and a few full-batch GD steps of both objectives from the same initialisation must land on
    the same parameters up to the sampling error of the draws.
(b) :func:`gradient_variance`, Theorem 2. Mini-batches drawn by :class:`~lightning_balance.TemperatureSampler`
    at temperature ``T`` (upsample) and at ``T = 1`` with scalarization weights (upweight) give unbiased
    estimates of the same gradient; the variance of the upweighted one is larger by :math:`F(T)` when every
    group has the same per-sample gradient second moment :math:`m`. With per-group moments :math:`m_i` and mean
    gradient :math:`\mu`, the i.i.d. prediction is

    .. math:: \frac{\sum_i p_i(T)^2/p_i(1)\,m_i - \lVert\mu\rVert^2}{\sum_i p_i(T)\,m_i - \lVert\mu\rVert^2},

    which is :math:`F(T)` when the :math:`m_i` are equal and :math:`\mu = 0`. The verdict needs both: the two
    mean batch gradients agree within their sampling error (``bias``: a sampler that ignores ``T`` estimates the
    natural gradient instead, which the digits' unequal groups expose), and the measured ratio is the predicted
    one. Run on the digits and on :func:`~lightning_balance.experiments.datasets.independent_groups` (equal moments).
(c) :func:`tail_dynamics`: from a :func:`~lightning_balance.experiments.runner.compare` run, whether upsampling reaches
    the
    tail recall target before natural sampling and upweighting, and whether its smoothed tail validation loss
    rises after its minimum by more than natural sampling's does (overfitting, not noise).
(d) :func:`cooldown_check`: whether Cooldown keeps the head quality of ``T = 1`` and the tail quality of ``T``,
    judged only where the premise holds (upsampling costs the head, and buys the tail).

Every comparison of strategies is paired by seed with a Student t interval
(:func:`~lightning_balance.experiments.summary.paired_t`). :func:`reproduce` runs all four and writes ``paper.json``,
``report.md`` and plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_balance import temperature as _temperature
from lightning_balance.datamodule import BalancedDataModule
from lightning_balance.experiments.runner import CompareResult, compare, smoothed_rise
from lightning_balance.experiments.settings import (
    DEFAULT_TASK,
    RISE_WINDOW,
    CompareSettings,
    ComponentSpec,
    default_runs,
    embedded_task,
)
from lightning_balance.sampler import TemperatureSampler

__all__ = [
    "KNOWN_PROBS",
    "cooldown_check",
    "digits_training_set",
    "full_batch_equivalence",
    "gradient_variance",
    "per_sample_gradients",
    "reproduce",
    "tail_dynamics",
    "temperature_known_answer",
    "variance_experiment",
    "variance_verdict",
]

TEMPERATURES = (1.0, 2.0, 5.0, 10.0)

#: p_i(T) for group sizes 900, 90, 10, worked out by hand from n_i^(1/T) / sum_j n_j^(1/T). For T = 5:
#: 900^0.2 = 3.898, 90^0.2 = 2.460, 10^0.2 = 1.585, sum 7.943: 0.4908, 0.3097, 0.1995. T = 2: square roots
#: 30, 9.487, 3.162 over 42.649. T = inf: uniform.
KNOWN_SIZES = (900, 90, 10)
KNOWN_PROBS: dict[float, tuple[float, ...]] = {
    1.0: (0.9, 0.09, 0.01),
    2.0: (0.703414433486, 0.222439174885, 0.074146391628),
    5.0: (0.490787313315, 0.309665859914, 0.199546826771),
    math.inf: (1 / 3, 1 / 3, 1 / 3),
}
#: Significance level below which the sampler's draw counts do not fit the weights of ``reduce_loss``.
DRAW_TEST_LEVEL = 1e-3
#: Largest parameter gap after full-batch GD, as a fraction of the largest update, that sampling noise explains.
GD_TOLERANCE = 0.05
#: A mean-gradient gap larger than this many standard errors of the two means is a bias, not noise.
BIAS_Z_LIMIT = 4.0
#: Largest relative gap between the measured and the predicted variance ratio.
RATIO_TOLERANCE = 0.15


def digits_training_set(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Features and labels of the embedded long-tailed digits' training set (124 ... 1 images per class)."""
    from lightning_balance.experiments.datasets import LongTailDigits

    datamodule = LongTailDigits()
    datamodule.setup("fit")
    x, y = datamodule.train_dataset.tensors  # type: ignore[union-attr]
    return x.to(dtype), y.long()


def _mlp(num_features: int, num_classes: int, hidden: int, seed: int, dtype: torch.dtype) -> nn.Module:
    from lightning_balance.experiments.models import MLPClassifier

    torch.manual_seed(seed)
    return MLPClassifier(num_features, num_classes, hidden=hidden).to(dtype)


def _flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------------------------------------
# (a) Theorem 1: full-batch equivalence
# ----------------------------------------------------------------------------------------------------------
def temperature_known_answer(tolerance: float = 1e-9) -> dict[str, Any]:
    """:func:`~lightning_balance.temperature_probs` of the sizes 900, 90, 10 against :data:`KNOWN_PROBS`.

    Example:
        >>> out = temperature_known_answer()
        >>> out["holds"], [case["temperature"] for case in out["cases"]]
        (True, [1.0, 2.0, 5.0, inf])
    """
    cases: list[dict[str, Any]] = []
    for t, expected in KNOWN_PROBS.items():
        got = [float(v) for v in _temperature.temperature_probs(list(KNOWN_SIZES), t)]
        error = max(abs(g - e) for g, e in zip(got, expected, strict=True))
        cases.append({"temperature": t, "expected": list(expected), "got": got, "max_abs_error": error})
    return {"sizes": list(KNOWN_SIZES), "cases": cases, "tolerance": tolerance,
            "holds": all(c["max_abs_error"] <= tolerance for c in cases)}


class _Fixed(BalancedDataModule):
    """A DataModule over fixed tensors, whose groups are the labels."""

    def __init__(self, x: Tensor, y: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tensors = (x, y)

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_dataset = TensorDataset(*self._tensors)


def _draws(groups: Tensor, temperature: float, num_samples: int, seed: int) -> Tensor:
    """``num_samples`` dataset indices drawn by the package's :class:`~lightning_balance.TemperatureSampler`.

    The draws are i.i.d. (``order="iid"``): both theorems are about independent draws, and the stratified default
    has a lower variance than the theorem's upsampling.
    """
    sampler = TemperatureSampler(groups, temperature, num_samples=num_samples, seed=seed, order="iid")
    return torch.from_numpy(np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler)))


def full_batch_equivalence(
    x: Tensor, y: Tensor, temperature: float, *, steps: int = 20, lr: float = 0.5, hidden: int = 32, seed: int = 0,
    num_draws: int = 200_000,
) -> dict[str, Any]:
    r"""Full-batch gradient descent on the sampler's objective and on the DataModule's upweighted loss.

    * upsample: :math:`\sum_j \frac{c_j}{M}\,\ell_j`, where :math:`c_j` counts how often
      :class:`~lightning_balance.TemperatureSampler` at ``temperature`` drew example ``j`` in ``num_draws`` draws
      (the loss that upsampling minimises, estimated from its draws);
    * upweight: :meth:`~lightning_balance.BalancedDataModule.reduce_loss` of a ``strategy="upweight"``
      DataModule over all examples, as :func:`~lightning_balance.balanced_loss` computes it in training;
    * natural: the plain mean, as a contrast (it differs unless ``T = 1``).

    The groups are the labels ``y``. The draw counts per group are tested against the share of the loss that
    ``reduce_loss`` gives every group (chi-square); the parameters after ``steps`` GD steps from one
    initialisation must agree within :data:`GD_TOLERANCE` of the largest update.

    Returns:
        ``holds``, ``draw_p_value`` (chi-square test of the draws), ``draw_shares`` and ``weight_shares`` (per
        group), ``weight_total`` (1 for unbiased weights), ``max_abs_diff`` (largest parameter difference
        upsample vs upweight), ``relative_gap`` (that over ``max_abs_update``), ``max_abs_diff_natural`` and the
        final objective values.

    Example:
        >>> x = torch.randn(40, 3, dtype=torch.float64)
        >>> y = torch.tensor([0] * 30 + [1] * 8 + [2] * 2)
        >>> out = full_batch_equivalence(x, y, temperature=5.0, steps=5, hidden=8)
        >>> out["holds"], out["relative_gap"] < 0.05, out["max_abs_diff_natural"] > 1e-3
        (True, True, True)
    """
    from scipy import stats

    y = y.long()
    counts = torch.bincount(y)
    drawn = _draws(y, temperature, num_draws, seed)
    frequency = torch.bincount(drawn, minlength=len(y)).to(x.dtype) / len(drawn)
    draw_counts = torch.bincount(y[drawn], minlength=len(counts)).double()

    datamodule = _Fixed(x, y, strategy="upweight", temperature=temperature)
    datamodule.setup("fit")
    # reduce_loss is linear in the per-sample losses: its gradient is the weight of every example.
    probe = torch.ones(len(y), dtype=x.dtype, requires_grad=True)
    datamodule.reduce_loss(probe, y).backward()
    example_weight = probe.grad.detach()  # type: ignore[union-attr]
    weight_shares = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, y, example_weight.double())
    weight_total = float(weight_shares.sum())
    expected = weight_shares / weight_shares.sum() * len(drawn) if weight_total > 0 else weight_shares
    if bool(((expected <= 0) & (draw_counts > 0)).any()):
        chi2, p_value = math.inf, 0.0  # draws from a group that carries no weight
    else:
        used = expected > 0
        chi2, p_value = (float(v) for v in stats.chisquare(draw_counts[used].numpy(), expected[used].numpy()))

    models = {name: _mlp(x.shape[1], len(counts), hidden, seed, x.dtype) for name in ("upsample", "upweight",
                                                                                        "natural")}
    start = _flat_params(models["upsample"])

    def objective(name: str, model: nn.Module) -> Tensor:
        losses = F.cross_entropy(model(x), y, reduction="none")
        if name == "upsample":
            return (frequency * losses).sum()
        if name == "upweight":
            return datamodule.reduce_loss(losses, y)
        return losses.mean()

    values = {}
    for name, model in models.items():
        for _ in range(steps):
            model.zero_grad()
            loss = objective(name, model)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.sub_(lr * p.grad)
        with torch.no_grad():
            values[name] = float(objective(name, model))
    final = {name: _flat_params(model) for name, model in models.items()}
    max_abs_diff = float((final["upsample"] - final["upweight"]).abs().max())
    max_abs_update = float((final["upsample"] - start).abs().max())
    relative_gap = max_abs_diff / max(max_abs_update, 1e-30)
    holds = p_value >= DRAW_TEST_LEVEL and abs(weight_total - 1.0) <= 1e-9 and relative_gap <= GD_TOLERANCE
    return {
        "temperature": float(temperature),
        "steps": steps,
        "lr": lr,
        "num_draws": len(drawn),
        "draw_shares": (draw_counts / draw_counts.sum()).tolist(),
        "weight_shares": weight_shares.tolist(),
        "weight_total": weight_total,
        "draw_chi2": chi2,
        "draw_p_value": p_value,
        "max_abs_diff": max_abs_diff,
        "max_abs_diff_natural": float((final["upsample"] - final["natural"]).abs().max()),
        "max_abs_update": max_abs_update,
        "relative_gap": relative_gap,
        "objective_upsample": values["upsample"],
        "objective_upweight": values["upweight"],
        "objective_natural": values["natural"],
        "holds": bool(holds),
    }


# ----------------------------------------------------------------------------------------------------------
# (b) Theorem 2: gradient variance
# ----------------------------------------------------------------------------------------------------------
def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``[N, P]`` gradients of every example's cross-entropy with respect to all parameters of ``model``.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> per_sample_gradients(model, torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])).shape
        torch.Size([5, 8])
    """
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[name].reshape(len(x), -1) for name in params], dim=1)


def _batch_means(grads: Tensor, index: Tensor, weights: Optional[Tensor]) -> Tensor:
    """``[num_batches, P]`` (weighted) mean gradient of every row of ``index``, in memory-bounded chunks."""
    num_batches, batch_size = index.shape
    chunk = max(1, 4_000_000 // max(batch_size * grads.shape[1], 1))
    out = torch.empty(num_batches, grads.shape[1], dtype=grads.dtype)
    for start in range(0, num_batches, chunk):
        rows = index[start : start + chunk]
        gathered = grads[rows]
        if weights is not None:
            gathered = gathered * weights[rows].unsqueeze(-1)
        out[start : start + chunk] = gathered.mean(dim=1)
    return out


def gradient_variance(
    grads: Tensor, groups: Tensor, temperature: float, *, batch_size: int = 32, num_batches: int = 4000,
    seed: int = 0,
) -> dict[str, float]:
    r"""Measured and predicted mini-batch gradient variance of upweighting over upsampling at a fixed model.

    Mini-batches are drawn by :class:`~lightning_balance.TemperatureSampler`: at ``temperature`` for upsampling,
    at ``T = 1`` with the scalarization weights of ``temperature`` for upweighting. A batch's gradient is the
    (weighted) mean of the per-sample gradients ``grads``; its variance is the trace of the covariance over
    ``num_batches`` batches.

    Returns:
        ``F`` (:math:`F(T)`), ``predicted_ratio`` (i.i.d. prediction from the measured per-group second moments
        and mean gradient, see the module docstring), ``measured_ratio`` (measured variance, upweight ÷ upsample),
        the two measured variances, ``bias`` (distance between the two mean batch gradients relative to the norm
        of the full gradient), ``bias_z`` (that distance over its standard error from the batch variances: about
        at most 1 when both estimators are unbiased, large when one of them is not; the standard error assumes
        independent batches, which a stratified sampler beats), ``unbiased`` (``bias_z`` at most
        :data:`BIAS_Z_LIMIT`), ``ratio_gap`` (measured ÷ predicted ratio − 1), ``ratio_matches`` (``|ratio_gap|``
        at most :data:`RATIO_TOLERANCE`) and ``moment_spread`` (largest ÷ smallest per-group second moment; 1
        where the theorem's assumption holds).

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> grads = torch.randn(6000, 4, generator=generator, dtype=torch.float64)  # one distribution for all groups
        >>> groups = torch.tensor([0] * 5000 + [1] * 900 + [2] * 100)
        >>> out = gradient_variance(grads, groups, 5.0, batch_size=4, num_batches=20000)
        >>> round(out["F"], 2), abs(out["measured_ratio"] / out["F"] - 1) < 0.1
        (3.64, True)
    """
    groups = torch.as_tensor(groups).long()
    counts = torch.bincount(groups)
    n = batch_size * num_batches
    up = _draws(groups, temperature, n, seed)
    nat = _draws(groups, 1.0, n, seed + 1)
    weights = _temperature.scalarization_weights(counts, temperature).to(grads.dtype)[groups]
    up_batches = _batch_means(grads, up.view(num_batches, batch_size), None)
    uw_batches = _batch_means(grads, nat.view(num_batches, batch_size), weights)

    def variance(batches: Tensor) -> float:
        return float(((batches - batches.mean(0)) ** 2).sum(1).sum() / (len(batches) - 1))

    var_up, var_uw = variance(up_batches), variance(uw_batches)
    p = _temperature.temperature_probs(counts, temperature).to(grads.dtype)
    q = _temperature.temperature_probs(counts, 1.0).to(grads.dtype)
    nonempty = counts > 0
    sq = (grads**2).sum(1)
    m = torch.zeros(len(counts), dtype=grads.dtype).index_add_(0, groups, sq) / counts.clamp_min(1)
    group_mean = torch.zeros(len(counts), grads.shape[1], dtype=grads.dtype).index_add_(0, groups, grads)
    group_mean /= counts.clamp_min(1).unsqueeze(1)
    mu = (p.unsqueeze(1) * group_mean).sum(0)
    mu2 = float((mu**2).sum())
    second_up = float((p * m)[nonempty].sum())
    second_uw = float((p[nonempty] ** 2 / q[nonempty] * m[nonempty]).sum())
    gap = float((up_batches.mean(0) - uw_batches.mean(0)).norm())
    bias = gap / max(float(mu.norm()), 1e-30)
    # The squared distance of two independent means has expectation (var_up + var_uw) / num_batches.
    bias_z = gap / max(math.sqrt((var_up + var_uw) / num_batches), 1e-30)
    predicted = (second_uw - mu2) / (second_up - mu2)
    ratio_gap = (var_uw / var_up) / predicted - 1
    return {
        "temperature": float(temperature),
        "F": _temperature.scalarization_variance_factor(counts, temperature),
        "predicted_ratio": predicted,
        "second_moment_ratio": second_uw / second_up,
        "measured_ratio": var_uw / var_up,
        "ratio_gap": ratio_gap,
        "var_upsample": var_up,
        "var_upweight": var_uw,
        "bias": bias,
        "bias_z": bias_z,
        "unbiased": bool(bias_z <= BIAS_Z_LIMIT),
        "ratio_matches": bool(abs(ratio_gap) <= RATIO_TOLERANCE),
        "mean_gradient_share": mu2 / second_up,
        "moment_spread": float(m[nonempty].max() / m[nonempty].min()),
        "batch_size": batch_size,
        "num_batches": num_batches,
    }


def variance_experiment(
    temperatures: Sequence[float] = TEMPERATURES, *, batch_size: int = 32, num_batches: int = 4000,
    warmup_steps: int = 100, seed: int = 0,
) -> dict[str, list[dict[str, float]]]:
    """:func:`gradient_variance` for every temperature on two settings.

    * ``digits``: the embedded digits, at an MLP after ``warmup_steps`` full-batch GD steps on the natural
      objective (per-group gradient moments differ: the head is fitted, the tail is not);
    * ``equal_moments``: :func:`~lightning_balance.experiments.datasets.independent_groups` with the digits' long-tail
      shape scaled up (groups 5000 ... 50), at a freshly initialised MLP: every group has the same gradient
      distribution, the theorem's assumption.
    """
    from lightning_balance.experiments.datasets import independent_groups, long_tail_counts

    x, y = digits_training_set()
    model = _mlp(x.shape[1], int(y.max()) + 1, 64, seed, x.dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(warmup_steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    settings = {"digits": (per_sample_gradients(model, x, y), y)}

    sx, sy, sg = independent_groups(long_tail_counts(5000, 10, 100), num_features=8, num_classes=3, seed=seed).tensors
    synthetic = _mlp(8, 3, 16, seed, torch.float64)
    settings["equal_moments"] = (per_sample_gradients(synthetic, sx.double(), sy), sg)
    return {
        name: [gradient_variance(grads, groups, t, batch_size=batch_size, num_batches=num_batches, seed=seed)
               for t in temperatures]
        for name, (grads, groups) in settings.items()
    }


# ----------------------------------------------------------------------------------------------------------
# (c) and (d): from a comparison
# ----------------------------------------------------------------------------------------------------------
def variance_verdict(variance: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """(b) as one verdict: unbiased everywhere, and the equal-moment ratio as Theorem 2 predicts.

    On the digits the ratio is reported, not judged: the i.i.d. prediction does not hold for a sampler that
    stratifies its group sequence (its upsampled batches vary less than i.i.d. draws would).
    """
    rows = [r for setting in variance.values() for r in setting]
    equal = variance.get("equal_moments", [])
    unbiased = bool(rows) and all(r["unbiased"] for r in rows)
    ratio = bool(equal) and all(r["ratio_matches"] for r in equal)
    return {"unbiased": unbiased, "equal_moments_ratio_matches": ratio, "holds": unbiased and ratio,
            "bias_z_limit": BIAS_Z_LIMIT, "ratio_tolerance": RATIO_TOLERANCE}


def _rows(result: CompareResult) -> dict[str, Mapping[str, Any]]:
    return {row["name"]: row for row in result.summary}


def _min_step(curve: Sequence[Mapping[str, Any]], key: str) -> Optional[int]:
    points = [(p[key], p["step"]) for p in curve if math.isfinite(p[key])]
    return min(points)[1] if points else None


def _significant(stat: Mapping[str, Any]) -> Optional[bool]:
    """Whether the t interval lies above 0; ``None`` with fewer than two paired seeds."""
    if stat["pairs"] < 2:
        return None
    return bool(stat["low"] > 0)


def _not_worse(stat: Mapping[str, Any]) -> Optional[bool]:
    """Whether the t interval reaches 0 or above (not significantly negative); ``None`` with fewer than two pairs."""
    if stat["pairs"] < 2:
        return None
    return bool(stat["high"] >= 0)


def tail_dynamics(result: CompareResult) -> dict[str, Any]:
    """(c) Does upsampling reach the tail first, and does its tail then overfit more than natural sampling's?

    For natural, upsample, upweight and Cooldown (diverged seeds left out): the steps to reach the tail recall
    target, the step of the lowest tail (and head) validation loss, and ``tail_loss_rise``, how far the smoothed
    tail validation loss ended above its minimum (:func:`~lightning_balance.experiments.runner.smoothed_rise`), per seed
    and
    as mean ± std.

    Verdicts, each from paired per-seed differences with a t interval (``None`` when fewer than two seeds pair):

    * ``faster_than_natural`` / ``faster_than_upweight``: upsampling reached the target in every seed and the
      other strategy took significantly more steps (a seed that never reached counts ``max_steps``, less than its
      true time);
    * ``faster``: both;
    * ``overfits``: upsampling's smoothed rise is significantly larger than natural sampling's. Every noisy curve
      ends above its lowest point, so a rise alone says nothing; natural sampling is the reference.
    """
    from lightning_balance.experiments.summary import paired_t

    rows = _rows(result)
    max_steps = result.settings.get("max_steps")
    out: dict[str, Any] = {"tail_target": result.settings.get("tail_target"), "rise_window": RISE_WINDOW}
    trained: dict[str, list[Any]] = {}
    for name in ("natural", "upsample", "upweight", "cooldown"):
        if name not in rows:
            continue
        runs = [run for run in result.runs if run.name == name and not run.diverged]
        trained[name] = runs
        row = rows[name]
        out[name] = {
            "seeds": [run.seed for run in runs],
            "steps_to_tail_target": [run.steps_to_tail_target for run in runs],
            "steps_to_tail_target_mean": row["steps_to_tail_target_mean"],
            "steps_to_tail_target_std": row["steps_to_tail_target_std"],
            "tail_target_reached": row["tail_target_reached"],
            "tail_loss_min_step": [run.tail_loss_min_step for run in runs],
            "head_loss_min_step": [_min_step(run.curve, "loss_head") for run in runs],
            "tail_loss_rise": [_rise(run) for run in runs],
            "tail_loss_rise_mean": row["tail_loss_rise_mean"],
            "tail_loss_rise_std": row["tail_loss_rise_std"],
        }
    if "upsample" not in out:
        return out

    def steps(name: str) -> dict[int, float]:
        cap = float(max_steps) if max_steps is not None else math.nan
        return {run.seed: float(run.steps_to_tail_target) if run.steps_to_tail_target is not None else cap
                for run in trained[name]}

    up = trained["upsample"]
    reached_all = bool(up) and all(run.steps_to_tail_target is not None for run in up)
    verdicts = []
    for other in ("natural", "upweight"):
        if other not in trained:
            continue
        stat = paired_t(steps(other), steps("upsample"))
        out[f"steps_{other}_minus_upsample"] = stat
        verdict = _significant(stat)
        out[f"faster_than_{other}"] = verdict if verdict is None else bool(verdict and reached_all)
        verdicts.append(out[f"faster_than_{other}"])
    out["faster"] = None if not verdicts or None in verdicts else all(verdicts)
    out["overfits"] = None
    if "natural" in trained:
        stat = paired_t({r.seed: _rise(r) for r in up}, {r.seed: _rise(r) for r in trained["natural"]})
        out["rise_upsample_minus_natural"] = stat
        out["overfits"] = _significant(stat)
    return out


def _rise(run: Any) -> float:
    if run.tail_loss_rise is not None:
        return float(run.tail_loss_rise)
    return smoothed_rise([p["loss_tail"] for p in run.curve]) if run.curve else math.nan


def _cooldown_side(
    runs: Sequence[Any], metrics: Sequence[str], reference: str, other: str, premise: tuple[str, str]
) -> dict[str, Any]:
    """One side of (d): the premise per metric, then Cooldown against ``reference`` and ``other``."""
    from lightning_balance.experiments.summary import paired_difference

    checks = []
    for metric in metrics:
        cost = paired_difference(runs, *premise, metric)
        vs_reference = paired_difference(runs, "cooldown", reference, metric)
        vs_other = paired_difference(runs, "cooldown", other, metric)
        holds = _significant(cost)
        keeps = None
        if holds:
            # Kept: not significantly worse than the reference, and significantly better than the other strategy
            # (so a wide interval alone does not count as keeping).
            keeps = bool(_not_worse(vs_reference) and _significant(vs_other))
        checks.append({"metric": metric, "premise": cost, "premise_holds": holds, "vs_reference": vs_reference,
                       "vs_other": vs_other, "keeps": keeps,
                       "cooldown": _mean_of(runs, "cooldown", metric), "reference": _mean_of(runs, reference, metric),
                       "other": _mean_of(runs, other, metric)})
    judged = [c for c in checks if c["premise_holds"]]
    if any(c["premise_holds"] is None for c in checks):
        verdict, reason = None, "fewer than two seeds: no interval"
    elif not judged:
        verdict, reason = None, "the premise does not hold on this data"
    else:
        verdict, reason = all(c["keeps"] for c in judged), ""
    return {"checks": checks, "keeps": verdict, "reason": reason}


def _mean_of(runs: Sequence[Any], name: str, metric: str) -> float:
    values = [run.final.get(metric, math.nan) for run in runs if run.name == name and not run.diverged]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def cooldown_check(result: CompareResult) -> dict[str, Any]:
    """(d) Does Cooldown keep the head quality of natural sampling and the tail quality of upsampling at ``T``?

    Each claim is judged only when its premise holds on the data, from paired per-seed t intervals:

    * head: upsampling costs the head (natural minus upsample significantly above 0, in head recall or head F1).
      Then Cooldown keeps the head if it is not significantly worse than natural sampling and significantly
      better than upsampling on those metrics. A head that every strategy recognises perfectly cannot judge it:
      ``keeps_head`` is ``None`` with the reason.
    * tail: upsampling buys the tail (upsample minus natural significantly above 0). Then Cooldown keeps the tail
      if it is not significantly worse than upsampling and significantly better than natural sampling.
    """
    rows = _rows(result)
    if not {"cooldown", "natural", "upsample"} <= set(rows):
        return {}
    head = _cooldown_side(result.runs, ("recall_head", "f1_head"), "natural", "upsample", ("natural", "upsample"))
    tail = _cooldown_side(result.runs, ("recall_tail", "f1_tail"), "upsample", "natural", ("upsample", "natural"))
    return {"head": head, "tail": tail, "keeps_head": head["keeps"], "keeps_tail": tail["keeps"],
            "head_reason": head["reason"], "tail_reason": tail["reason"]}


# ----------------------------------------------------------------------------------------------------------
# Everything, with a report
# ----------------------------------------------------------------------------------------------------------
def reproduce(
    settings: Optional[CompareSettings] = None,
    *,
    temperature: float = 5.0,
    cooldown_at: float = 0.5,
    num_batches: int = 4000,
    temperatures: Sequence[float] = TEMPERATURES,
    out_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    data: str = DEFAULT_TASK,
) -> Optional[dict[str, Any]]:
    """Run checks (a) to (d) and, with ``out_dir``, write ``paper.json``, ``report.md`` and the plots.

    (a) and (b) use the embedded digits (a fixed training set small enough for per-sample gradients of every
    example). The comparison for (c) and (d) trains natural, upsample (``temperature``), upweight and Cooldown
    (``temperature`` → 1 at ``cooldown_at``) on the embedded task ``data``
    (:data:`~lightning_balance.experiments.settings.EMBEDDED_TASKS`) with ``settings`` (default: the task's run
    length, 3 seeds). Returns the report as a dict (``None`` on ranks other than 0 of a distributed run).
    """
    from lightning_balance.experiments.checks import import_object

    task = embedded_task(data)
    settings = settings or CompareSettings(max_steps=task["max_steps"], val_every=task["val_every"],
                                           tail_target=task["tail_target"])
    started = time.perf_counter()
    x, y = digits_training_set()
    clock = time.perf_counter()
    known = temperature_known_answer()
    equivalence = [full_batch_equivalence(x, y, t) for t in temperatures]
    timings = {"full_batch_s": time.perf_counter() - clock}
    clock = time.perf_counter()
    variance = variance_experiment(temperatures, num_batches=num_batches)
    timings["variance_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    model = None
    if task["model"] is not None:
        model = ComponentSpec(import_object(task["model"], "--model"), {}, "--model", size_from_data=True)
    result = compare(ComponentSpec(import_object(task["datamodule"])), model, default_runs(temperature, cooldown_at),
                     settings, progress)
    timings["compare_s"] = time.perf_counter() - clock
    if result.is_empty:
        return None
    report: dict[str, Any] = {
        "known_answer": known,
        "full_batch_equivalence": equivalence,
        "full_batch_holds": bool(known["holds"] and all(r["holds"] for r in equivalence)),
        "gradient_variance": variance,
        "variance_verdict": variance_verdict(variance),
        "tail_dynamics": tail_dynamics(result),
        "cooldown": cooldown_check(result),
        "compare": {"settings": result.settings, "summary": result.summary},
        "group_counts": [int(c) for c in torch.bincount(y)],
        "task": data,
        "compare_group_counts": list(result.settings["group_counts"]),
    }
    timings["total_s"] = time.perf_counter() - started
    report["timings"] = timings
    report["markdown_summary"] = _summary_lines(report)
    if out_dir is not None:
        _write_report(report, result, Path(out_dir))
    return report


def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _judged(value: Optional[bool], reason: str = "fewer than two seeds: no interval") -> str:
    return f"cannot be judged ({reason})" if value is None else str(value)


def _ci(stat: Mapping[str, Any], digits: int = 3) -> str:
    if stat["pairs"] < 2:
        return f"{_fmt(stat['difference'], digits)} (one seed: no interval)"
    return (f"{stat['difference']:+.{digits}f}, {stat['confidence']:.0%} CI {stat['low']:+.{digits}f} to"
            f" {stat['high']:+.{digits}f} over {stat['pairs']} seeds")


def _contrast(row: Mapping[str, Any]) -> float:
    return row["max_abs_diff_natural"] / max(row["max_abs_update"], 1e-30)


def _summary_lines(report: Mapping[str, Any]) -> str:
    eq = report["full_batch_equivalence"]
    known = report["known_answer"]
    worst_known = max(c["max_abs_error"] for c in known["cases"])
    lines = [
        f"(a) p(T) of sizes 900/90/10 against hand-worked values: largest error {worst_known:.1e}; sampler draws"
        " against the weights of reduce_loss, chi-square p "
        + ", ".join(f"T={r['temperature']:g}: {r['draw_p_value']:.2g}" for r in eq)
        + "; full-batch GD, upsample (from the draws) vs upweight (reduce_loss): parameter gap "
        + ", ".join(f"T={r['temperature']:g}: {r['relative_gap']:.1%}" for r in eq)
        + f" of the update (natural differs by up to {max(_contrast(r) for r in eq):.0%})"
        + f" -> holds: {report['full_batch_holds']}",
    ]
    for name, rows in report["gradient_variance"].items():
        lines.append(
            f"(b) Var(upweight)/Var(upsample) on {name}: "
            + ", ".join(f"T={r['temperature']:g}: {r['measured_ratio']:.2f} (F={r['F']:.2f},"
                        f" predicted {r['predicted_ratio']:.2f}, bias {r['bias_z']:.1f} s.e.)" for r in rows)
        )
    vv = report["variance_verdict"]
    lines.append(f"(b) both estimators unbiased (mean gradients within {vv['bias_z_limit']:g} s.e.): {vv['unbiased']};"
                 f" equal-moment ratio within {vv['ratio_tolerance']:.0%} of the prediction:"
                 f" {vv['equal_moments_ratio_matches']} -> holds: {vv['holds']}")
    dyn = report["tail_dynamics"]
    if "upsample" in dyn:
        parts = [f"{n} {_fmt(dyn[n]['steps_to_tail_target_mean'], 0)} ({dyn[n]['tail_target_reached']})"
                 for n in ("natural", "upsample", "upweight") if n in dyn]
        rise = dyn.get("rise_upsample_minus_natural")
        text = (f"(c) Steps to tail recall ≥ {dyn['tail_target']:g}: " + ", ".join(parts)
                + f" -> faster than natural: {_judged(dyn.get('faster_than_natural'))}, than upweight:"
                f" {_judged(dyn.get('faster_than_upweight'))}. Smoothed tail val loss rise: upsample"
                f" {_fmt(dyn['upsample']['tail_loss_rise_mean'])}")
        if "natural" in dyn and rise is not None:
            text += f", natural {_fmt(dyn['natural']['tail_loss_rise_mean'])} (upsample − natural {_ci(rise)})"
        lines.append(text + f" -> overfits more than natural: {_judged(dyn['overfits'])}")
    cool = report["cooldown"]
    if cool:
        parts = []
        for side, reference in (("head", "natural"), ("tail", "upsample")):
            check = cool[side]["checks"][0]
            parts.append(f"{side} recall {_fmt(check['cooldown'])} vs {reference} {_fmt(check['reference'])}"
                         f" (premise {_ci(check['premise'])})")
        lines.append(
            "(d) Cooldown " + "; ".join(parts)
            + f" -> keeps head: {_judged(cool['keeps_head'], cool['head_reason'])},"
            f" keeps tail: {_judged(cool['keeps_tail'], cool['tail_reason'])}"
        )
    return "\n".join(lines)


def _write_report(report: dict[str, Any], result: CompareResult, out: Path) -> None:
    from lightning_balance.experiments.plots import plot_temperature_probs, plot_variance_factor
    from lightning_balance.experiments.report import write_compare_outputs, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_compare_outputs(result, out / "compare")
    counts = report["group_counts"]
    from lightning_balance.experiments.datasets import long_tail_counts

    settings = {
        "digits": (counts, "variance_digits.png",
                   "Gradient variance, upweight / upsample: long-tailed digits (MLP after 100 GD steps)"),
        "equal_moments": (long_tail_counts(5000, 10, 100), "variance_equal_moments.png",
                          "Gradient variance, upweight / upsample: groups with equal gradient moments"),
    }
    for name, (sizes, file, title) in settings.items():
        rows = report["gradient_variance"][name]
        plot_variance_factor(sizes, measured={r["temperature"]: r["measured_ratio"] for r in rows},
                             predicted={r["temperature"]: r["predicted_ratio"] for r in rows}, title=title,
                             path=out / file)
    plot_temperature_probs(counts, path=out / "temperature_probs.png")
    write_json(report, out / "paper.json")
    (out / "report.md").write_text(report_markdown(report, result), encoding="utf-8")


def report_markdown(report: Mapping[str, Any], result: CompareResult) -> str:
    """The report as markdown: one section per check, with the numbers, the verdict and what it rests on."""
    from lightning_balance.experiments.report import summary_markdown

    s = result.settings
    eq = report["full_batch_equivalence"]
    known = report["known_answer"]
    md = [
        f"# Upsample or upweight? Checks of Li et al. (2025) on the embedded data ({report.get('task', 'digits')})",
        "",
        f"(a) and (b) on the long-tailed digits, training counts per class {report['group_counts']}. (c) and (d) on"
        f" `{report.get('task', 'digits')}` ({s['datamodule']}, model {s['model']}), training counts per class"
        f" {report.get('compare_group_counts', report['group_counts'])}: {len(s['seeds'])} seed(s) ×"
        f" {s['max_steps']} steps, validation every {s['val_every']} steps; head/medium/tail split"
        f" `{s['split']}` (many={s['many']:g}, few={s['few']:g}). Strategies are compared seed by seed, with"
        " 95% Student t intervals of the paired differences. Time: "
        + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in report["timings"].items()) + ".",
        "",
        "## (a) Theorem 1: full-batch gradient descent",
        "",
        f"`temperature_probs` of the sizes {known['sizes']} against probabilities worked out by hand:",
        "",
        "| T | expected | got | largest error |",
        "|---:|---|---|---:|",
    ]
    for c in known["cases"]:
        md.append(f"| {c['temperature']:g} | {', '.join(f'{v:.6f}' for v in c['expected'])} |"
                  f" {', '.join(f'{v:.6f}' for v in c['got'])} | {c['max_abs_error']:.1e} |")
    md += [
        "",
        f"Upsampled objective from {eq[0]['num_draws']} draws of `TemperatureSampler` (each example's loss weighted"
        " by how often it was drawn), upweighted objective from `BalancedDataModule(strategy=\"upweight\")"
        f".reduce_loss`; both from the same initialisation (float64 MLP, learning rate {eq[0]['lr']:g},"
        f" {eq[0]['steps']} full-batch steps). The chi-square test compares the sampler's draws per group with the"
        " share of the loss `reduce_loss` gives every group.",
        "",
        "| T | draw test p | weight total | parameter gap upsample vs upweight (of the update) | natural vs"
        " upsample (contrast) | largest update | holds |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in eq:
        md.append(f"| {r['temperature']:g} | {r['draw_p_value']:.3g} | {r['weight_total']:.6f} |"
                  f" {r['relative_gap']:.2%} | {_contrast(r):.1%} |"
                  f" {r['max_abs_update']:.2e} | {r['holds']} |")
    md += ["", (
        f"**Theorem 1 holds: {report['full_batch_holds']}.** The probabilities match the hand-worked values"
        f" ({known['holds']}), the sampler draws every group as often as the upweighted loss weights it (draw test"
        f" p ≥ {DRAW_TEST_LEVEL:g}), and the two objectives lead full-batch GD to the same parameters within"
        f" {GD_TOLERANCE:.0%} of the update, the sampling error of the draws."
    ), "",
        "## (b) Theorem 2: mini-batch gradient variance", "",
        f"Batches of {report['gradient_variance']['digits'][0]['batch_size']} drawn by `TemperatureSampler`"
        f" ({report['gradient_variance']['digits'][0]['num_batches']} per sampler), at a fixed model.",
        "`predicted` uses the measured per-group second moments and mean gradient (i.i.d. draws); F(T) also"
        " assumes equal moments and a negligible mean gradient. `bias` is the distance between the two mean batch"
        " gradients in standard errors (independent batches): both estimators are unbiased, so it stays near or"
        f" below 1; more than {BIAS_Z_LIMIT:g} means one sampler estimates another gradient.", ""]
    for name, rows in report["gradient_variance"].items():
        md += [f"**{name}**", "",
               "| T | F(T) | predicted | measured Var(upweight)/Var(upsample) | bias (s.e.) | unbiased |"
               " moment spread (max/min) | mean-gradient share |",
               "|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in rows:
            md.append(f"| {r['temperature']:g} | {r['F']:.3f} | {r['predicted_ratio']:.3f} |"
                      f" {r['measured_ratio']:.3f} | {r['bias_z']:.2f} | {r['unbiased']} |"
                      f" {r['moment_spread']:.1f} | {r['mean_gradient_share']:.3f} |")
        md.append("")
    vv = report["variance_verdict"]
    md += [f"**Theorem 2 holds: {vv['holds']}.** Both estimators are unbiased at every T on both settings:"
           f" {vv['unbiased']}; with equal moments the measured ratio is within {vv['ratio_tolerance']:.0%} of the"
           f" prediction: {vv['equal_moments_ratio_matches']}. " + _variance_comment(report["gradient_variance"]),
           ""]
    dyn = report["tail_dynamics"]
    md += ["## (c) Upsampling converges faster on the tail, then overfits it", "",
           f"| strategy | steps to tail recall ≥ {dyn['tail_target']:g} (per seed) | step of lowest tail val loss |"
           f" step of lowest head val loss | smoothed tail val loss rise (mean of {dyn['rise_window']} validations) |",
           "|---|---|---|---|---|"]
    for name in ("natural", "upsample", "upweight", "cooldown"):
        if name in dyn:
            d = dyn[name]
            md.append(f"| {name} | {d['steps_to_tail_target']} | {d['tail_loss_min_step']} |"
                      f" {d['head_loss_min_step']} |"
                      f" {_fmt(d['tail_loss_rise_mean'])} ± {_fmt(d['tail_loss_rise_std'])} |")
    if "upsample" in dyn:
        md += [""]
        for other in ("natural", "upweight"):
            if f"steps_{other}_minus_upsample" in dyn:
                md.append(f"- Faster than {other}: **{_judged(dyn[f'faster_than_{other}'])}** (steps {other} −"
                          f" upsample {_ci(dyn[f'steps_{other}_minus_upsample'], 0)}; upsampling must reach the target"
                          " in every seed).")
        if "rise_upsample_minus_natural" in dyn:
            md.append(f"- Overfits more than natural sampling: **{_judged(dyn['overfits'])}** (rise upsample −"
                      f" natural {_ci(dyn['rise_upsample_minus_natural'])}). Every noisy curve ends above its lowest"
                      " point, so the rise is smoothed and compared with natural sampling's.")
    cool = report["cooldown"]
    if cool:
        md += ["", "## (d) Cooldown", "",
               "Each half is judged only where its premise holds: upsampling costs the head (natural − upsample"
               " above 0), upsampling buys the tail (upsample − natural above 0). Cooldown then keeps it when it is"
               " not significantly worse than the reference and significantly better than the other strategy.", "",
               "| half | metric | premise | Cooldown | reference | Cooldown − reference | Cooldown − other | kept |",
               "|---|---|---|---:|---:|---|---|---|"]
        for side, label in (("head", "head (reference natural, other upsample)"),
                            ("tail", "tail (reference upsample, other natural)")):
            for c in cool[side]["checks"]:
                md.append(f"| {label} | {c['metric']} | {_ci(c['premise'])}: {_judged(c['premise_holds'])} |"
                          f" {_fmt(c['cooldown'])} | {_fmt(c['reference'])} | {_ci(c['vs_reference'])} |"
                          f" {_ci(c['vs_other'])} | {_judged(c['keeps'], 'premise')} |")
        md += ["", f"Cooldown keeps the head quality of T=1: **{_judged(cool['keeps_head'], cool['head_reason'])}**;"
               f" the tail quality of upsampling: **{_judged(cool['keeps_tail'], cool['tail_reason'])}**."]
    md += ["", "## All strategies", "", summary_markdown(result.summary), "",
           "![curves](compare/curves.png)", "", "![trade-off](compare/tradeoff.png)", "",
           "![variance](variance_digits.png) ![variance, equal moments](variance_equal_moments.png)", ""]
    return "\n".join(md)


def _variance_comment(variance: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    def worst_gap(rows: Sequence[Mapping[str, Any]], key: str) -> float:
        gaps = [abs(r["measured_ratio"] / r[key] - 1) for r in rows if r["temperature"] != 1.0]
        return max(gaps, default=0.0)

    eq, dg = variance.get("equal_moments", []), variance.get("digits", [])
    parts = []
    if eq:
        parts.append(f"With equal per-group moments the measured ratio is within {worst_gap(eq, 'F'):.0%} of F(T).")
    if dg:
        spread = max(r["moment_spread"] for r in dg)
        gap_f, gap_pred = worst_gap(dg, "F"), worst_gap(dg, "predicted_ratio")
        text = (
            f"On the digits the per-group second moments differ by up to {spread:.0f}x; the measured ratio is off"
            f" F(T) by up to {gap_f:.0%} and off the i.i.d. prediction from the measured moments by up to"
            f" {gap_pred:.0%} (reported, not judged: a sampler that stratifies its group sequence draws upsampled"
            " batches that vary less than i.i.d. ones)."
        )
        if gap_pred < 0.1 <= gap_f:
            text += " The gap to F(T) comes from the equal-moment assumption, not from the sampler."
        parts.append(text)
    return " ".join(parts)
