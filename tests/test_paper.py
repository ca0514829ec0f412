"""The paper checks against their formulas, and each check failing when the package is made wrong on purpose."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lightning_balance.experiments.paper as paper
from lightning_balance import BalancedDataModule, scalarization_variance_factor, temperature_probs
from lightning_balance.experiments.datasets import independent_groups, long_tail_counts
from lightning_balance.experiments.paper import (
    BIAS_Z_LIMIT,
    GD_TOLERANCE,
    cooldown_check,
    digits_training_set,
    full_batch_equivalence,
    gradient_variance,
    per_sample_gradients,
    reproduce,
    tail_dynamics,
    temperature_known_answer,
    variance_verdict,
)
from lightning_balance.experiments.runner import CompareResult, RunResult, smoothed_rise
from lightning_balance.experiments.summary import summarize
from lightning_balance.sampler import TemperatureSampler

_TRUE_PROBS = temperature_probs


# ------------------------------------------------------------------ ways to make the package wrong
def _patch_temperature_probs(monkeypatch, fake):
    """Replace `temperature_probs` wherever the package looks it up (the sampler, the weights, the checks)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("lightning_balance") and getattr(module, "temperature_probs", None) is _TRUE_PROBS:
            monkeypatch.setattr(module, "temperature_probs", fake)


def _n_to_the_t(counts, temperature):
    """p ∝ n^T instead of n^(1/T): the exponent inverted."""
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if math.isinf(temperature):
        return (n > 0).double() / (n > 0).sum()
    w = n.clamp_min(0) ** temperature
    return w / w.sum()


def _random_p(counts, temperature):
    generator = np.random.default_rng()
    return torch.as_tensor(generator.dirichlet(np.ones(len(np.asarray(counts)))), dtype=torch.float64)


class _SamplerIgnoringT(TemperatureSampler):
    """A sampler that always draws naturally, whatever temperature it is given."""

    def __init__(self, groups, temperature=1.0, **kwargs):
        super().__init__(groups, 1.0, **kwargs)


def _plain_mean(self, per_sample_loss, groups=None):
    return per_sample_loss.mean()


# ------------------------------------------------------------------ (a) Theorem 1
def test_temperature_probs_known_answer():
    # Worked out by hand: 900^0.2 = 3.898, 90^0.2 = 2.460, 10^0.2 = 1.585, sum 7.943.
    assert temperature_probs([900, 90, 10], 5.0).tolist() == pytest.approx([0.4908, 0.3097, 0.1995], abs=1e-4)
    out = temperature_known_answer()
    assert out["holds"] and max(c["max_abs_error"] for c in out["cases"]) < 1e-12


@pytest.mark.parametrize("temperature", [2.0, 5.0, 10.0])
def test_full_batch_gd_gives_the_same_parameters(temperature):
    x, y = digits_training_set()
    out = full_batch_equivalence(x, y, temperature, steps=10)
    assert out["holds"]
    assert out["draw_p_value"] > 0.01 and out["weight_total"] == pytest.approx(1.0, abs=1e-12)
    assert out["draw_shares"] == pytest.approx(temperature_probs(torch.bincount(y), temperature).tolist(), abs=2e-3)
    assert out["relative_gap"] < GD_TOLERANCE
    # ... while the natural objective goes elsewhere: the check is not vacuous
    assert out["max_abs_diff_natural"] > 5 * out["max_abs_diff"] and out["max_abs_update"] > 1e-2


def test_full_batch_gd_at_temperature_one_is_natural():
    x, y = digits_training_set()
    out = full_batch_equivalence(x, y, 1.0, steps=3)
    assert out["holds"] and out["relative_gap"] < GD_TOLERANCE


def test_check_a_fails_when_the_exponent_is_inverted(monkeypatch):
    _patch_temperature_probs(monkeypatch, _n_to_the_t)
    assert temperature_known_answer()["holds"] is False


def test_check_a_fails_with_random_probabilities(monkeypatch):
    _patch_temperature_probs(monkeypatch, _random_p)
    assert temperature_known_answer()["holds"] is False
    x, y = digits_training_set()
    assert full_batch_equivalence(x, y, 5.0, steps=3)["holds"] is False  # the draws and the weights disagree


