"""Fiedler solvers: the iterative ones agree with eigh on clustered batches and hand eigh what they cannot solve."""

import numpy as np
import pytest
import torch

from lightning_balance.functional import spectral_scores
from lightning_balance.functional.fiedler import (
    AUTO_SUBSPACE_MIN_SIZE,
    fiedler_vectors,
    resolve_fiedler_method,
)
from lightning_balance.functional.spectral import _similarity
from lightning_balance.selection import keep_count, select_top_k

LAPLACIANS = ("plain", "normalized", "random_walk")


def mixture(n, b, d=64, clusters=10, noise=0.8, seed=0, dtype=torch.float32):
    """Gaussian mixtures: the clustered features batches of embeddings look like."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n, clusters, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, clusters, (n, b), generator=gen)
    x = torch.gather(centres, 1, labels.unsqueeze(-1).expand(n, b, d))
    return (x + noise * torch.randn(n, b, d, generator=gen, dtype=torch.float64)).to(dtype)


def digits_batches(n, b, seed=0):
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().data.astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([x[torch.randperm(len(x), generator=gen)[:b]] for _ in range(n)])


def graph(x, negative="clamp"):
    return _similarity(x, negative)


@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_subspace_matches_eigh_on_clustered_batches(laplacian):
    sim = graph(mixture(6, 200, seed=1))
    info = fiedler_vectors(sim, laplacian, method="subspace", return_info=True)
    assert info.method == "subspace"
    if laplacian != "plain":  # the plain Laplacian's spectrum is spread wider and may need eigh
        assert not info.fallback.any()
    torch.testing.assert_close(info.vectors, fiedler_vectors(sim, laplacian, method="eigh"), atol=2e-4, rtol=0)


def test_kept_sets_agree_with_eigh_on_99_percent_of_realistic_batches():
    batches = [mixture(10, 256, clusters=c, noise=s, seed=i) for i, (c, s) in
               enumerate([(3, 1.5), (5, 1.0), (10, 0.8), (10, 1.2), (20, 1.0), (30, 1.0), (8, 0.6), (15, 0.9)])]
    batches.append(digits_batches(20, 256))
    batches.append(torch.relu(mixture(10, 256, seed=9)))
    same = total = 0
    k = keep_count(0.5, 256)
    for x in batches:
        eigh = select_top_k(spectral_scores(x, solver="eigh"), k)
        fast = select_top_k(spectral_scores(x, solver="subspace"), k)
        same += int((eigh == fast).all(-1).sum())
        total += len(x)
    assert total == 110
    assert same >= 0.99 * total, f"{same} of {total} kept sets agree"


@pytest.mark.parametrize("method", ["subspace", "lobpcg"])
@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_unresolvable_graphs_fall_back_to_eigh(method, laplacian):
    gen = torch.Generator().manual_seed(0)
    block = torch.rand(20, 20, generator=gen)
    cases = {
        "disconnected": torch.block_diag(block, block.T).unsqueeze(0),  # eigenvalue 0 twice
        "duplicates": torch.eye(4).repeat_interleave(5, 0) @ torch.eye(4).repeat_interleave(5, 0).T,
        "isolated": torch.cat([torch.rand(19, 8, generator=gen), torch.zeros(1, 8)]),
    }
    for name, value in cases.items():
        if name in ("duplicates", "isolated"):
            sim = graph(value.unsqueeze(0))
        else:
            sim = value + value.mT
            sim = sim * (1 - torch.eye(sim.shape[-1]))
        info = fiedler_vectors(sim, laplacian, method=method, return_info=True)
        assert info.fallback.all(), name
        # What fell back is eigh's own answer, bit for bit.
        torch.testing.assert_close(info.vectors, fiedler_vectors(sim, laplacian, method="eigh"), atol=0, rtol=0)


@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_graphs_without_clusters_converge_or_fall_back(laplacian):
    noise = torch.rand(3, 120, 120, generator=torch.Generator().manual_seed(1))
    sim = (noise + noise.mT) * (1 - torch.eye(120))
    info = fiedler_vectors(sim, laplacian, method="subspace", return_info=True)
    torch.testing.assert_close(info.vectors, fiedler_vectors(sim, laplacian, method="eigh"), atol=2e-3, rtol=0)


def test_fallback_is_per_graph():
    good = graph(mixture(2, 100, seed=3))
    bad = torch.block_diag(torch.ones(50, 50), torch.ones(50, 50)).unsqueeze(0) * (1 - torch.eye(100))
    sim = torch.cat([good[:1], bad, good[1:]])
    info = fiedler_vectors(sim, method="subspace", return_info=True)
    assert info.fallback.tolist() == [False, True, False]
    torch.testing.assert_close(info.vectors, fiedler_vectors(sim, method="eigh"), atol=2e-4, rtol=0)


def test_unconverged_iterations_fall_back():
    sim = graph(mixture(2, 150, seed=4))
    info = fiedler_vectors(sim, method="subspace", max_iter=0, return_info=True)
    assert info.fallback.all()
    assert not fiedler_vectors(sim, method="subspace", return_info=True).fallback.any()


def test_lobpcg_agrees_with_eigh():
    sim = graph(mixture(3, 150, seed=5))
    torch.testing.assert_close(fiedler_vectors(sim, method="lobpcg"), fiedler_vectors(sim, method="eigh"),
                               atol=2e-4, rtol=0)


def test_float64_tolerance_is_tighter():
    sim = graph(mixture(2, 150, seed=6, dtype=torch.float64))
    got = fiedler_vectors(sim, method="subspace", return_info=True)
    assert got.vectors.dtype == torch.float64 and not got.fallback.any()
    torch.testing.assert_close(got.vectors, fiedler_vectors(sim, method="eigh"), atol=1e-8, rtol=0)


def test_deterministic_and_leaves_the_global_generator_alone():
    sim = graph(mixture(2, 160, seed=7))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = fiedler_vectors(sim, method="subspace")
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    assert torch.equal(fiedler_vectors(sim, method="subspace"), first)


def test_permuting_samples_permutes_the_vector():
    x = mixture(1, 180, seed=8)
    base = spectral_scores(x, solver="subspace")
    perm = torch.randperm(180, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(spectral_scores(x[:, perm], solver="subspace"), base[:, perm], atol=1e-5, rtol=0)


def test_auto_picks_by_size_and_device():
    cpu = torch.device("cpu")
    assert resolve_fiedler_method("auto", AUTO_SUBSPACE_MIN_SIZE - 1, cpu) == "eigh"
    assert resolve_fiedler_method("auto", AUTO_SUBSPACE_MIN_SIZE, cpu) == "subspace"
    # On a GPU a host decision would synchronise: auto keeps eigh there at every size.
    assert resolve_fiedler_method("auto", 4096, torch.device("cuda")) == "eigh"
    small = graph(mixture(1, 40))
    assert fiedler_vectors(small, return_info=True).method == "eigh"
    assert fiedler_vectors(graph(mixture(1, AUTO_SUBSPACE_MIN_SIZE)), return_info=True).method == "subspace"
    # Batches too small for a block fall back to eigh whatever was asked.
    assert fiedler_vectors(graph(mixture(1, 6)), method="subspace", return_info=True).method == "eigh"


def test_errors_name_the_argument():
    sim = graph(mixture(1, 20))
    with pytest.raises(ValueError, match="`solver`.*'arpack'"):
        fiedler_vectors(sim, method="arpack")
    with pytest.raises(ValueError, match="`solver`.*'arpack'"):
        spectral_scores(torch.randn(20, 3), solver="arpack")
    with pytest.raises(ValueError, match="`laplacian`.*'sym'"):
        fiedler_vectors(sim, "sym")
    with pytest.raises(RuntimeError, match=r"\[N, B, B\].*\(20, 20\)"):
        fiedler_vectors(sim[0])
    with pytest.raises(ValueError, match="`block_size`.*1"):
        fiedler_vectors(sim, block_size=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_solvers_match_cpu():
    sim = graph(mixture(3, 300, seed=9))
    want = fiedler_vectors(sim, method="eigh")
    for method in ("eigh", "subspace"):
        got = fiedler_vectors(sim.cuda(), method=method)
        torch.testing.assert_close(got.cpu(), want, atol=2e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- from the features


@pytest.mark.parametrize("negative", ["clamp", "shift", "abs"])
@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_the_floor_proven_from_the_features_is_below_the_spectrum(negative, laplacian):
    import lightning_balance.functional.fiedler as fiedler_module
    from lightning_balance.functional.spectral import _unit_rows

    floors = []

    def capture(*args, **kwargs):
        floors.append(kwargs["floor"])
        return solve(*args, **kwargs)

    solve = fiedler_module._solve_iterative
    for x in (mixture(3, 150, seed=11), torch.relu(mixture(3, 150, seed=12)), digits_batches(3, 150)):
        floors.clear()
        fiedler_module._solve_iterative = capture
        try:
            got = spectral_scores(x, laplacian=laplacian, negative=negative, solver="subspace")
        finally:
            fiedler_module._solve_iterative = solve
        unit = _unit_rows(x.double())
        sim = _similarity(unit, negative)
        degree = sim.sum(-1)
        if laplacian == "plain":
            c = 2 * degree.amax(-1, keepdim=True)
            op = sim / c.unsqueeze(-1) + torch.diag_embed(1 - degree / c)
        else:
            inv = degree.rsqrt()
            op = inv.unsqueeze(-1) * sim * inv.unsqueeze(-2)
        lowest = torch.linalg.eigvalsh(op)[:, 0]
        assert (floors[0].double() <= lowest + 1e-6).all(), (floors[0], lowest)
        torch.testing.assert_close(got, spectral_scores(x, laplacian=laplacian, negative=negative, solver="eigh"),
                                   atol=2e-4, rtol=0)


def test_low_rank_products_match_the_built_graph():
    # Non-negative features under clamp, and shift with any features: the graph is never built.
    import lightning_balance.functional.spectral as spectral_module

    built = []
    similarity = spectral_module._similarity

    def spy(*args, **kwargs):
        built.append(True)
        return similarity(*args, **kwargs)

    for x, negative in ((digits_batches(4, 300), "clamp"), (mixture(4, 300, seed=13), "shift")):
        built.clear()
        spectral_module._similarity = spy
        try:
            fast = spectral_scores(x, negative=negative, solver="subspace")
        finally:
            spectral_module._similarity = similarity
        assert not built
        torch.testing.assert_close(fast, spectral_scores(x, negative=negative, solver="eigh"), atol=2e-4, rtol=0)
