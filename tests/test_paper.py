"""The paper checks against their formulas: Theorem 1, Theorem 2 / F(T), tail dynamics and Cooldown verdicts."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_balance import scalarization_variance_factor, temperature_probs
from lightning_balance.compare import CompareResult, CompareSettings, RunResult, summarize
from lightning_balance.datasets import independent_groups, long_tail_counts
from lightning_balance.paper import (
    cooldown_check,
    digits_training_set,
    full_batch_equivalence,
    gradient_variance,
    per_sample_gradients,
    reproduce,
    tail_dynamics,
)


# ------------------------------------------------------------------ (a) Theorem 1
@pytest.mark.parametrize("temperature", [2.0, 5.0, 10.0])
def test_full_batch_gd_gives_the_same_parameters(temperature):
    x, y = digits_training_set()
    out = full_batch_equivalence(x, y, temperature, steps=10)
    assert out["max_abs_diff"] < 1e-6  # in fact float64 rounding, ~1e-15
    assert out["objective_upsample"] == pytest.approx(out["objective_upweight"], abs=1e-12)
    # ... while the natural objective goes elsewhere: the check is not vacuous
    assert out["max_abs_diff_natural"] > 1e-2 and out["max_abs_update"] > 1e-2


def test_full_batch_gd_at_temperature_one_is_natural():
    x, y = digits_training_set()
    out = full_batch_equivalence(x, y, 1.0, steps=3)
    assert out["max_abs_diff"] < 1e-12 and out["max_abs_diff_natural"] < 1e-12


# ------------------------------------------------------------------ (b) Theorem 2
SIZES = [4000, 800, 160, 32]


def _groups():
    return torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))


@pytest.mark.parametrize("temperature", [2.0, 5.0, 10.0])
def test_variance_ratio_is_f_when_groups_have_equal_moments(temperature):
    # Random signs: every per-sample gradient has the same norm, and the mean gradient is ~0.
    g = torch.Generator().manual_seed(0)
    grads = (torch.randint(0, 2, (sum(SIZES), 16), generator=g) * 2 - 1).double()
    out = gradient_variance(grads, _groups(), temperature, batch_size=8, num_batches=20000)
    f = scalarization_variance_factor(SIZES, temperature)
    assert out["F"] == pytest.approx(f)
    assert out["moment_spread"] == pytest.approx(1.0)
    assert out["predicted_ratio"] == pytest.approx(f, rel=0.02)
    assert out["measured_ratio"] == pytest.approx(f, rel=0.1)


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
    grads = torch.randn(sum(SIZES), 4, dtype=torch.float64) + 1.0  # a mean gradient far from 0
    out = gradient_variance(grads, _groups(), 5.0, batch_size=16, num_batches=5000)
    assert out["bias"] < 0.05


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
def _run(name, seed, final, reached, curve):
    tail_losses = [p["loss_tail"] for p in curve]
    low = min(tail_losses)
    return RunResult(name, "T", "upsample", seed, 100, 3200, 1.0, 1, final, reached, low,
                     curve[tail_losses.index(low)]["step"], curve)


def _curve(tail_losses, head_losses):
    pairs = enumerate(zip(tail_losses, head_losses, strict=True))
    return [{"step": 10 * (i + 1), "loss_tail": t, "loss_head": h} for i, (t, h) in pairs]


def _result(cooldown_tail=0.70):
    runs = []
    for seed in (0, 1):
        runs.append(_run("natural", seed, {"recall_head": 0.95, "f1_head": 0.9, "recall_tail": 0.4, "f1_tail": 0.4,
                                           "loss_tail": 2.0}, 80, _curve([3, 2.5, 2.0], [1, 0.5, 0.4])))
        runs.append(_run("upsample", seed, {"recall_head": 0.90 + 0.01 * seed, "f1_head": 0.85, "recall_tail": 0.7,
                                            "f1_tail": 0.7, "loss_tail": 1.5}, 20,
                         _curve([1.2, 1.0, 1.5], [1, 0.6, 0.5])))
        runs.append(_run("upweight", seed, {"recall_head": 0.9, "f1_head": 0.85, "recall_tail": 0.7, "f1_tail": 0.7,
                                            "loss_tail": 1.1}, 30, _curve([1.5, 1.0, 1.1], [1, 0.6, 0.5])))
        runs.append(_run("cooldown", seed, {"recall_head": 0.95 + 0.01 * seed, "f1_head": 0.9,
                                            "recall_tail": cooldown_tail + 0.01 * seed, "f1_tail": 0.7,
                                            "loss_tail": 1.0}, 20, _curve([1.2, 1.0, 1.0], [1, 0.5, 0.4])))
    settings = {"tail_target": 0.5}
    return CompareResult(settings, runs, summarize(runs, 0.5))


def test_tail_dynamics():
    dyn = tail_dynamics(_result())
    assert dyn["upsample"]["steps_to_tail_target"] == [20, 20]
    assert dyn["upsample"]["tail_loss_min_step"] == [20, 20]
    assert dyn["upsample"]["head_loss_min_step"] == [30, 30]
    assert dyn["upsample"]["tail_loss_rise"] == [0.5, 0.5]
    assert dyn["faster"] is True and dyn["overfits"] is True
    # upweight rose by 0.1 from 1.0: more than 5%, but it is upsampling the check is about
    assert dyn["upweight"]["tail_loss_rise"] == pytest.approx([0.1, 0.1])


def test_tail_dynamics_without_a_rise_is_not_overfitting():
    result = _result()
    for run in result.runs:
        if run.name == "upsample":
            run.final["loss_tail"] = run.tail_loss_min * 1.01  # a 1% wiggle
    assert tail_dynamics(result)["overfits"] is False


def test_cooldown_check():
    keeps = cooldown_check(_result(cooldown_tail=0.70))
    assert keeps["keeps_head"] is True and keeps["keeps_tail"] is True
    head = keeps["head_vs_natural"][0]
    assert head["metric"] == "recall_head" and head["difference"] == pytest.approx(0.005)
    loses = cooldown_check(_result(cooldown_tail=0.5))
    assert loses["keeps_tail"] is False
    tail = loses["tail_vs_upsample"][0]
    assert tail["difference"] == pytest.approx(-0.195)
    assert tail["standard_error"] == pytest.approx(math.sqrt(0.01**2 / 2 / 2))


def test_reproduce_returns_every_check(tmp_path):
    settings = CompareSettings(seeds=[0], max_steps=4, val_every=2)
    report = reproduce(settings, num_batches=20, temperatures=(1.0, 5.0), out_dir=tmp_path, progress=False)
    assert [r["temperature"] for r in report["full_batch_equivalence"]] == [1.0, 5.0]
    assert all(r["max_abs_diff"] < 1e-6 for r in report["full_batch_equivalence"])
    for rows in report["gradient_variance"].values():
        assert [r["F"] for r in rows] == pytest.approx(
            [scalarization_variance_factor(report["group_counts"] if rows is report["gradient_variance"]["digits"]
                                           else long_tail_counts(5000, 10, 100), t) for t in (1.0, 5.0)])
    assert report["group_counts"] == [124, 74, 44, 26, 16, 9, 5, 3, 2, 1]
    assert {"natural", "upsample", "upweight", "faster", "overfits"} <= set(report["tail_dynamics"])
    assert {"keeps_head", "keeps_tail"} <= set(report["cooldown"])
    markdown = (tmp_path / "report.md").read_text()
    for section in ("## (a)", "## (b)", "## (c)", "## (d)"):
        assert section in markdown
    assert f"{report['gradient_variance']['digits'][1]['measured_ratio']:.3f}" in markdown
