"""The stateless mixture core against brute-force references."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_balance import Cooldown, LinearRamp, Mixture, temperature_probs
from lightning_balance.permutation import derive_key, permute


# ---------------------------------------------------------------- permutation
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 11, 97, 1009] + [2**k + d for k in range(2, 21, 3) for d in (-1, 0, 1)])
def test_permutation_is_a_bijection(n):
    for key in (0, 1, 12345):
        p = permute(np.arange(n), n, derive_key(key, n))
        assert np.array_equal(np.sort(p), np.arange(n))


@pytest.mark.parametrize("k", [16, 18, 20])
def test_permutation_bijection_at_powers_of_two_plus_one(k):
    # The sizes where a bit width taken from n instead of n - 1 produces a duplicate.
    n = 2**k + 1
    p = permute(np.arange(n), n, derive_key(7))
    assert np.unique(p).size == n and int(p.max()) == n - 1


def test_permutation_keys_per_element_and_large_n():
    n = np.array([5, 5, 7, 7, 7, 7, 7])
    key = derive_key(np.array([1, 1, 2, 2, 2, 2, 2]))
    out = permute(np.array([0, 1, 0, 1, 2, 3, 4]), n, key)
    assert (out < n).all()
    big = 2**40 + 1
    values = permute(np.arange(1000), big, derive_key(3))
    assert (values < big).all() and np.unique(values).size == 1000


def test_permutation_looks_uniform():
    # Where position 0 lands, over many keys, is uniform over [0, n).
    n = 10
    landing = np.array([int(permute(0, n, derive_key(k))[()]) for k in range(5000)])
    counts = np.bincount(landing, minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-3


# ---------------------------------------------------------------- group sequence
def _brute_counts(mix, position):
    return np.bincount(mix.groups(0, position).numpy(), minlength=mix.num_groups)


@pytest.mark.parametrize("temperature", [1.0, 3.3, float("inf")])
def test_counts_agree_with_groups_and_follow_quota(temperature):
    sizes = [5000, 700, 90, 13, 2, 0, 1]
    mix = Mixture(sizes, temperature=temperature, seed=3)
    groups = mix.groups(0, 20000).numpy()
    probs = mix.probs_at(0).numpy()
    assert probs[5] == 0 and (groups != 5).all()
    running = np.zeros(len(sizes), dtype=np.int64)
    for position in [0, 1, 2, 17, 999, 4096, 12345, 20000]:
        running = np.bincount(groups[:position], minlength=len(sizes))
        assert np.array_equal(mix.counts(position).numpy(), running)
        # Stratified: every prefix is within the tree depth of its quota.
        assert np.abs(running - probs * position).max() <= math.ceil(math.log2(len(sizes))) + 1
    np.testing.assert_allclose(probs, temperature_probs(sizes, temperature).numpy(), atol=1e-9)


def test_groups_are_the_same_in_pieces_and_whole():
    mix = Mixture([300, 30, 3], temperature=2.0, seed=1)
    whole = mix.indices(0, 5000)
    pieces = torch.cat([mix.indices(a, b) for a, b in [(0, 1), (1, 999), (999, 1000), (1000, 5000)]])
    assert torch.equal(whole, pieces)


def test_examples_walk_passes_without_repeats():
    sizes = [50, 7, 3]
    mix = Mixture(sizes, temperature=float("inf"), seed=0)
    idx = mix.indices(0, 3000).numpy()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for g, n in enumerate(sizes):
        mine = idx[(idx >= offsets[g]) & (idx < offsets[g + 1])]
        assert len(mine) >= n
        for p in range(len(mine) // n):
            one_pass = mine[p * n : (p + 1) * n]
            assert np.array_equal(np.sort(one_pass), np.arange(offsets[g], offsets[g + 1]))
        # Passes are reshuffled.
    tail = idx[idx >= 57]
    assert not np.array_equal(tail[:3], tail[3:6]) or not np.array_equal(tail[3:6], tail[6:9])


def test_frequencies_match_p_and_reject_a_wrong_temperature():
    sizes = np.array([4000, 1000, 300, 60, 10])
    mix = Mixture(sizes, temperature=4.0, seed=5)
    counts = np.bincount(mix.groups(10**6, 10**6 + 20000).numpy(), minlength=5)
    expected = temperature_probs(sizes, 4.0).numpy() * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    wrong = temperature_probs(sizes, 2.0).numpy() * counts.sum()
    assert stats.chisquare(counts, wrong).pvalue < 1e-6


def test_seek_far_is_exact_and_virtual_sizes_cost_nothing():
    sizes = np.full(100, 10**10, dtype=np.int64)
    sizes[-1] = 17
    mix = Mixture(sizes, temperature=5.0, seed=0)
    position = 10**11 + 12345
    counts = mix.counts(position)
    assert int(counts.sum()) == position
    chunk = mix.groups(position, position + 1000).numpy()
    assert torch.equal(mix.counts(position + 1000) - counts, torch.from_numpy(np.bincount(chunk, minlength=100)))
    idx = mix.indices(position, position + 1000).numpy()
    assert ((idx >= 0) & (idx < mix.total)).all()


def test_block_boundary_is_seamless():
    from lightning_balance import mixture as mixture_module

    mix = Mixture([10**9, 10**9, 3], temperature=1.5, seed=2)
    edge = mixture_module._BLOCK
    around = mix.groups(edge - 500, edge + 500).numpy()
    assert np.array_equal(np.bincount(around, minlength=3), (mix.counts(edge + 500) - mix.counts(edge - 500)).numpy())


# ---------------------------------------------------------------- schedules
def test_cooldown_switches_on_its_exact_step():
    mix = Mixture([900, 90, 10], temperature=Cooldown(5.0, 1.0, 0.5), seed=0, step_size=8, total_steps=101)
    assert mix.segments == [(0, 5.0), (51, 1.0)]
    assert mix.temperature_at(50) == 5.0 and mix.temperature_at(51) == 1.0
    before = mix.groups(0, 51 * 8).numpy()
    after = mix.groups(51 * 8, 51 * 8 + 4000).numpy()
    assert (before == 2).mean() > 0.15 and abs((after == 2).mean() - 0.01) < 0.005


def test_a_one_step_excursion_is_sampled_at_its_temperature():
    def excursion(progress):
        return float("inf") if 0.5 <= progress < 0.5 + 1 / 100_000 else 1.0

    mix = Mixture([10**6, 10], temperature=excursion, seed=0, step_size=100, total_steps=100_000)
    assert mix.temperature_at(50_000) == float("inf") and mix.temperature_at(50_001) == 1.0
    assert (mix.groups(50_000 * 100, 50_001 * 100).numpy() == 1).sum() == 50
    assert (mix.groups(50_001 * 100, 50_002 * 100).numpy() == 1).sum() <= 1


def test_a_temperature_change_loses_and_repeats_nothing():
    sizes = [40, 30, 20]
    mix = Mixture(sizes, temperature=LinearRamp(10.0, 1.0), seed=4, step_size=3, total_steps=30)
    idx = mix.indices(0, 90).numpy()
    # 90 draws of 90 examples under any mixture: a group is never re-walked before it is exhausted.
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for g, n in enumerate(sizes):
        mine = idx[(idx >= offsets[g]) & (idx < offsets[g + 1])]
        assert len(np.unique(mine[:n])) == min(len(mine), n)


def test_epoch_order_is_a_permutation_per_epoch():
    mix = Mixture([70, 20, 10], order="epoch", seed=1)
    for epoch in range(3):
        idx = mix.indices(epoch * 100, (epoch + 1) * 100).numpy()
        assert np.array_equal(np.sort(idx), np.arange(100))
    assert not torch.equal(mix.indices(0, 100), mix.indices(100, 200))
    assert mix.counts(250).tolist() == [int(v) for v in np.bincount(mix.groups(0, 250).numpy(), minlength=3)]
    assert mix.counts(200).tolist() == [140, 40, 20]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sizes=[]), "non-empty"),
        (dict(sizes=[3, -1]), "non-negative"),
        (dict(sizes=[0, 0]), "at least one non-empty"),
        (dict(sizes=[1.5, 2]), "whole numbers"),
        (dict(sizes=[[1, 2]]), "1-D"),
        (dict(sizes=[3, 4], temperature=0.0), "> 0"),
        (dict(sizes=[3, 4], temperature=Cooldown()), "total_steps"),
        (dict(sizes=[3, 4], temperature=Cooldown, total_steps=3), "Instantiate"),
        (dict(sizes=[3, 4], temperature=lambda: 1.0, total_steps=3), "one argument"),
        (dict(sizes=[3, 4], temperature=lambda p: -1.0, total_steps=3), "must return"),
        (dict(sizes=[3, 4], order="random"), "order"),
        (dict(sizes=[3, 4], temperature=2.0, order="epoch"), "temperature 1"),
        (dict(sizes=[3, 4], seed=-1), "seed"),
        (dict(sizes=[3, 4], step_size=0), "step_size"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Mixture(**kwargs)


def test_bad_positions_are_named():
    mix = Mixture([3, 4], num_samples=100)
    with pytest.raises(ValueError, match="start"):
        mix.indices(-1, 3)
    with pytest.raises(ValueError, match="stop"):
        mix.indices(0, 101)
    with pytest.raises(ValueError, match="start <= stop"):
        mix.indices(5, 3)


# ---------------------------------------------------------------- order="iid"
def test_iid_counts_agree_with_groups_across_blocks():
    sizes = [5000, 700, 90, 13, 2, 0, 1]
    mix = Mixture(sizes, temperature=3.0, seed=1, order="iid")
    groups = mix.groups(0, 140_000).numpy()
    assert (groups != 5).all()
    for position in [0, 1, 65_535, 65_536, 70_001, 131_072, 140_000]:
        assert np.array_equal(mix.counts(position).numpy(), np.bincount(groups[:position], minlength=len(sizes)))
    assert torch.equal(mix.indices(65_000, 66_000), mix.indices(0, 140_000)[65_000:66_000])


def test_iid_has_multinomial_variance_and_the_right_frequencies():
    sizes = np.array([4000, 1000, 300, 60, 10])
    mix = Mixture(sizes, temperature=4.0, seed=5, order="iid")
    groups = mix.groups(0, 200_000).numpy()
    p = temperature_probs(sizes, 4.0).numpy()
    counts = np.bincount(groups, minlength=5)
    assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-3
    assert stats.chisquare(counts, temperature_probs(sizes, 2.0).numpy() * counts.sum()).pvalue < 1e-6
    # Counts in windows of 1000 vary as a binomial's (a stratified order would be nearly constant).
    per_window = (groups.reshape(200, 1000) == 2).sum(1)
    expected = 1000 * p[2] * (1 - p[2])
    assert 0.6 * expected < per_window.var() < 1.5 * expected
    stratified = Mixture(sizes, temperature=4.0, seed=5).groups(0, 200_000).numpy()
    assert (stratified.reshape(200, 1000) == 2).sum(1).var() < 0.1 * expected


def test_iid_seek_far_and_segments():
    mix = Mixture(np.full(10, 10**10), temperature=Cooldown(5.0, 1.0, 0.5), seed=0, order="iid",
                  step_size=10**6, total_steps=10**5)
    position = 6 * 10**10 + 77
    counts = mix.counts(position)
    assert int(counts.sum()) == position
    chunk = mix.groups(position, position + 5000).numpy()
    assert torch.equal(mix.counts(position + 5000) - counts, torch.from_numpy(np.bincount(chunk, minlength=10)))


# ---------------------------------------------------------------- changes during training
@pytest.mark.parametrize("order", ["stratified", "iid"])
def test_with_probs_keeps_the_past_and_loses_nothing(order):
    sizes = [400, 40, 4]
    mix = Mixture(sizes, temperature=1.0, seed=3, order=order)
    changed = mix.with_probs(1000, [0.2, 0.4, 0.4]).with_probs(3000, [0.6, 0.2, 0.2])
    assert torch.equal(changed.indices(0, 1000), mix.indices(0, 1000))
    np.testing.assert_allclose(changed.probs_at_position(2000).numpy(), [0.2, 0.4, 0.4], atol=1e-8)
    np.testing.assert_allclose(changed.probs_at_position(5000).numpy(), [0.6, 0.2, 0.2], atol=1e-8)
    counts = changed.counts(3000) - changed.counts(1000)
    assert abs(int(counts[1]) - 800) <= (3 if order == "stratified" else 120)
    # A change later in the stream leaves everything before it alone.
    assert torch.equal(changed.indices(0, 3000), mix.with_probs(1000, [0.2, 0.4, 0.4]).indices(0, 3000))
    # Each group keeps walking its passes: the first 40 draws of group 1 after the change are its 40 examples.
    idx = changed.indices(0, 6000).numpy()
    g1 = idx[(idx >= 400) & (idx < 440)]
    for p in range(len(g1) // 40):
        assert np.array_equal(np.sort(g1[p * 40 : (p + 1) * 40]), np.arange(400, 440))
    assert changed.config()["adaptations"][0][0] == 1000
    with pytest.raises(ValueError, match="probs"):
        mix.with_probs(10, [1.0, -1.0, 0.0])
