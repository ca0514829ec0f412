import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_balance.functional import spectral_scores
from lightning_balance.functional.spectral import _score

LAPLACIANS = ("plain", "normalized", "random_walk")
NEGATIVES = ("clamp", "shift", "abs")
SCORES = ("magnitude", "boundary", "signed", "labels")


def reference_scores(x: np.ndarray, laplacian: str, negative: str, score: str, labels=None) -> np.ndarray:
    """One batch, written from the definitions with numpy/scipy (generic case: simple eigenvalues)."""
    x = np.asarray(x, dtype=np.float64)
    b = len(x)
    sim = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            sim[i, j] = 0.0 if ni == 0 or nj == 0 else x[i] @ x[j] / (ni * nj)
    sim = {"clamp": np.maximum(sim, 0), "shift": (sim + 1) / 2, "abs": np.abs(sim)}[negative]
    np.fill_diagonal(sim, 0.0)
    deg = sim.sum(1)
    plain = np.diag(deg) - sim
    if laplacian == "plain":
        _, vecs = scipy.linalg.eigh(plain)
        f = vecs[:, 1]
    elif laplacian == "normalized":
        dh = np.diag(deg**-0.5)
        _, vecs = scipy.linalg.eigh(dh @ plain @ dh)
        f = vecs[:, 1]
    else:  # generalised problem L v = lambda D v, as scipy solves it
        _, vecs = scipy.linalg.eigh(plain, np.diag(deg))
        f = vecs[:, 1] / np.linalg.norm(vecs[:, 1])
    f = f * np.sign(f[np.argmax(np.abs(f))])
    if score == "magnitude":
        return np.abs(f)
    if score == "signed":
        return f
    if score == "boundary":
        return -np.abs(f - np.median(f))
    out = np.zeros(b)
    for i in range(b):
        others = [j for j in range(b) if j != i and labels[j] == labels[i]]
        out[i] = f[i] * np.mean(f[others]) if others else 0.0
    return out


def make_batch(b=12, d=6, seed=0, offset=0.3):
    gen = torch.Generator().manual_seed(seed)
    # A positive offset keeps most similarities positive, so "clamp" leaves a connected graph.
    return torch.randn(b, d, generator=gen, dtype=torch.float64) + offset


@pytest.mark.parametrize(("laplacian", "negative", "score"), itertools.product(LAPLACIANS, NEGATIVES, SCORES))
def test_matches_scipy_reference(laplacian, negative, score):
    for seed in range(3):
        x = make_batch(seed=seed)
        labels = torch.arange(12) % 3
        got = spectral_scores(x, laplacian=laplacian, negative=negative, score=score, labels=labels)
        want = reference_scores(x.numpy(), laplacian, negative, score, labels.numpy())
        np.testing.assert_allclose(got.numpy(), want, atol=1e-7)


def test_float32_close_to_float64():
    x = make_batch(b=32, d=16, seed=5)
    np.testing.assert_allclose(spectral_scores(x.float()).numpy(), spectral_scores(x).numpy(), atol=1e-4)
    assert spectral_scores(x.float()).dtype == torch.float32
    assert spectral_scores(x.half()).dtype == torch.float32


def test_batched_equals_loop_over_batches():
    x = torch.randn(2, 3, 10, 5, generator=torch.Generator().manual_seed(1)) + 0.2
    labels = torch.randint(0, 3, (2, 3, 10), generator=torch.Generator().manual_seed(2))
    for score in SCORES:
        batched = spectral_scores(x, score=score, labels=labels)
        assert batched.shape == (2, 3, 10)
        for i, j in itertools.product(range(2), range(3)):
            single = spectral_scores(x[i, j], score=score, labels=labels[i, j])
            torch.testing.assert_close(batched[i, j], single, atol=1e-5, rtol=0)


