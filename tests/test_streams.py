"""Iterable-only sources: the group sequence from the mixture, each stream consumed in order, exact resume."""

import glob
import os

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import IterableDataset

from lightning_balance import BalancedDataModule, Mixture
from tests.helpers import ToyModel, trainer

datasets = pytest.importorskip("datasets")

SIZES = {"en": 120, "sw": 24, "yo": 6}


class _Counting(IterableDataset):
    """A stream without a length: yields (x, y, serial) for serial = 0, 1, ..., n - 1 of its group."""

    def __init__(self, group, n):
        self.group, self.n = group, n

    def __iter__(self):
        for i in range(self.n):
            yield torch.tensor([float(self.group), float(i)]), torch.tensor(self.group), torch.tensor(i)


def _hf_stream(group, n):
    data = {"x": [[float(group), float(i)] for i in range(n)], "y": [group] * n, "serial": list(range(n))}
    return datasets.Dataset.from_dict(data).to_iterable_dataset(num_shards=2)


def _collate(items):
    if isinstance(items[0], dict):
        return (torch.tensor([it["x"] for it in items]), torch.tensor([it["y"] for it in items]),
                torch.tensor([it["serial"] for it in items]))
    return tuple(torch.stack(column) for column in zip(*items, strict=True))


class Streams(BalancedDataModule):
    def __init__(self, kind="hf", **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.collate_fn = _collate

    def setup(self, stage=None):
        make = _hf_stream if self.kind == "hf" else _Counting
        self.train_sources = {name: make(g, n) for g, (name, n) in enumerate(SIZES.items())}
        self.train_source_sizes = dict(SIZES)  # neither kind of stream has a length


class Recorder(ToyModel):
    def __init__(self):
        super().__init__(num_features=2, num_classes=3)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y, serial = batch
        self.seen.append(list(zip(y.tolist(), serial.tolist(), strict=True)))
        return super().training_step((x, y), batch_idx)


def _fit(max_steps, ckpt=None, save_dir=None, kind="hf", **kwargs):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, verbose=False)
    dm = Streams(kind=kind, strategy="upsample", temperature=float("inf"), batch_size=6, seed=2, **kwargs)
    model = Recorder()
    callbacks = [ModelCheckpoint(dirpath=save_dir, every_n_train_steps=7, save_top_k=-1)] if save_dir else []
    trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(save_dir)).fit(model, dm,
                                                                                               ckpt_path=ckpt)
    return model, dm


@pytest.mark.parametrize("kind", ["hf", "plain"])
def test_streams_follow_the_mixture_and_are_read_in_order(kind):
    model, dm = _fit(30, kind=kind)
    drawn = [g for step in model.seen for g, _ in step]
    # The group sequence is the mixture's, position by position.
    expected = Mixture(list(SIZES.values()), float("inf"), seed=2).groups(0, 180).tolist()
    assert drawn == expected
    assert chisquare(np.bincount(drawn, minlength=3)).pvalue > 1e-3
    # Each stream is consumed in its own order, pass after pass: the tail's 6 items come round again and again.
    for g, n in enumerate(SIZES.values()):
        serials = [s for step in model.seen for grp, s in step if grp == g]
        if kind == "plain":
            assert serials == [i % n for i in range(len(serials))]
        else:
            for p in range(len(serials) // n):
                assert sorted(serials[p * n : (p + 1) * n]) == list(range(n))


def test_resume_brings_every_stream_back_to_its_count(tmp_path):
    full, _ = _fit(30, kind="plain")
    _fit(14, save_dir=tmp_path, kind="plain")
    checkpoint = sorted(glob.glob(os.path.join(tmp_path, "*step=14.ckpt")))[0]
    resumed, _ = _fit(30, ckpt=checkpoint, kind="plain")
    assert resumed.seen == full.seen[14:]


def test_stream_errors_are_named():
    class NoSize(Streams):
        def setup(self, stage=None):
            self.train_sources = {"en": _Counting(0, 5), "sw": _Counting(1, 3)}

    dm = NoSize(strategy="upsample", temperature=2.0, batch_size=2)
    dm.setup()
    with pytest.raises(ValueError, match="train_source_sizes"):
        dm.train_dataloader()

    class Mixed(Streams):
        def setup(self, stage=None):
            self.train_sources = {"en": _Counting(0, 5), "sw": torch.utils.data.TensorDataset(torch.zeros(3))}

    dm = Mixed(strategy="upsample", temperature=2.0, batch_size=2)
    dm.setup()
    with pytest.raises(ValueError, match="mixes streams"):
        dm.train_dataloader()

    dm = Streams(kind="hf", strategy="upsample", temperature=2.0, batch_size=2, num_workers=2)
    dm.setup()
    with pytest.raises(ValueError, match="num_workers=0"):
        dm.train_dataloader()
