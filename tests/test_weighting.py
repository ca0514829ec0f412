"""weighted_mean: the one reduction every strategy's loss goes through, and the weights it refuses."""

import math

import numpy as np
import pytest
import torch

from lightning_balance.weighting import weighted_mean


def test_matches_a_hand_written_reduction():
    losses, weights = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 1.0, 3.0])
    assert weighted_mean(losses, weights).item() == pytest.approx((2.0 + 12.0) / 3)
    assert weighted_mean(losses, weights, normalize="weights").item() == pytest.approx(14.0 / 4)


def test_zero_weights_are_allowed():
    assert weighted_mean(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert weighted_mean(torch.ones(3), torch.zeros(3), normalize="weights").item() == 0.0


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("normalize", ["batch", "weights"])
def test_negative_or_non_finite_weights_are_rejected(bad, normalize):
    weights = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(ValueError, match=r"Expected argument `weights` to be finite and non-negative.*1 of 3"):
        weighted_mean(torch.ones(3), weights, normalize=normalize)


def test_weights_are_checked_on_their_own_device_before_the_move():
    # Integer weights (e.g. counts) are fine; a negative one is not, whatever the dtype.
    assert weighted_mean(torch.ones(2, dtype=torch.float64), torch.tensor([1, 1])).item() == 1.0
    with pytest.raises(ValueError, match="`weights`"):
        weighted_mean(torch.ones(2), torch.from_numpy(np.array([1, -1])))


def test_unknown_normalization():
    with pytest.raises(ValueError, match="`normalize`.*'mean'"):
        weighted_mean(torch.ones(2), torch.ones(2), normalize="mean")  # type: ignore[arg-type]
