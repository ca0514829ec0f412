r"""
Long-tailed MNIST-1D
^^^^^^^^^^^^^^^^^^^^

MNIST-1D (Greydanus & Kobak, 2020) turns the ten digit classes into 1-D templates of 12 points and
generates every example procedurally: random padding, scaling, translation, correlated and i.i.d. noise,
shear, then resampling to 40 points. The generator (``mnist1d.data.make_dataset``) is seeded and uses no
network; only ``mnist1d.data.get_dataset`` downloads a pickle, and it is never called here. On the standard
balanced set (4000 training examples) an MLP reaches about 68% accuracy and a small CNN about 94%, so,
unlike the 8x8 digits, a long-tailed version is hard enough that the head pays for balancing.

:class:`LongTailMNIST1D` builds the long-tailed version with the standard construction
:math:`n_i = \lfloor n_{max} (1/IF)^{i/(C-1)} \rfloor` and a balanced validation set, both from one
generated pool; :class:`CNN1DClassifier` is the small 1-D CNN that suits it. Generating the pool takes a
few seconds and is done once per process and setting.

The defaults were chosen by measurement (``benchmarks/embedded_default_study.py``, results in
``benchmarks/results/embedded_default.md``): with ``COMPARE_SETTINGS`` (600 steps of 64 samples, validation
every 25 steps) natural sampling keeps a head recall near 0.9 that upsampling at T = 5 lowers, upsampling
raises tail recall, and the tail's validation loss rises far more under upsampling, each by more than the
seed noise; a run takes a few seconds on one CPU thread.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import TensorDataset

from lightning_balance.datamodule import BalancedDataModule, balanced_cross_entropy
from lightning_balance.experiments.datasets import long_tail_counts, long_tail_subset

__all__ = ["COMPARE_SETTINGS", "CNN1DClassifier", "LongTailMNIST1D", "long_tail_mnist1d", "mnist1d_pool"]

#: Length of every MNIST-1D signal.
SEQUENCE_LENGTH = 40
NUM_CLASSES = 10
#: The comparison budget the defaults were chosen for (``CompareSettings`` / ``--max-steps``, ``--val-every``).
COMPARE_SETTINGS = {"max_steps": 600, "val_every": 25}


def _import_mnist1d() -> Any:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "LongTailMNIST1D needs the `mnist1d` package (it generates the data, nothing is downloaded):"
            " pip install mnist1d"
        ) from err
    return get_dataset_args, make_dataset


@functools.lru_cache(maxsize=8)
def _cached_pool(per_class: int, seed: int, overrides: tuple[tuple[str, Any], ...]) -> tuple[np.ndarray, np.ndarray]:
    get_dataset_args, make_dataset = _import_mnist1d()
    args = get_dataset_args()
    for key, value in overrides:
        if not hasattr(args, key):
            raise ValueError(f"Unknown MNIST-1D generator argument {key!r}; see mnist1d.data.get_dataset_args().")
        setattr(args, key, value)
    args.num_samples = per_class * NUM_CLASSES
    args.train_split = 1.0
    args.seed = seed
    # make_dataset seeds the global `random` and `numpy.random` generators: keep the caller's streams intact.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.ascontiguousarray(data["x"], dtype=np.float32)
    y = np.ascontiguousarray(data["y"], dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def mnist1d_pool(
    per_class: int, seed: int = 0, dataset_args: Optional[Mapping[str, Any]] = None
) -> tuple[np.ndarray, np.ndarray]:
    """A balanced MNIST-1D pool of ``per_class`` examples of each of the 10 classes, ``(x [N, 40], y [N])``.

    Args:
        per_class: examples per class.
        seed: seed of the generator (the same seed gives the same pool).
        dataset_args: overrides of ``mnist1d.data.get_dataset_args()`` (e.g. ``{"iid_noise_scale": 0.1}``);
            ``num_samples``, ``train_split`` and ``seed`` are set from the other arguments.

    The pool is generated once per process and setting (a few seconds for 6000 examples) and the global
    ``random``/``numpy.random`` states are left as they were. The returned arrays are copies.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"Expected argument `per_class` to be a positive integer, but got {per_class!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Expected argument `seed` to be a non-negative integer, but got {seed!r}.")
    overrides = tuple(sorted((dataset_args or {}).items()))
    for key in ("num_samples", "train_split", "seed"):
        if key in dict(overrides):
            raise ValueError(f"`dataset_args` may not set {key!r}: it is set from the builder's own arguments.")
    x, y = _cached_pool(per_class, seed, overrides)
    return x.copy(), y.copy()


def long_tail_mnist1d(
    n_max: int = 500,
    imbalance_factor: float = 100.0,
    val_per_class: int = 500,
    data_seed: int = 0,
    dataset_args: Optional[Mapping[str, Any]] = None,
) -> tuple[TensorDataset, TensorDataset]:
    r"""Long-tailed MNIST-1D training set and balanced validation set, ``(train, val)`` TensorDatasets.

    One pool of ``n_max + val_per_class`` examples per class is generated; ``val_per_class`` of every class
    form the validation set and class ``i`` keeps :math:`\lfloor n_{max} (1/IF)^{i/9} \rfloor` of the rest
    for training. Inputs are ``float32`` of shape ``[N, 40]``, labels ``int64``.

    Example:
        >>> train, val = long_tail_mnist1d(n_max=500, imbalance_factor=100, val_per_class=500)  # doctest: +SKIP
        >>> torch.bincount(train.tensors[1]).tolist(), len(val)  # doctest: +SKIP
        ([500, 299, 179, 107, 64, 38, 23, 13, 8, 5], 5000)
    """
    for name, value in (("n_max", n_max), ("val_per_class", val_per_class)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value!r}.")
    counts = long_tail_counts(n_max, NUM_CLASSES, imbalance_factor)
    x, y = mnist1d_pool(n_max + val_per_class, seed=data_seed, dataset_args=dataset_args)
    rng = np.random.default_rng(data_seed)
    val_idx = np.sort(
        np.concatenate([rng.choice(np.flatnonzero(y == c), val_per_class, replace=False) for c in range(NUM_CLASSES)])
    )
    rest = np.setdiff1d(np.arange(len(y)), val_idx)
    train_idx = rest[long_tail_subset(y[rest], counts, seed=data_seed)]
    train = TensorDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
    val = TensorDataset(torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx]))
    return train, val