def test_hand_computed_path_graph():
    # a = e1, b = (e1 + e2)/sqrt 2, c = e2: a path a - b - c with weights 1/sqrt 2. Its Fiedler vector is
    # (1, 0, -1)/sqrt 2 for the plain and the normalised Laplacian alike (eigenvalue w and 1).
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    r = 1 / math.sqrt(2)
    for laplacian in LAPLACIANS:
        torch.testing.assert_close(
            spectral_scores(x, laplacian=laplacian, score="magnitude"), torch.tensor([r, 0.0, r], dtype=x.dtype)
        )
        torch.testing.assert_close(
            spectral_scores(x, laplacian=laplacian, score="boundary"), torch.tensor([-r, 0.0, -r], dtype=x.dtype)
        )
    # "shift" adds an edge a - c of weight (0 + 1)/2; the middle node still sits on the cut.
    middle = spectral_scores(x, negative="shift", laplacian="plain")[1]
    torch.testing.assert_close(middle, torch.tensor(0.0, dtype=x.dtype))


def test_two_components_give_the_component_contrast():
    # Two disconnected pairs: the eigenvalue 0 is double; the Fiedler vector is the contrast of the components,
    # whatever basis the eigensolver returns for the null space.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    for laplacian in LAPLACIANS:
        torch.testing.assert_close(spectral_scores(x, laplacian=laplacian, score="magnitude"), torch.full((4,), 0.5))
    # Unequal components: the contrast 1_A/|A| - 1_B/|B|, normalised.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    f = np.array([1 / 3, 1 / 3, 1 / 3, -1 / 2, -1 / 2])
    f = f / np.linalg.norm(f)
    np.testing.assert_allclose(spectral_scores(x, laplacian="plain", score="signed").numpy(), -f, atol=1e-10)


@pytest.mark.parametrize(("laplacian", "negative", "score"), itertools.product(LAPLACIANS, NEGATIVES, SCORES))
def test_permuting_rows_permutes_scores(laplacian, negative, score):
    gen = torch.Generator().manual_seed(3)
    batches = {
        "generic": make_batch(b=16, seed=4),
        "duplicates": make_batch(b=4, seed=6).repeat(4, 1),
        "disconnected": torch.block_diag(torch.rand(5, 3, generator=gen), torch.rand(6, 2, generator=gen)),
        "three_equal_components": torch.eye(3, dtype=torch.float64).repeat_interleave(3, 0),
        "one_zero_row": torch.cat([make_batch(b=7, seed=8), torch.zeros(1, 6, dtype=torch.float64)]),
    }
    for name, x in batches.items():
        if score == "signed" and name != "generic":
            continue  # symmetric batches have no preferred side of the cut (see the module docstring)
        labels = torch.arange(len(x)) % 3
        base = spectral_scores(x, laplacian=laplacian, negative=negative, score=score, labels=labels)
        for seed in range(4):
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            permuted = spectral_scores(
                x[perm], laplacian=laplacian, negative=negative, score=score, labels=labels[perm]
            )
            torch.testing.assert_close(permuted, base[perm], atol=1e-5, rtol=0, msg=f"batch {name}")


def test_sign_invariant_scores():
    f = torch.randn(3, 9, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (3, 9), generator=torch.Generator().manual_seed(1))
    for score in ("magnitude", "boundary", "labels"):
        torch.testing.assert_close(_score(f, score, labels), _score(-f, score, labels))
    torch.testing.assert_close(_score(-f, "signed", None), -_score(f, "signed", None))


def test_deterministic_and_same_on_repeat():
    x = torch.eye(4).repeat_interleave(2, 0)  # four components of duplicates: a 3-dimensional Fiedler subspace
    first = spectral_scores(x)
    assert torch.isfinite(first).all()
    for _ in range(3):
        torch.testing.assert_close(spectral_scores(x), first, atol=0, rtol=0)


