import math

import numpy as np
import pytest
import torch

from lightning_balance import scalarization_variance_factor, scalarization_weights, temperature_probs


def _brute_probs(counts, t):
    """Direct formula p_i = n_i^(1/T) / sum_j n_j^(1/T), written independently in numpy."""
    n = np.asarray(counts, dtype=np.float64)
    powered = np.where(n > 0, n ** (1.0 / t), 0.0)
    return powered / powered.sum()


@pytest.mark.parametrize("t", [0.5, 1.0, 3.33, 5.0, 100.0])
@pytest.mark.parametrize("counts", [[900, 90, 10], [1, 1, 1, 1], [10**7, 3, 0, 55], [2.5, 0.5]])
def test_temperature_probs_matches_formula(counts, t):
    expected = _brute_probs(counts, t)
    got = temperature_probs(counts, t)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert math.isclose(float(got.sum()), 1.0, rel_tol=1e-12)


def test_infinite_temperature_is_uniform_over_nonempty_groups():
    got = temperature_probs(torch.tensor([5, 0, 1000, 7]), float("inf"))
    np.testing.assert_allclose(got.numpy(), [1 / 3, 0, 1 / 3, 1 / 3])


def test_temperature_one_is_proportional():
    counts = np.array([40, 0, 60])
    np.testing.assert_allclose(temperature_probs(counts, 1.0).numpy(), counts / 100)


def test_tiny_temperature_does_not_overflow():
    # n ** (1/T) = 1e7 ** 100 overflows float64; the log-space computation must still be exact.
    got = temperature_probs([10**7, 10**6], 0.01)
    assert torch.isfinite(got).all()
    assert got[0] == pytest.approx(1.0)


def test_probs_flatten_monotonically_with_temperature():
    counts = [1000, 100, 10, 1]
    tails = [float(temperature_probs(counts, t)[-1]) for t in (1, 2, 5, 10, 100)]
    assert tails == sorted(tails)


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0, float("inf")])
def test_scalarization_weights_reweight_natural_to_temperature(t):
    counts = np.array([5000, 300, 20, 0, 1])
    natural = counts / counts.sum()
    weights = scalarization_weights(counts, t).numpy()
    # w_i * p_i(1) = p_i(T): reweighted natural sampling is temperature sampling.
    np.testing.assert_allclose(weights * natural, temperature_probs(counts, t).numpy(), atol=1e-15)
    # Mean weight under natural sampling is exactly 1 (the unbiasedness condition).
    assert float((weights * natural).sum()) == pytest.approx(1.0)
    assert weights[3] == 0.0  # the empty group is never drawn


def test_weights_match_paper_closed_form():
    # w_i = (sum_j n_j / n_i) * p_i(T)
    counts = np.array([800, 150, 50])
    p = _brute_probs(counts, 5.0)
    np.testing.assert_allclose(scalarization_weights(counts, 5.0).numpy(), counts.sum() / counts * p)


def test_variance_factor():
    counts = [900, 90, 10]
    assert scalarization_variance_factor(counts, 1.0) == pytest.approx(1.0)
    values = [scalarization_variance_factor(counts, t) for t in (1, 2, 5, 10, float("inf"))]
    assert values == sorted(values) and values[0] >= 1 - 1e-12
    # F(inf) = (1/K^2) * sum_i 1/p_i(1)
    p1 = np.array(counts) / sum(counts)
    assert values[-1] == pytest.approx((1 / p1).sum() / 9)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), -float("inf")])
def test_invalid_temperature(bad):
    with pytest.raises(ValueError, match="`temperature` to be > 0"):
        temperature_probs([1, 2], bad)


def test_non_numeric_temperature():
    with pytest.raises(TypeError, match="`temperature`"):
        temperature_probs([1, 2], "5")


def test_negative_counts():
    with pytest.raises(ValueError, match=r"groups \[1\] have negative counts"):
        temperature_probs([3, -1, 2], 2.0)


def test_all_groups_empty():
    with pytest.raises(ValueError, match="at least one non-empty group"):
        scalarization_weights([0, 0, 0], 2.0)


@pytest.mark.parametrize("bad", [[], [[1, 2], [3, 4]]])
def test_counts_shape(bad):
    with pytest.raises(ValueError, match="1-D"):
        temperature_probs(bad, 1.0)


def test_non_finite_counts():
    with pytest.raises(ValueError, match="finite"):
        temperature_probs([1.0, float("inf")], 1.0)


def test_subnormal_temperature_is_a_one_hot_on_the_largest_group():
    np.testing.assert_array_equal(temperature_probs([10, 5, 10, 0], 1e-310).numpy(), [0.5, 0.0, 0.5, 0.0])