class LongTailMNIST1D(BalancedDataModule):
    r"""Long-tailed MNIST-1D (signals of 40 points, 10 classes), generated at set-up, no download.

    Class ``i`` keeps :math:`\lfloor n_{max} (1/IF)^{i/9} \rfloor` training examples; the validation set holds
    ``val_per_class`` examples of every class, disjoint from training. With the defaults (``n_max = 500``,
    IF = 100) training holds 500, 299, 179, 107, 64, 38, 23, 13, 8, 5 examples: classes 0-3 are the head
    (more than 100), 4-6 the medium and 7-9 the tail (fewer than 20) of the absolute split. The groups are the
    class labels.

    Args:
        n_max: training examples of the largest class (class 0).
        imbalance_factor: ratio of the largest to the smallest class.
        val_per_class: validation examples per class.
        data_seed: seed of the generator and of the split (independent of the sampling ``seed``).
        dataset_args: overrides of the MNIST-1D generator's arguments (noise scales, shear...).
        **kwargs: everything :class:`BalancedDataModule` takes (``strategy``, ``temperature``, ``batch_size``...).

    Example:
        >>> dm = LongTailMNIST1D(strategy="upsample", temperature=5.0)  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> dm.group_counts.tolist(), len(dm.val_dataset)  # doctest: +SKIP
        ([500, 299, 179, 107, 64, 38, 23, 13, 8, 5], 5000)
    """

    def __init__(
        self,
        n_max: int = 500,
        imbalance_factor: float = 100.0,
        val_per_class: int = 500,
        data_seed: int = 0,
        dataset_args: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("batch_size", 64)
        super().__init__(**kwargs)
        self.n_max = n_max
        self.imbalance_factor = imbalance_factor
        self.val_per_class = val_per_class
        self.data_seed = data_seed
        self.dataset_args = dict(dataset_args or {})
        self.num_classes = NUM_CLASSES
        self.num_features = SEQUENCE_LENGTH

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:
            return
        self.train_dataset, self.val_dataset = long_tail_mnist1d(
            self.n_max, self.imbalance_factor, self.val_per_class, self.data_seed, self.dataset_args
        )
        self.test_dataset = self.val_dataset


class CNN1DClassifier(LightningModule):
    """A small 1-D CNN for ``(x, y)`` batches of signals ``[B, L]`` (or ``[B, 1, L]``).

    Three convolutions with stride 2 and ReLU (the shape of the MNIST-1D reference CNN), a global max over
    positions (``pooling="max"``: the digit's position in the signal is random, so the features should not
    depend on it; ``"flatten"`` is the reference CNN), then a linear layer. Adam with L2 weight decay and, by
    default, a cosine decay of the learning rate to 0 over the Trainer's steps, so the final model (the one
    the comparison reports) is not a snapshot of a noisy iterate.

    Like :class:`~lightning_balance.experiments.models.MLPClassifier` it reduces a per-sample loss with
    :func:`~lightning_balance.balanced_loss`, returns ``{"preds": logits, "target": labels}`` from
    ``validation_step`` and defines ``per_sample_loss(batch)`` and ``embed(batch)``.

    Args:
        num_features: length of the input signal.
        num_classes: output classes.
        channels: channels of every convolution.
        lr: (initial) learning rate of Adam.
        weight_decay: L2 penalty (Adam's ``weight_decay``).
        pooling: ``"max"`` or ``"mean"`` over positions, or ``"flatten"`` (position-dependent features).
        schedule: ``"cosine"`` (decay to 0 over ``trainer.estimated_stepping_batches``) or ``"constant"``.

    Example:
        >>> model = CNN1DClassifier(num_features=40, num_classes=10)
        >>> model(torch.zeros(2, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_features: int = SEQUENCE_LENGTH,
        num_classes: int = NUM_CLASSES,
        channels: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 1e-3,
        pooling: str = "max",
        schedule: str = "cosine",
    ) -> None:
        super().__init__()
        if pooling not in ("flatten", "max", "mean"):
            raise ValueError(f"Expected argument `pooling` to be 'flatten', 'max' or 'mean', but got {pooling!r}.")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"Expected argument `schedule` to be 'constant' or 'cosine', but got {schedule!r}.")
        self.save_hyperparameters()
        reduce: nn.Module = {"flatten": nn.Flatten(), "max": nn.AdaptiveMaxPool1d(1), "mean": nn.AdaptiveAvgPool1d(1)}[
            pooling
        ]
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            reduce,
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.body(torch.zeros(1, 1, num_features)).shape[1]
        self.head = nn.Linear(width, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def embed(self, batch: Any) -> torch.Tensor:
        """The flattened convolutional features of the batch's inputs, ``[B, features]``."""
        return self._features(batch[0])

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        """Cross-entropy of every sample, ``[B]``."""
        x, y = batch[0], batch[1]
        return F.cross_entropy(self(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # Through the logits, so that the logit-adjusted loss (strategy="logit_adjust") can train this model too;
        # under every other strategy it is balanced_loss of the per-sample cross-entropy.
        loss = balanced_cross_entropy(self, self(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        return {"preds": logits, "target": y}

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        if hp["schedule"] == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