def test_check_a_fails_for_a_sampler_that_ignores_the_temperature(monkeypatch):
    monkeypatch.setattr(paper, "TemperatureSampler", _SamplerIgnoringT)
    x, y = digits_training_set()
    out = full_batch_equivalence(x, y, 5.0, steps=10)
    assert out["holds"] is False
    assert out["draw_p_value"] < 1e-6 and out["relative_gap"] > GD_TOLERANCE


def test_check_a_fails_when_reduce_loss_does_not_weight(monkeypatch):
    monkeypatch.setattr(BalancedDataModule, "reduce_loss", _plain_mean)
    x, y = digits_training_set()
    out = full_batch_equivalence(x, y, 5.0, steps=10)
    assert out["holds"] is False and out["draw_p_value"] < 1e-6


# ------------------------------------------------------------------ (b) Theorem 2
SIZES = [4000, 800, 160, 32]


def _groups():
    return torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))


def _equal_moments():
    # Random signs: every per-sample gradient has the same norm, and the mean gradient is ~0.
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 2, (sum(SIZES), 16), generator=g) * 2 - 1).double()


def _group_means():
    # Every group pulls in its own direction, as the head and the tail of a fitted model do.
    g = torch.Generator().manual_seed(2)
    groups = _groups()
    means = torch.randn(len(SIZES), 8, generator=g, dtype=torch.float64) * 3
    return torch.randn(len(groups), 8, generator=g, dtype=torch.float64) + means[groups]


@pytest.mark.parametrize("temperature", [2.0, 5.0, 10.0])
def test_variance_ratio_is_f_when_groups_have_equal_moments(temperature):
    out = gradient_variance(_equal_moments(), _groups(), temperature, batch_size=8, num_batches=20000)
    f = scalarization_variance_factor(SIZES, temperature)
    assert out["F"] == pytest.approx(f)
    assert out["moment_spread"] == pytest.approx(1.0)
    assert out["predicted_ratio"] == pytest.approx(f, rel=0.02)
    assert out["measured_ratio"] == pytest.approx(f, rel=0.1)
    assert out["unbiased"] and out["ratio_matches"]


def test_variance_ratio_follows_the_group_moments_when_they_differ():
    g = torch.Generator().manual_seed(1)
    groups = _groups()
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)[groups]  # the tail has larger gradients
    grads = torch.randn(len(groups), 16, generator=g, dtype=torch.float64) * scale[:, None]
    out = gradient_variance(grads, groups, 5.0, batch_size=8, num_batches=20000)
    # Theorem 2 with per-group second moments m_i and a zero mean: sum p^2/q m / sum p m.
    p, q = temperature_probs(SIZES, 5.0), temperature_probs(SIZES, 1.0)
    m = torch.stack([(grads[groups == i] ** 2).sum(1).mean() for i in range(len(SIZES))])
    expected = float((p**2 / q * m).sum() / (p * m).sum())
    assert out["predicted_ratio"] == pytest.approx(expected, rel=0.02)
    assert out["measured_ratio"] == pytest.approx(expected, rel=0.1)
    assert out["moment_spread"] > 30 and expected > 1.5 * out["F"]


def test_both_estimators_are_unbiased():
    out = gradient_variance(_group_means(), _groups(), 5.0, batch_size=16, num_batches=5000)
    assert out["unbiased"] and out["bias_z"] < BIAS_Z_LIMIT and out["bias"] < 0.05


def test_check_b_fails_for_a_sampler_that_ignores_the_temperature(monkeypatch):
    monkeypatch.setattr(paper, "TemperatureSampler", _SamplerIgnoringT)
    # With equal moments the ratio cannot tell: natural draws have the same second moment as upsampled ones.
    equal = gradient_variance(_equal_moments(), _groups(), 5.0, batch_size=8, num_batches=5000)
    assert equal["measured_ratio"] == pytest.approx(equal["F"], rel=0.1)
    # Groups with different mean gradients expose it: the "upsampled" batches estimate the natural gradient.
    skewed = gradient_variance(_group_means(), _groups(), 5.0, batch_size=16, num_batches=5000)
    assert not skewed["unbiased"] and skewed["bias_z"] > 10 * BIAS_Z_LIMIT
    verdict = variance_verdict({"digits": [skewed], "equal_moments": [equal]})
    assert verdict["unbiased"] is False and verdict["holds"] is False