@pytest.mark.parametrize("negative", NEGATIVES)
@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_degenerate_batches_are_finite(laplacian, negative):
    cases = {
        "all_duplicates": torch.ones(6, 4),
        "all_zero": torch.zeros(5, 4),
        "one_zero_row": torch.cat([torch.rand(4, 3), torch.zeros(1, 3)]),
        "disconnected": torch.block_diag(torch.rand(3, 2) + 0.1, torch.rand(3, 2) + 0.1),
        "zero_dim": torch.zeros(4, 0),
        "opposite_pairs": torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]),
    }
    for name, x in cases.items():
        for score in SCORES:
            out = spectral_scores(x, laplacian=laplacian, negative=negative, score=score, labels=torch.zeros(len(x)))
            assert out.shape == (len(x),), name
            assert torch.isfinite(out).all(), f"{name} {score}: {out}"
    # Identical samples are interchangeable: they all get the same score.
    for score in ("magnitude", "boundary"):
        out = spectral_scores(torch.ones(6, 4), laplacian=laplacian, negative=negative, score=score)
        torch.testing.assert_close(out, out[:1].expand(6))


def test_zero_vector_is_similar_to_nothing():
    # Under "clamp" a zero row is an isolated node: it is the whole of one side of the weakest cut.
    x = torch.cat([torch.rand(5, 3) + 0.1, torch.zeros(1, 3)])
    scores = spectral_scores(x, laplacian="plain", score="magnitude")
    assert int(scores.argmax()) == 5
    # Under "shift" its similarity 0 becomes 0.5: it is connected to everything.
    assert torch.isfinite(spectral_scores(x, negative="shift")).all()


@pytest.mark.parametrize("b", [0, 1, 2])
def test_fewer_than_three_samples_score_zero(b):
    out = spectral_scores(torch.randn(4, b, 3), score="labels", labels=torch.zeros(4, b))
    assert out.shape == (4, b)
    assert (out == 0).all()


def test_output_device_and_dtype_follow_input():
    x = make_batch()
    assert spectral_scores(x).dtype == torch.float64
    assert spectral_scores(x.float()).device == x.device
    assert spectral_scores(torch.randint(0, 3, (6, 4))).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(5, 64, 32, generator=torch.Generator().manual_seed(0)) + 0.2
    got = spectral_scores(x.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), spectral_scores(x), atol=1e-4, rtol=0)


def test_errors_name_the_argument():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="`laplacian`.*'sym'"):
        spectral_scores(x, laplacian="sym")
    with pytest.raises(ValueError, match="`negative`"):
        spectral_scores(x, negative="raw")
    with pytest.raises(ValueError, match="`score`.*'fiedler'"):
        spectral_scores(x, score="fiedler")
    with pytest.raises(ValueError, match="labels="):
        spectral_scores(x, score="labels")
    with pytest.raises(RuntimeError, match=r"\[\.\.\., B, D\].*\(6,\)"):
        spectral_scores(torch.randn(6))
    with pytest.raises(RuntimeError, match="`labels`.*\\(6,\\)"):
        spectral_scores(x, score="labels", labels=torch.zeros(5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        spectral_scores(np.zeros((6, 3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score", SCORES)
def test_scores_do_not_depend_on_the_scale_of_the_features(dtype, score):
    # float32 norms overflow above ~1e19 and underflow below ~1e-19: the rows must not become zero vectors.
    x = make_batch(b=10, d=5, seed=3).to(dtype)
    labels = torch.arange(10) % 3
    expected = spectral_scores(x, score=score, labels=labels)
    for factor in (1e20, 1e-30):
        scaled = spectral_scores(x * factor, score=score, labels=labels)
        torch.testing.assert_close(scaled, expected, atol=1e-5, rtol=1e-4)
    # one row scaled up and one down: still the same graph
    mixed = x.clone()
    mixed[0] *= 1e20
    mixed[1] *= 1e-30
    torch.testing.assert_close(spectral_scores(mixed, score=score, labels=labels), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features_are_rejected(bad):
    x = make_batch(b=6, d=3).float()
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"Expected argument `features` to be finite, but 1 of its rows hold NaN or"
                                         r" inf values.*torch.nan_to_num"):
        spectral_scores(x)
    with pytest.raises(ValueError, match=r"`features` to be finite"):
        spectral_scores(x.unsqueeze(0).expand(2, -1, -1))
