"""The selection baselines against small hand-written references: JEST's chunked sampling, Selective Backprop's
percentile draw (Composer's `select_using_loss`), RHO-LOSS's top-k, and super-batch counts."""

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_balance.selection import (
    filter_ratio_count,
    jest_select,
    reducible_loss_scores,
    select_top_k,
    selective_backprop_select,
    super_batch_size,
)

DRAWS = 40_000


# ---------------------------------------------------------------------------------------------- references


def sequential_set_probabilities(weights: np.ndarray, k: int) -> dict[frozenset, float]:
    """Exact probability of every kept set when ``k`` items are drawn one at a time without replacement, each draw
    proportional to ``weights`` over the items not drawn yet (enumerating every order)."""
    out: dict[frozenset, float] = {}
    for order in itertools.permutations(range(len(weights)), k):
        p, left = 1.0, weights.sum()
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        out[frozenset(order)] = out.get(frozenset(order), 0.0) + p
    return out


def jest_reference(scores: np.ndarray, k: int, n_chunks: int, rng: np.random.Generator) -> list[int]:
    """JEST's sampling written out plainly: chunk after chunk, each a draw without replacement from the softmax of
    the scores over what earlier chunks left (per-sample scores: the conditional does not change them)."""
    sizes = [k // n_chunks + (i < k % n_chunks) for i in range(n_chunks)]
    left = list(range(len(scores)))
    picked: list[int] = []
    for size in sizes:
        logits = scores[left]
        p = np.exp(logits - logits.max())
        chunk = rng.choice(len(left), size=size, replace=False, p=p / p.sum())
        chosen = [left[i] for i in chunk]
        picked += chosen
        left = [i for i in left if i not in chosen]
    return sorted(picked)


def composer_select_using_loss(losses: np.ndarray, keep: float, rng: np.random.Generator) -> list[int]:
    """Composer's `select_using_loss` (selective backprop), rewritten with numpy: sort the losses, percentile
    (i + 0.5) / N of the i-th lowest, probability percentile ** (1 / keep - 1), a draw without replacement."""
    n = len(losses)
    sorted_idx = np.argsort(losses, kind="stable")
    n_select = int(keep * n)
    percs = np.arange(0.5, n, 1) / n
    probs = percs ** ((1.0 / keep) - 1.0)
    probs = probs / np.sum(probs)
    select_percs_idx = rng.choice(n, n_select, replace=False, p=probs)
    return sorted(sorted_idx[select_percs_idx].tolist())


def frequencies(sets) -> dict[frozenset, float]:
    counts: dict[frozenset, int] = {}
    for s in sets:
        key = frozenset(int(i) for i in s)
        counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    return {key: c / total for key, c in counts.items()}


def assert_distributions_close(got: dict, want: dict, draws: int) -> None:
    for key in set(got) | set(want):
        p = want.get(key, 0.0)
        sigma = math.sqrt(max(p * (1 - p), 1e-4) / draws)
        assert abs(got.get(key, 0.0) - p) < 5 * sigma, (sorted(key), got.get(key, 0.0), p)


# ---------------------------------------------------------------------------------------------- JEST


@pytest.mark.parametrize("n_chunks", [1, 2, 3])
def test_jest_draws_the_sets_of_sequential_softmax_sampling(n_chunks):
    scores = torch.tensor([1.5, -0.5, 0.0, 2.0, 0.7, -1.0])
    k = 3
    gen = torch.Generator().manual_seed(n_chunks)
    kept = jest_select(scores.expand(DRAWS, -1), k, n_chunks=n_chunks, generator=gen)
    exact = sequential_set_probabilities(np.exp(scores.double().numpy()), k)
    assert_distributions_close(frequencies(kept.tolist()), exact, DRAWS)
    # The plain reference draws the same distribution (a check of the reference itself).
    rng = np.random.default_rng(0)
    reference = [jest_reference(scores.double().numpy(), k, n_chunks, rng) for _ in range(DRAWS // 4)]
    assert_distributions_close(frequencies(reference), exact, DRAWS // 4)


def test_jest_chunks_follow_the_softmax_conditioned_on_earlier_chunks():
    # One item dominates: it is always in the first chunk, and the second chunk is drawn from the rest.
    scores = torch.tensor([20.0, 0.0, 0.0, math.log(3.0)])
    kept = jest_select(scores.expand(DRAWS, -1), 2, n_chunks=2, generator=torch.Generator().manual_seed(0))
    assert (kept[:, 0] == 0).all()
    share = (kept[:, 1] == 3).float().mean().item()
    assert abs(share - 3 / 5) < 0.02  # softmax over {1, 2, 3} with weights 1, 1, 3


def test_jest_is_deterministic_per_generator_and_returns_sorted_positions():
    scores = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    a = jest_select(scores, 20, n_chunks=16, generator=torch.Generator().manual_seed(7))
    b = jest_select(scores, 20, n_chunks=16, generator=torch.Generator().manual_seed(7))
    c = jest_select(scores, 20, n_chunks=16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 20) and (a.diff(dim=-1) > 0).all()


def test_jest_protected_first_and_nan_last():
    scores = torch.tensor([0.0, float("nan"), 5.0, 1.0, -2.0])
    protected = torch.tensor([False, False, False, False, True])
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        kept = jest_select(scores, 4, n_chunks=2, generator=gen, protected=protected).tolist()
        assert 4 in kept and 1 not in kept
    # More protected than kept: the draw happens among the protected only.
    everything = torch.ones(5, dtype=torch.bool)
    assert jest_select(scores, 5, n_chunks=5, generator=torch.Generator(), protected=everything).tolist() == [0, 1, 2,
                                                                                                            3, 4]


@pytest.mark.parametrize(("n_chunks", "match"), [(0, r"`n_chunks`.*\[1, 4\].*0"), (5, r"`n_chunks`.*\[1, 4\].*5"),
                                                (2.5, "`n_chunks`.*2.5"), (True, "`n_chunks`.*True")])
def test_jest_refuses_chunk_counts_outside_one_to_k(n_chunks, match):
    with pytest.raises(ValueError, match=match):
        jest_select(torch.zeros(8), 4, n_chunks=n_chunks)


# ---------------------------------------------------------------------------------------------- Selective Backprop


@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_selective_backprop_matches_composers_draw(keep):
    losses = torch.tensor([0.3, 2.0, 0.1, 1.2, 0.8, 0.05, 3.0, 0.5])
    n, k = len(losses), int(keep * len(losses))
    kept = selective_backprop_select(losses.expand(DRAWS, -1), k, generator=torch.Generator().manual_seed(1))
    rank = np.argsort(np.argsort(losses.numpy(), kind="stable"), kind="stable")
    exact = sequential_set_probabilities(((rank + 0.5) / n) ** (1 / keep - 1), k)
    assert_distributions_close(frequencies(kept.tolist()), exact, DRAWS)
    rng = np.random.default_rng(0)
    composer = [composer_select_using_loss(losses.numpy(), keep, rng) for _ in range(DRAWS // 4)]
    assert_distributions_close(frequencies(composer), exact, DRAWS // 4)


def test_selective_backprop_beta():
    losses = torch.arange(10.0)
    # beta = 0: a uniform draw; a large beta: the highest losses.
    uniform = selective_backprop_select(losses.expand(DRAWS, -1), 3, beta=0.0, generator=torch.Generator())
    share = torch.bincount(uniform.flatten(), minlength=10).float() / DRAWS
    assert torch.allclose(share, torch.full((10,), 0.3), atol=0.02)
    sharp = selective_backprop_select(losses, 3, beta=500.0, generator=torch.Generator().manual_seed(0))
    assert sharp.tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="`beta`.*-1"):
        selective_backprop_select(losses, 3, beta=-1.0)


def test_selective_backprop_nan_ranks_lowest_and_protected_first():
    losses = torch.tensor([float("nan"), 1.0, 2.0, 3.0])
    kept = selective_backprop_select(losses.expand(2000, -1), 3, beta=5.0, generator=torch.Generator())
    assert (kept == 0).float().mean() < 0.01
    protected = torch.tensor([True, False, False, False])
    assert (selective_backprop_select(losses, 1, generator=torch.Generator(), protected=protected) == 0).all()


# ---------------------------------------------------------------------------------------------- RHO-LOSS


def test_rho_loss_is_the_top_k_of_the_reducible_loss():
    gen = torch.Generator().manual_seed(3)
    learner, reference = torch.rand(40, generator=gen) * 3, torch.rand(40, generator=gen)
    k = 12
    # Reference: sort by learner - reference, highest first, keep k.
    want = sorted(sorted(range(40), key=lambda i: -(learner[i] - reference[i]).item())[:k])
    assert select_top_k(reducible_loss_scores(learner, reference), k).tolist() == want


# ---------------------------------------------------------------------------------------------- super-batch counts


def test_filter_ratio_and_super_batch_size_invert_each_other():
    for b in (1, 7, 32, 50, 64):
        for f in (0.0, 0.5, 0.7, 0.8, 0.9):
            big = super_batch_size(b, f)
            assert filter_ratio_count(f, big) == b and big >= b
            assert filter_ratio_count(f, big + 1) > b or f == 0.0


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_filter_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match=r"`filter_ratio` to be in \[0, 1\)"):
        filter_ratio_count(ratio, 64)