def test_variance_verdict_holds_for_the_package():
    rows = {"digits": [gradient_variance(_group_means(), _groups(), 5.0, batch_size=16, num_batches=5000)],
            "equal_moments": [gradient_variance(_equal_moments(), _groups(), 5.0, batch_size=8, num_batches=5000)]}
    assert variance_verdict(rows)["holds"] is True


def test_per_sample_gradients_match_autograd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    fast = per_sample_gradients(model, x, y)
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        slow = torch.cat([p.grad.flatten() for p in model.parameters()])
        torch.testing.assert_close(fast[i], slow)


def test_independent_groups_share_one_distribution():
    x, y, group = independent_groups(long_tail_counts(2000, 3, 10), num_features=4, seed=0).tensors
    assert torch.bincount(group).tolist() == [2000, 632, 200]
    for i in range(3):
        assert x[group == i].pow(2).sum(1).mean() == pytest.approx(4.0, rel=0.15)


# ------------------------------------------------------------------ (c) and (d) from a comparison
def _run(name, seed, final, reached, tail_losses, head_losses=None):
    head_losses = head_losses or [1.0] * len(tail_losses)
    curve = [{"step": 10 * (i + 1), "loss_tail": t, "loss_head": h}
             for i, (t, h) in enumerate(zip(tail_losses, head_losses, strict=True))]
    low = min(tail_losses)
    return RunResult(name, "T", name, seed, 10 * len(curve), 3200, 1.0, 1, final, reached, low,
                     curve[tail_losses.index(low)]["step"], curve, tail_loss_rise=smoothed_rise(tail_losses))


NOISY = [3.0, 2.0, 1.2, 1.0, 1.1, 0.9, 1.1, 0.9, 1.1, 0.95, 1.05, 0.95, 1.1]  # flat after step 40, with noise
RISING = [1.5, 1.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]


def _finals(head=0.95, tail=0.5, f1_head=None, f1_tail=None):
    return {"recall_head": head, "f1_head": f1_head if f1_head is not None else head, "recall_tail": tail,
            "f1_tail": f1_tail if f1_tail is not None else tail, "loss_tail": 1.0}


def _result(runs):
    return CompareResult({"tail_target": 0.5, "max_steps": 130}, runs, summarize(runs, 0.5))


def _dynamics_runs(upsample_curve, seeds=(0, 1, 2), upsample_reached=(20, 20, 30)):
    runs = []
    for i, seed in enumerate(seeds):
        wiggle = [v + 0.02 * seed * (-1) ** k for k, v in enumerate(NOISY)]
        runs.append(_run("natural", seed, _finals(), 90 + 10 * seed, wiggle))
        curve = [v + 0.01 * seed for v in upsample_curve] if upsample_curve is not NOISY else wiggle
        runs.append(_run("upsample", seed, _finals(), upsample_reached[i], curve))
        runs.append(_run("upweight", seed, _finals(), 60 + 10 * seed, wiggle))
    return runs


def test_tail_dynamics():
    dyn = tail_dynamics(_result(_dynamics_runs(RISING)))
    assert dyn["upsample"]["steps_to_tail_target"] == [20, 20, 30]
    assert dyn["upsample"]["tail_loss_min_step"] == [30, 30, 30]
    assert dyn["faster_than_natural"] is True and dyn["faster_than_upweight"] is True and dyn["faster"] is True
    assert dyn["steps_natural_minus_upsample"]["t_quantile"] == pytest.approx(4.303, abs=1e-3)
    assert dyn["overfits"] is True
    assert dyn["rise_upsample_minus_natural"]["low"] > 0


def test_check_c_fails_when_upsampling_overfits_no_more_than_natural():
    # A sampler that does not upsample: its tail curve is natural's, noisy, and ends above its lowest point.
    runs = _dynamics_runs(NOISY)
    natural = [r for r in runs if r.name == "natural"]
    raw_rise = [r.curve[-1]["loss_tail"] - r.tail_loss_min for r in natural]
    assert all(rise > 0.05 * r.tail_loss_min for rise, r in zip(raw_rise, natural, strict=True))  # the old test fired
    assert tail_dynamics(_result(runs))["overfits"] is False


