"""The pure selection functions behind SALN: keep counts, top-k with NaN scores, numpy scalars, RHO-LOSS scores."""

import math

import numpy as np
import pytest
import torch

from lightning_balance.selection import (
    keep_count,
    learnability_scores,
    reducible_loss_scores,
    resolve_keep,
    select_top_k,
)

# ---------------------------------------------------------------------------------------------- keep_count


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, 4.0, True, "8", None])
def test_keep_count_rejects_batch_sizes_that_are_not_positive_integers(batch_size):
    with pytest.raises(ValueError, match=r"Expected argument `batch_size` to be a positive integer"):
        keep_count(0.5, batch_size)


def test_keep_count_accepts_numpy_scalars():
    assert keep_count(np.float32(0.5), np.int64(64)) == 32
    assert keep_count(np.float64(0.1), np.int32(30)) == 3
    assert isinstance(keep_count(np.float32(0.25), np.int64(8)), int)


def test_numpy_keep_fractions_and_schedules_are_accepted():
    assert resolve_keep(np.float32(0.5), 0.3) == 0.5
    assert resolve_keep(lambda p: np.float32(0.75), 0.3) == 0.75
    with pytest.raises(ValueError, match="`keep`"):
        resolve_keep(np.float32(1.5), 0.0)
    with pytest.raises(ValueError, match="`keep`"):
        resolve_keep(np.bool_(True), 0.0)


# ---------------------------------------------------------------------------------------------- select_top_k


def test_nan_scores_rank_last():
    scores = torch.tensor([math.nan, 0.1, math.nan, -5.0, 0.3])
    assert select_top_k(scores, 2).tolist() == [1, 4]
    assert select_top_k(scores, 3).tolist() == [1, 3, 4]
    # Even below -inf: a NaN score is never preferred over any other.
    assert select_top_k(torch.tensor([math.nan, -math.inf]), 1).tolist() == [1]
    # With a generator too, and along the last dimension of a stack of batches.
    stack = torch.tensor([[math.nan, 1.0, 2.0], [3.0, math.nan, math.nan]])
    gen = torch.Generator().manual_seed(0)
    assert select_top_k(stack, 1, generator=gen).tolist() == [[2], [0]]


def test_nan_scores_rank_last_among_protected_and_unprotected_samples():
    scores = torch.tensor([math.nan, 0.5, math.nan, 0.1])
    protected = torch.tensor([True, True, False, False])
    # Protected samples come first (NaN or not), then the best finite score of the rest.
    assert select_top_k(scores, 1, protected=protected).tolist() == [1]
    assert select_top_k(scores, 3, protected=protected).tolist() == [0, 1, 3]


def test_select_top_k_accepts_numpy_integers_and_rejects_other_k():
    scores = torch.tensor([0.1, 0.9, 0.5])
    assert select_top_k(scores, np.int64(2)).tolist() == [1, 2]
    for k in (1.0, True, 4, -1):
        with pytest.raises(ValueError, match="`k`"):
            select_top_k(scores, k)


# ---------------------------------------------------------------------------------------------- RHO-LOSS


def test_reducible_loss_is_learner_minus_reference_and_the_old_name_warns():
    learner, reference = torch.tensor([2.0, 1.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(reducible_loss_scores(learner, reference), torch.tensor([1.5, 0.0]))
    with pytest.warns(DeprecationWarning, match="reducible_loss_scores"):
        torch.testing.assert_close(learnability_scores(learner, reference), torch.tensor([1.5, 0.0]))
