import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lightning_balance import Cooldown, GroupIndex, LinearRamp, TemperatureSampler, temperature_probs


def _groups(sizes, seed=0):
    """Group ids with the given sizes, shuffled so that groups are not contiguous in the dataset."""
    ids = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(ids)


def _stream(sampler, start, stop):
    """Global dataset indices at positions ``[start, stop)`` of a sampler's stream, the same on every rank."""
    return sampler._indices(start, stop).tolist()


SIZES = [5000, 500, 50, 5]


def test_group_index_matches_brute_force():
    groups = _groups([7, 0, 3, 12])
    index = GroupIndex(groups)
    assert index.counts.tolist() == [7, 0, 3, 12]
    for g in range(4):
        assert index.members(g).tolist() == np.flatnonzero(groups == g).tolist()


@pytest.mark.parametrize("num_samples", [1000, 1001, 7])
@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_world_size_invariance(num_samples, replicas):
    groups = _groups(SIZES)
    single = list(TemperatureSampler(groups, 5.0, num_samples=num_samples, seed=3, num_replicas=1, rank=0))
    ranks = [list(TemperatureSampler(groups, 5.0, num_samples=num_samples, seed=3, num_replicas=replicas, rank=r))
             for r in range(replicas)]
    assert len({len(r) for r in ranks}) == 1  # every rank yields the same count
    per_rank = -(-num_samples // replicas)
    assert len(ranks[0]) == per_rank
    interleaved = [ranks[r][i] for i in range(per_rank) for r in range(replicas)]
    assert interleaved[:num_samples] == single
    # Padding continues the stream: rank r takes global[r::R] of ceil(num_samples / R) * R positions.
    longer = TemperatureSampler(groups, 5.0, num_samples=per_rank * replicas, seed=3)
    assert interleaved == list(longer) == _stream(longer, 0, per_rank * replicas)


def test_drop_last_trims_instead_of_padding():
    groups = _groups(SIZES)
    single = list(TemperatureSampler(groups, 2.0, num_samples=1001, seed=1))
    ranks = [list(TemperatureSampler(groups, 2.0, num_samples=1001, seed=1, num_replicas=2, rank=r, drop_last=True))
             for r in range(2)]
    assert [len(r) for r in ranks] == [500, 500]
    assert [ranks[r][i] for i in range(500) for r in range(2)] == single[:1000]


def test_deterministic_per_seed_and_epoch():
    groups = _groups(SIZES)
    a = TemperatureSampler(groups, 5.0, seed=7)
    b = TemperatureSampler(groups, 5.0, seed=7)
    first = list(a)
    assert first == list(b)
    c = TemperatureSampler(groups, 5.0, seed=8)
    assert first != list(c)
    second = list(a)  # without set_epoch, the next iteration continues the stream
    assert second != first and second == a.epoch_plan(1).tolist()
    a.set_epoch(1)
    assert list(a) == second
    a.set_epoch(0)
    assert list(a) == first


@pytest.mark.parametrize("t", [1.0, 3.33, 5.0, float("inf")])
def test_group_frequencies_follow_temperature_probs(t):
    groups = _groups(SIZES)
    sampler = TemperatureSampler(groups, t, num_samples=200_000, seed=11)
    drawn = np.bincount(groups[sampler.epoch_plan(0).numpy()], minlength=len(SIZES))
    expected = temperature_probs(SIZES, t).numpy() * drawn.sum()
    assert chisquare(drawn, expected).pvalue > 1e-3
    # The same counts are clearly inconsistent with a different temperature: the test has power.
    wrong = temperature_probs(SIZES, t * 2 if t < 100 else 1.0).numpy() * drawn.sum()
    assert chisquare(drawn, wrong).pvalue < 1e-6


@pytest.mark.parametrize("sizes", [SIZES, [7, 3, 1000, 2, 2, 9, 40], [10**6, 1], [3]])
@pytest.mark.parametrize("t", [1.0, 2.0, 5.0, float("inf")])
def test_every_prefix_is_within_a_few_draws_of_its_quota(sizes, t):
    # The stratified order keeps each group's count in every prefix of the stream within the tree depth of
    # k * p_g: far tighter than i.i.d. draws, whose deviation grows like sqrt(k).
    groups = _groups(sizes)
    k = len(sizes)
    bound = math.ceil(math.log2(k)) + 1
    for seed in (0, 1):
        sampler = TemperatureSampler(groups, t, seed=seed)
        probs = sampler.probs(0).numpy()
        np.testing.assert_allclose(probs, temperature_probs(sizes, t).numpy(), atol=1e-8)
        drawn = groups[np.asarray(_stream(sampler, 0, 20_000))]
        cumulative = np.cumsum(np.eye(k, dtype=np.int64)[drawn], axis=0)
        quota = np.arange(1, len(drawn) + 1)[:, None] * probs
        assert np.abs(cumulative - quota).max() <= bound, (seed, np.abs(cumulative - quota).max())


def test_iid_draws_would_fail_the_prefix_property():
    # Sanity check of the bound used above: multinomial draws stray by about sqrt(k p (1 - p)).
    rng = np.random.default_rng(0)
    p = temperature_probs(SIZES, 5.0).numpy()
    drawn = rng.choice(len(p), size=20_000, p=p)
    cumulative = np.cumsum(np.eye(len(p), dtype=np.int64)[drawn], axis=0)
    assert np.abs(cumulative - np.arange(1, 20_001)[:, None] * p).max() > math.ceil(math.log2(len(p))) + 1


def test_groups_walk_through_permutations_within_and_across_epochs():
    groups = _groups(SIZES)
    sampler = TemperatureSampler(groups, 5.0, num_samples=3000, seed=5)
    seen = np.zeros(len(groups), dtype=np.int64)
    for epoch in range(6):
        np.add.at(seen, sampler.epoch_plan(epoch).numpy(), 1)
        # Within every group, no example is drawn twice before all of its group has been drawn once:
        # cumulative multiplicities differ by at most one. Drawing with replacement breaks this at once.
        for g in range(len(SIZES)):
            members = seen[groups == g]
            assert members.max() - members.min() <= 1, (epoch, g)
    # The tail group (5 examples) is upsampled far beyond its size. The head group is drawn about 1.6 times
    # its size in total, and every one of its examples has been seen: draws with replacement would have
    # left about e^-1.6 = 20% of them unseen.
    assert seen[groups == 3].min() > 10
    assert seen[groups == 0].min() == 1 and seen[groups == 0].max() == 2


def test_with_replacement_would_fail_the_walk_property():
    # Sanity check of the property used above: i.i.d. draws inside a group violate it.
    rng = np.random.default_rng(0)
    draws = np.bincount(rng.integers(0, 5, size=200), minlength=5)
    assert draws.max() - draws.min() > 1


def test_beyond_2_to_the_24_examples():
    n = 2**24 + 1000
    groups = np.zeros(n, dtype=np.int8)
    groups[-3:] = 1  # a tiny group at indices above 2^24
    sampler = TemperatureSampler(groups, float("inf"), num_samples=4000, seed=0)
    plan = sampler.epoch_plan(0)
    assert plan.max().item() >= 2**24
    tail = plan[plan >= n - 3]
    assert 1997 <= len(tail) <= 2003  # half of the draws go to the tail at T = inf, within a draw or two
    assert sorted(set(tail.tolist())) == [n - 3, n - 2, n - 1]


@pytest.mark.parametrize("step", [1, 3, 100])
def test_cooldown_switches_on_its_exact_optimizer_step(step):
    groups = _groups(SIZES)
    total_steps = 200_000 // step
    m = total_steps * step
    sampler = TemperatureSampler(groups, Cooldown(float("inf"), 1.0, 0.5), num_samples=m, step_size=step,
                                 total_steps=total_steps, seed=4)
    switch = total_steps // 2
    assert sampler.mixture.segments == [(0, float("inf")), (switch, 1.0)]
    assert sampler.mixture.temperature_at(switch - 1) == float("inf")
    assert sampler.mixture.temperature_at(switch) == 1.0
    assert sampler.mixture.step_of(switch * step - 1) == switch - 1 and sampler.mixture.step_of(switch * step) == switch
    plan_groups = groups[sampler.epoch_plan(0).numpy()]
    first, second = plan_groups[: switch * step], plan_groups[switch * step:]
    for part, t in ((first, float("inf")), (second, 1.0)):
        drawn = np.bincount(part, minlength=4)
        assert chisquare(drawn, temperature_probs(SIZES, t).numpy() * len(part)).pvalue > 1e-3
    # The last 1000 samples before the switch are uniform over groups, the first 1000 after it natural.
    tail = plan_groups == 3
    assert tail[switch * step - 1000 : switch * step].sum() >= 245
    assert tail[switch * step : switch * step + 1000].sum() <= 3


def test_switch_in_the_last_steps_of_a_run():
    m = 200_000
    sampler = TemperatureSampler([0, 1], Cooldown(float("inf"), 1.0, 199_950 / m), num_samples=m, total_steps=m)
    assert sampler.mixture.segments == [(0, float("inf")), (199_950, 1.0)]


def test_schedule_progress_runs_across_epochs():
    groups = _groups(SIZES)
    sampler = TemperatureSampler(groups, Cooldown(float("inf"), 1.0, 0.5), num_samples=10_000, total_samples=40_000,
                                 step_size=10)
    tail_share = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        tail_share.append(float((groups[np.array(list(sampler))] == 3).mean()))
    assert tail_share[0] > 0.2 and tail_share[1] > 0.2
    assert tail_share[2] < 0.01 and tail_share[3] < 0.01


def test_schedule_needs_total_steps():
    with pytest.raises(ValueError, match="pass `total_steps=`"):
        TemperatureSampler(_groups(SIZES), Cooldown(), num_samples=100)


class _Steps:
    """A piecewise-constant schedule with the given switch points (fractions of training)."""

    def __init__(self, switches, values):
        self.switches, self.values = switches, values

    def __call__(self, progress):
        return self.values[sum(progress >= s for s in self.switches)]


def _per_step_runs(schedule, total_steps):
    """The schedule called at every step, merged into (first step, temperature) runs: the reference."""
    runs = []
    for step in range(total_steps + 1):
        t = schedule(min(step / total_steps, 1.0))
        if not runs or runs[-1][1] != t:
            runs.append((step, t))
    return runs


@pytest.mark.parametrize("seed", range(8))
def test_segments_match_per_step_evaluation(seed):
    rng = np.random.default_rng(seed)
    total_steps = int(rng.integers(2000, 6000))
    step_size = int(rng.integers(1, 4))
    # Up to two switches close together, down to a single step apart.
    first = rng.uniform(0.0, 1.0)
    switches = sorted({first, min(first + rng.uniform(0, 0.003), 0.9999)})
    schedule = _Steps(switches, [5.0, 2.0, 1.0][: len(switches) + 1])
    sampler = TemperatureSampler(np.arange(40) % 4, schedule, num_samples=total_steps * step_size // 2,
                                 step_size=step_size, total_steps=total_steps)
    runs = _per_step_runs(schedule, total_steps)
    assert sampler.mixture.segments == runs
    for (start, t), nxt in zip(runs, runs[1:] + [(total_steps + 1, None)], strict=True):
        assert sampler.mixture.temperature_at(start) == t == sampler.mixture.temperature_at(nxt[0] - 1)


def test_smooth_schedule_is_evaluated_at_every_step():
    total_steps = 3000
    schedule = LinearRamp(10.0, 1.0)
    sampler = TemperatureSampler(np.arange(40) % 4, schedule, step_size=2, total_steps=total_steps)
    assert sampler.mixture.segments == _per_step_runs(schedule, total_steps)
    temperatures = [t for _, t in sampler.mixture.segments]
    assert temperatures == sorted(temperatures, reverse=True) and temperatures[0] == 10.0 and temperatures[-1] == 1.0


@pytest.mark.parametrize("replicas_after", [2, 4, 1, 3])
def test_resume_mid_epoch_continues_the_stream(replicas_after):
    groups = _groups(SIZES)
    kwargs = dict(num_samples=1000, seed=9)
    full = [list(TemperatureSampler(groups, 5.0, num_replicas=2, rank=r, **kwargs)) for r in range(2)]
    global_seq = [full[r][i] for i in range(500) for r in range(2)]

    first = TemperatureSampler(groups, 5.0, num_replicas=2, rank=0, **kwargs)
    iterator = iter(first)
    taken = [next(iterator) for _ in range(123)]
    assert taken == full[0][:123]
    state = first.state_dict()
    assert state["position"] == 246 and state["mixture"] == first.mixture.config()

    resumed = [TemperatureSampler(groups, 5.0, num_replicas=replicas_after, rank=r, **kwargs)
               for r in range(replicas_after)]
    rest = []
    for sampler in resumed:
        sampler.load_state_dict(state)
        rest.append(list(sampler))
    assert len({len(r) for r in rest}) == 1
    merged = [rest[r][i] for i in range(len(rest[0])) for r in range(replicas_after)]
    assert merged[: 1000 - 246] == global_seq[246:]
    # One iteration's worth from the saved position, on into the next epoch's positions.
    assert merged == _stream(first, 246, 246 + len(merged))
    # The resume applies once: the next pass is whole again.
    assert len(list(resumed[0])) == len(resumed[0])


def test_resume_refuses_a_different_stream():
    groups = _groups(SIZES)
    state = TemperatureSampler(groups, 5.0, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 but this mixture has seed=2"):
        TemperatureSampler(groups, 5.0, seed=2).load_state_dict(state)


def test_resume_refuses_other_group_sizes():
    state = TemperatureSampler(_groups(SIZES), 5.0).state_dict()
    with pytest.raises(ValueError, match="Cannot resume the sampler"):
        TemperatureSampler(_groups([5000, 500, 51, 4]), 5.0).load_state_dict(state)


def test_resume_from_a_0_1_sampler_state_warns_and_keeps_the_position():
    groups = _groups(SIZES)
    state = {"epoch": 2, "consumed": 30, "num_samples": 100, "seed": 0, "num_examples": len(groups)}
    sampler = TemperatureSampler(groups, 5.0, num_samples=100)
    with pytest.warns(UserWarning, match="lightning-balance 0.1.*position in the stream \\(230 samples\\) is kept"):
        sampler.load_state_dict(state)
    assert list(sampler) == _stream(sampler, 230, 330)


def test_resume_without_a_mixture_description_is_refused():
    with pytest.raises(ValueError, match="holds no `mixture` description"):
        TemperatureSampler(_groups(SIZES)).load_state_dict({"position": 3})


def test_len_is_per_rank():
    groups = _groups(SIZES)
    assert len(TemperatureSampler(groups, num_samples=10, num_replicas=3, rank=0)) == 4
    assert len(TemperatureSampler(groups, num_samples=10, num_replicas=3, rank=0, drop_last=True)) == 3
    assert len(TemperatureSampler(groups)) == sum(SIZES)
    for drop_last, yielded in ((False, 4), (True, 3)):
        assert len(list(TemperatureSampler(groups, num_samples=10, num_replicas=3, rank=2,
                                           drop_last=drop_last))) == yielded


def test_accepts_list_ndarray_and_tensor():
    ids = [0, 1, 1, 2, 0, 2, 2]
    plans = [TemperatureSampler(g, 2.0, seed=0).epoch_plan(0).tolist()
             for g in (ids, np.array(ids, dtype=np.int16), torch.tensor(ids))]
    assert plans[0] == plans[1] == plans[2]


@pytest.mark.parametrize("groups, error, match", [
    ([0.0, 1.0, 1.5], TypeError, "integer group ids"),
    (np.array([True, False]), TypeError, "integer group ids"),
    ([[0, 1], [1, 0]], ValueError, "1-D"),
    ([[0, 1], [1]], ValueError, "ragged"),
    ([], ValueError, "empty"),
    ([0, -1, 2], ValueError, "group ids >= 0"),
])
def test_invalid_groups(groups, error, match):
    with pytest.raises(error, match=match):
        TemperatureSampler(groups)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 2, "num_replicas": 2}, r"`rank` to be in \[0, num_replicas\)"),
    ({"rank": -1, "num_replicas": 2}, r"`rank` to be in"),
    ({"num_replicas": 0}, "`num_replicas` to be a positive integer"),
    ({"num_samples": 0}, "`num_samples` to be a positive integer"),
    ({"temperature": 0.0}, "`temperature` to be > 0"),
    ({"temperature": float("nan")}, "`temperature` to be > 0"),
    ({"step_size": 0}, "`step_size`"),
    ({"total_steps": 0, "temperature": Cooldown()}, "`total_steps`"),
    ({"order": "random"}, "`order` to be one of"),
    ({"order": "epoch", "temperature": 5.0}, "needs temperature 1"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureSampler([0, 1, 1], **kwargs)


def test_schedule_with_invalid_output_fails_at_construction():
    with pytest.raises(ValueError, match="schedule .* returned -1.0"):
        TemperatureSampler([0, 1, 1], lambda p: -1.0, total_samples=3)


@pytest.mark.parametrize("position", [0, 250, 999, 1000, 2345])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_set_position_reads_the_stream_of_plans_back_to_back(position, replicas):
    groups = _groups(SIZES)
    reference = TemperatureSampler(groups, 5.0, num_samples=1000, seed=6)
    stream = torch.cat([reference.epoch_plan(e) for e in range(5)]).tolist()
    per_rank = -(-1000 // replicas)
    ranks = []
    for r in range(replicas):
        sampler = TemperatureSampler(groups, 5.0, num_samples=1000, seed=6, num_replicas=replicas, rank=r)
        sampler.set_epoch(7)  # ignored: the position decides
        sampler.set_position(position)
        ranks.append(list(sampler))
    assert all(len(indices) == per_rank for indices in ranks)
    interleaved = [ranks[r][i] for i in range(per_rank) for r in range(replicas)]
    assert interleaved == stream[position : position + per_rank * replicas]


def test_seeking_far_into_the_stream_is_free():
    groups = _groups(SIZES)
    sampler = TemperatureSampler(groups, 5.0, num_samples=8, seed=6)
    sampler.set_position(10**12)
    assert list(sampler) == _stream(sampler, 10**12, 10**12 + 8)


def test_state_dict_of_an_iterator_that_crossed_an_epoch():
    groups = _groups(SIZES)
    sampler = TemperatureSampler(groups, 5.0, num_samples=1000, seed=6)
    sampler.set_position(900)
    iterator = iter(sampler)
    for _ in range(150):
        next(iterator)
    assert sampler.state_dict()["position"] == 1050
    resumed = TemperatureSampler(groups, 5.0, num_samples=1000, seed=6)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == _stream(sampler, 1050, 2050)


def test_state_dict_after_set_epoch_starts_the_new_epoch():
    groups = _groups(SIZES)
    sampler = TemperatureSampler(groups, 5.0, num_samples=100)
    list(sampler)
    sampler.set_epoch(1)
    state = sampler.state_dict()
    assert state["position"] == 100
    resumed = TemperatureSampler(groups, 5.0, num_samples=100)
    resumed.load_state_dict(state)
    assert list(resumed) == list(sampler)


def test_set_position_validates():
    with pytest.raises(ValueError, match="`position` to be a non-negative integer"):
        TemperatureSampler([0, 1]).set_position(-1)


def test_sparse_group_ids_are_rejected_before_allocating():
    with pytest.raises(ValueError, match="np.unique"):
        GroupIndex([0, 10**9])


def test_negative_seed():
    with pytest.raises(ValueError, match="`seed` to be a non-negative integer"):
        TemperatureSampler([0, 1], seed=-1)


def test_state_reports_the_pending_position():
    sampler = TemperatureSampler(_groups(SIZES), 5.0, num_samples=8, seed=0)
    sampler.set_position(37)
    assert sampler.state_dict()["position"] == 37
    assert list(sampler) == sampler._indices(37, 45).tolist()
    assert sampler.state_dict()["position"] == 45
    sampler.set_epoch(3)
    assert sampler.state_dict()["position"] == 24