def test_tail_dynamics_with_one_seed_cannot_judge():
    runs = [r for r in _dynamics_runs(RISING) if r.seed == 0]
    dyn = tail_dynamics(_result(runs))
    assert dyn["overfits"] is None and dyn["faster"] is None


def _cooldown_runs(natural_head, upsample_head, cooldown_head, natural_tail=0.4, upsample_tail=0.7,
                   cooldown_tail=0.7):
    runs = []
    for seed in (0, 1, 2):
        jitter = 0.01 * seed  # a seed effect shared by every strategy: pairing removes it
        runs.append(_run("natural", seed, _finals(natural_head + jitter, natural_tail + jitter), 80, NOISY))
        runs.append(_run("upsample", seed, _finals(upsample_head + jitter + 0.002 * seed, upsample_tail + jitter),
                         20, NOISY))
        runs.append(_run("cooldown", seed, _finals(cooldown_head + jitter - 0.001 * seed, cooldown_tail + jitter),
                         20, NOISY))
    return _result(runs)


def test_cooldown_keeps_the_head_when_upsampling_costs_it():
    check = cooldown_check(_cooldown_runs(natural_head=0.95, upsample_head=0.85, cooldown_head=0.95))
    assert check["keeps_head"] is True and check["keeps_tail"] is True
    head = check["head"]["checks"][0]
    assert head["metric"] == "recall_head" and head["premise_holds"] is True
    assert head["vs_reference"]["pairs"] == 3 and head["vs_reference"]["t_quantile"] == pytest.approx(4.303, abs=1e-3)


def test_cooldown_that_loses_the_head_or_the_tail_does_not_keep_it():
    check = cooldown_check(_cooldown_runs(natural_head=0.95, upsample_head=0.85, cooldown_head=0.85,
                                          cooldown_tail=0.4))
    assert check["keeps_head"] is False and check["keeps_tail"] is False


def test_check_d_cannot_judge_a_head_that_every_strategy_recalls_perfectly():
    # The digits: the head is one class, recognised perfectly by every strategy. "Keeps head" would be vacuous.
    check = cooldown_check(_cooldown_runs(natural_head=1.0, upsample_head=1.0, cooldown_head=1.0))
    assert check["keeps_head"] is None
    assert check["head_reason"] == "the premise does not hold on this data"
    assert check["head"]["checks"][0]["premise_holds"] is False


def test_reproduce_returns_every_check(tmp_path):
    from lightning_balance.experiments.settings import CompareSettings

    settings = CompareSettings(seeds=[0], max_steps=4, val_every=2)
    report = reproduce(settings, num_batches=20, temperatures=(1.0, 5.0), out_dir=tmp_path, progress=False)
    assert report["known_answer"]["holds"] and report["full_batch_holds"]
    assert [r["temperature"] for r in report["full_batch_equivalence"]] == [1.0, 5.0]
    for rows in report["gradient_variance"].values():
        assert [r["F"] for r in rows] == pytest.approx(
            [scalarization_variance_factor(report["group_counts"] if rows is report["gradient_variance"]["digits"]
                                           else long_tail_counts(5000, 10, 100), t) for t in (1.0, 5.0)])
        assert all("bias_z" in r and "unbiased" in r for r in rows)
    assert {"unbiased", "equal_moments_ratio_matches", "holds"} <= set(report["variance_verdict"])
    assert report["group_counts"] == [124, 74, 44, 26, 16, 9, 5, 3, 2, 1]
    assert {"natural", "upsample", "upweight", "faster", "overfits"} <= set(report["tail_dynamics"])
    assert report["tail_dynamics"]["overfits"] is None  # one seed: no interval
    assert {"keeps_head", "keeps_tail"} <= set(report["cooldown"])
    markdown = (tmp_path / "report.md").read_text()
    for section in ("## (a)", "## (b)", "## (c)", "## (d)", "Theorem 1 holds: True", "bias (s.e.)"):
        assert section in markdown
    assert f"{report['gradient_variance']['digits'][1]['measured_ratio']:.3f}" in markdown
    assert "cannot be judged" in report["markdown_summary"]
