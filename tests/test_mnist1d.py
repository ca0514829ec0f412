"""Long-tailed MNIST-1D: sizes follow the long-tail formula, generation is deterministic and offline."""

import random
import socket

import numpy as np
import pytest
import torch

pytest.importorskip("mnist1d")

from lightning_balance.compare import CompareSettings, ComponentSpec, compare, default_runs  # noqa: E402
from lightning_balance.experiments import mnist1d as lt  # noqa: E402
from lightning_balance.experiments.mnist1d import (  # noqa: E402
    CNN1DClassifier,
    LongTailMNIST1D,
    long_tail_mnist1d,
    mnist1d_pool,
)

SMALL = dict(n_max=60, imbalance_factor=10.0, val_per_class=5)


def expected_counts(n_max, imbalance_factor, num_classes=10):
    # floor(n_max * (1/IF)^(i/(C-1))), written out independently of the package's helper
    return [int(np.floor(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1)) + 1e-9))
            for i in range(num_classes)]


def labels(dataset):
    return torch.bincount(dataset.tensors[1], minlength=10).tolist()


@pytest.mark.parametrize("n_max, imbalance_factor", [(500, 100.0), (60, 10.0), (200, 50.0), (90, 1.0)])
def test_sizes_follow_the_long_tail_formula(n_max, imbalance_factor):
    train, val = long_tail_mnist1d(n_max=n_max, imbalance_factor=imbalance_factor, val_per_class=7)
    assert labels(train) == expected_counts(n_max, imbalance_factor)
    assert labels(val) == [7] * 10


def test_default_sizes_and_splits():
    dm = LongTailMNIST1D()
    dm.setup("fit")
    assert dm.group_counts.tolist() == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert len(dm.val_dataset) == 5000 and labels(dm.val_dataset) == [500] * 10
    assert dm.num_classes == 10 and dm.num_features == 40 and dm.batch_size == 64
    x, y = dm.train_dataset.tensors
    assert x.shape == (1236, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    # head > 100, tail < 20 training examples: every part of the absolute split is non-empty
    counts = dm.group_counts
    assert (counts > 100).sum() == 4 and ((counts >= 20) & (counts <= 100)).sum() == 3 and (counts < 20).sum() == 3


def test_validation_is_disjoint_from_training():
    train, val = long_tail_mnist1d(**SMALL)
    train_rows = {row.tobytes() for row in train.tensors[0].numpy()}
    assert not any(row.tobytes() in train_rows for row in val.tensors[0].numpy())


def test_deterministic_by_seed():
    lt._cached_pool.cache_clear()
    a_train, a_val = long_tail_mnist1d(**SMALL, data_seed=3)
    lt._cached_pool.cache_clear()  # generate again rather than reuse the cached pool
    b_train, b_val = long_tail_mnist1d(**SMALL, data_seed=3)
    for a, b in zip(a_train.tensors + a_val.tensors, b_train.tensors + b_val.tensors, strict=True):
        assert torch.equal(a, b)
    c_train, _ = long_tail_mnist1d(**SMALL, data_seed=4)
    assert not torch.equal(a_train.tensors[0], c_train.tensors[0])


def test_generation_leaves_the_global_random_streams_alone():
    lt._cached_pool.cache_clear()
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    mnist1d_pool(8, seed=1)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_generation_uses_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D generation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import requests

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    lt._cached_pool.cache_clear()
    train, val = long_tail_mnist1d(**SMALL, data_seed=5)
    assert labels(train) == expected_counts(60, 10.0)


def test_pool_returns_copies_and_checks_arguments():
    x, _ = mnist1d_pool(8, seed=1)
    x[:] = 0
    assert mnist1d_pool(8, seed=1)[0].any()
    with pytest.raises(ValueError, match="Unknown MNIST-1D generator argument"):
        mnist1d_pool(8, dataset_args={"nope": 1})
    with pytest.raises(ValueError, match="may not set 'seed'"):
        mnist1d_pool(8, dataset_args={"seed": 1})
    with pytest.raises(ValueError, match="per_class"):
        mnist1d_pool(0)
    with pytest.raises(ValueError, match="n_max"):
        long_tail_mnist1d(n_max=0)


def test_generator_arguments_change_the_data():
    plain, _ = long_tail_mnist1d(**SMALL)
    noisy, _ = long_tail_mnist1d(**SMALL, dataset_args={"iid_noise_scale": 0.2})
    assert labels(plain) == labels(noisy)
    assert not torch.equal(plain.tensors[0], noisy.tensors[0])


def test_cnn_shapes_hooks_and_options():
    model = CNN1DClassifier()
    x = torch.randn(5, 40)
    assert model(x).shape == (5, 10) and model(x.unsqueeze(1)).shape == (5, 10)
    assert model.embed((x, None)).shape == (5, 32)
    assert CNN1DClassifier(pooling="flatten").embed((x, None)).shape == (5, 32 * 5)
    assert model.per_sample_loss((x, torch.arange(5))).shape == (5,)
    out = model.validation_step((x, torch.arange(5)), 0)
    assert set(out) == {"preds", "target"} and out["preds"].shape == (5, 10)
    with pytest.raises(ValueError, match="pooling"):
        CNN1DClassifier(pooling="avg")
    with pytest.raises(ValueError, match="schedule"):
        CNN1DClassifier(schedule="step")


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_compare_runs_the_task_with_upweighting(schedule):
    # compare refuses a model whose training_step bypasses balanced_loss: this run shows the CNN does not.
    result = compare(
        ComponentSpec(LongTailMNIST1D, dict(SMALL, batch_size=16)),
        ComponentSpec(CNN1DClassifier, {"schedule": schedule, "channels": 8}, "--model"),
        runs=default_runs(only=["upweight"]),
        settings=CompareSettings(seeds=[0], max_steps=6, val_every=3),
        progress=False,
    )
    (run,) = result.runs
    assert [p["step"] for p in run.curve] == [3, 6]
    assert result.settings["group_counts"] == expected_counts(60, 10.0)
    assert 0.0 <= run.final["recall_macro"] <= 1.0
