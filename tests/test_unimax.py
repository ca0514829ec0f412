"""UniMax against a hand-written reference of Chung et al.'s allocation."""

import numpy as np
import pytest
import torch

from lightning_balance import Mixture, unimax_probs


def _reference(sizes, budget, cap):
    # Smallest first: each takes min(equal share of what is left, cap * n).
    alloc = {}
    left = float(budget)
    order = sorted((n, g) for g, n in enumerate(sizes) if n > 0)
    for i, (n, g) in enumerate(order):
        alloc[g] = min(left / (len(order) - i), cap * n)
        left -= alloc[g]
    total = sum(alloc.values())
    return np.array([alloc.get(g, 0.0) / total for g in range(len(sizes))])


@pytest.mark.parametrize("sizes,budget,cap", [
    ([900, 90, 10], 300, 1.0),
    ([900, 90, 10], 300, 100.0),
    ([5, 0, 50, 500, 5000], 2000, 2.0),
    ([3, 3, 3], 10**6, 1.0),  # every group capped: equal epochs, i.e. natural proportions
    ([10**9, 10**6, 10**3], 10**8, 4.0),
])
def test_unimax_matches_the_reference(sizes, budget, cap):
    np.testing.assert_allclose(unimax_probs(sizes, budget, cap).numpy(), _reference(sizes, budget, cap), rtol=1e-12)


def test_unimax_caps_epochs_in_a_mixture():
    sizes = [5000, 500, 20]
    budget = 3000
    mix = Mixture(sizes, probs=unimax_probs(sizes, budget, max_epochs=2.0), seed=0)
    epochs = mix.epochs(budget)
    assert float(epochs[2]) <= 2.0 + 0.1
    assert abs(int(mix.counts(budget)[1]) - 1000) <= 3  # uniform share of what the tail left


@pytest.mark.parametrize("kwargs,match", [
    (dict(budget=0), "budget"),
    (dict(budget=10, max_epochs=-1), "max_epochs"),
    (dict(budget=float("nan")), "budget"),
])
def test_unimax_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unimax_probs([3, 4], **kwargs)


def test_mixture_probs_bad_input():
    with pytest.raises(ValueError, match="probs"):
        Mixture([3, 4], probs=[1.0])
    with pytest.raises(ValueError, match="empty group"):
        Mixture([3, 0], probs=[0.5, 0.5])
    assert torch.allclose(Mixture([3, 4], probs=[1, 3]).probs_at(0), torch.tensor([0.25, 0.75], dtype=torch.float64),
                          atol=1e-9)


def test_unimax_strategy_in_the_datamodule():
    from tests.helpers import RecordIndices, ToyData, ToyModel, trainer

    dm = ToyData(strategy="unimax", batch_size=8, max_group_epochs=1.0, samples_per_epoch=160)
    recorder = RecordIndices()
    trainer(max_steps=40, callbacks=[recorder]).fit(ToyModel(), dm)
    y = dm.train_dataset.tensors[1]
    drawn = np.bincount(np.concatenate([y[s].numpy() for s in recorder.steps]), minlength=4)
    # 320 samples, sizes 300/60/12/4: the two tails capped at one pass, the rest shared equally.
    assert drawn[3] == 4 and drawn[2] == 12
    assert abs(drawn[1] - 60) <= 2 and abs(drawn[0] - 244) <= 2
    assert np.allclose(dm.epochs_per_group().numpy()[2:], 1.0)
