"""Guards for DataModule behaviours that were once broken: each test here failed on an earlier version."""

import os
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch.utils.data import TensorDataset, default_collate

from lightning_balance import (
    BalancedDataModule,
    Cooldown,
    GroupIndex,
    Reordered,
    TemperatureSampler,
    balanced_loss,
    scalarization_weights,
)
from tests.helpers import RecordIndices, ToyData, ToyModel, trainer

SIZES = (300, 60, 12, 4)


class LabelRecorder(ToyModel):
    """Records the labels of every training batch and the group ids the DataModule holds for it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.labels, self.groups = [], []

    def training_step(self, batch, batch_idx):
        self.labels.append(batch[1].detach().cpu().clone())
        self.groups.append(self.trainer.datamodule._batch_groups.clone())
        return super().training_step(batch, batch_idx)


# ---------------------------------------------------------------------------------------------- 1. a second setup()
class Reshuffled(BalancedDataModule):
    """Long-tailed labels; every `setup()` builds a new, reshuffled training set (or reshuffles it in place)."""

    def __init__(self, in_place=False, **kwargs):
        super().__init__(**kwargs)
        self.in_place = in_place
        self.calls = 0

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(self.calls)
        self.calls += 1
        if self.in_place and self.train_dataset is not None:
            x, y = self.train_dataset.tensors
            perm = torch.randperm(len(y), generator=g)
            x.copy_(x[perm].clone())
            y.copy_(y[perm].clone())
            return
        y = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
        y = y[torch.randperm(len(y), generator=g)]
        self.train_dataset = TensorDataset(torch.randn(len(y), 4, generator=g) + y[:, None].float(), y)


@pytest.mark.parametrize("in_place", [
    pytest.param(False, id="new-dataset"),
    pytest.param(True, id="in-place"),
])
def test_groups_follow_the_dataset_of_a_second_setup(in_place):
    dm = Reshuffled(in_place=in_place, strategy="upsample", temperature=float("inf"), batch_size=16, seed=1)
    dm.setup("fit")
    assert dm.group_counts.tolist() == list(SIZES)  # the groups of the first training set are read
    dm.train_dataloader()
    model = LabelRecorder()
    trainer(max_steps=25).fit(model, dm)  # calls setup() again: another order of the examples
    assert dm.calls == 2
    labels = torch.cat(model.labels).numpy()
    drawn = np.bincount(labels, minlength=len(SIZES))
    # At T = inf the labels (the groups) are drawn uniformly; stale groups would draw them about naturally.
    assert chisquare(drawn, np.full(len(SIZES), len(labels) / len(SIZES))).pvalue > 1e-3, drawn
    assert torch.equal(torch.cat(model.groups), torch.from_numpy(labels))


# ---------------------------------------------------------------------------------------------- 2. reordering
def _sort_by_label(samples):
    x, y = default_collate(samples)
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


def _sort_by_label_reordered(samples):
    order = sorted(range(len(samples)), key=lambda i: int(samples[i][1]))
    return Reordered(default_collate([samples[i] for i in order]), order)


@pytest.mark.parametrize("strategy", ["upweight", "upsample"])
def test_a_collate_that_reorders_the_batch_is_refused(strategy):
    dm = ToyData(strategy=strategy, temperature=5.0, batch_size=16)
    dm.collate_fn = _sort_by_label
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="reordered the samples.*Reordered"):
        for _, _batch in zip(range(5), dm.train_dataloader(), strict=False):
            pass


class CheckedWeights(ToyModel):
    """Checks in every step that the DataModule's group ids are the batch's labels and the loss is weighted by them."""

    def __init__(self):
        super().__init__()
        self.checked = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        dm = self.trainer.datamodule
        assert torch.equal(dm._batch_groups, y)
        losses = F.cross_entropy(self(x), y, reduction="none")
        loss = balanced_loss(self, losses)
        weights = scalarization_weights(list(SIZES), 5.0).to(losses.dtype)[y]
        torch.testing.assert_close(loss, (losses * weights).mean())
        self.checked += 1
        return loss


def test_reordered_from_the_collate_keeps_the_weights_on_their_samples():
    dm = ToyData(strategy="upweight", temperature=5.0, batch_size=16)
    dm.collate_fn = _sort_by_label_reordered
    model = CheckedWeights()
    trainer(max_steps=6).fit(model, dm)
    assert model.checked == 6


class PermutingHook(ToyModel):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        order = torch.argsort(y, stable=True)
        return x[order], y[order]


def test_a_module_hook_that_reorders_the_batch_is_refused():
    dm = ToyData(strategy="upweight", temperature=5.0, batch_size=16)
    with pytest.raises(RuntimeError, match="PermutingHook.on_after_batch_transfer` reordered the samples.*Reordered"):
        trainer(max_steps=5).fit(PermutingHook(), dm)


# ---------------------------------------------------------------------------------------------- 4. resume checks
class Relabelled(ToyData):
    """ToyData whose labels are permuted by `label_seed`: the same dataset size and group sizes, other labels."""

    def __init__(self, label_seed=0, **kwargs):
        super().__init__(**kwargs)
        self.label_seed = label_seed

    def setup(self, stage=None):
        super().setup(stage)
        if self.label_seed:
            x, y = self.train_dataset.tensors
            y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(self.label_seed))]
            self.train_dataset = TensorDataset(x, y)


def _fit(path, max_steps, ckpt_path=None, **kwargs):
    options = dict(strategy="upsample", temperature=5.0, batch_size=8, samples_per_epoch=80, seed=4)
    options.update(kwargs)
    dm = Relabelled(**options)
    fit = trainer(max_steps=max_steps, default_root_dir=path)
    fit.fit(ToyModel(), dm, ckpt_path=ckpt_path)
    return fit


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "saved.ckpt"
    _fit(tmp_path, 3).save_checkpoint(path)
    return path


@pytest.mark.parametrize("change, match", [
    (dict(temperature=2.0), "configuration changed: temperature 5.0 -> 2.0"),
    (dict(temperature=Cooldown(5.0, 1.0, 0.5)), "temperature 5.0 -> Cooldown"),
    pytest.param(dict(label_seed=1), "configuration changed: the training examples' group ids"),
])
def test_resume_with_another_configuration_warns_naming_it(tmp_path, checkpoint, change, match):
    with pytest.warns(UserWarning, match=match):
        _fit(tmp_path / "resumed", 5, ckpt_path=checkpoint, **change)


def test_resume_with_another_seed_is_refused(tmp_path, checkpoint):
    match = r"Cannot resume the sampler: the checkpoint has seed=4 but this \w+ has seed=5"
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path / "resumed", 5, ckpt_path=checkpoint, seed=5)


# ---------------------------------------------------------------------------------------------- 5. natural epochs
def test_natural_sampling_is_one_pass_over_the_data_per_epoch():
    sizes = (40, 6, 1, 1)  # singleton groups too
    dm = ToyData(sizes=sizes, strategy="natural", batch_size=8, seed=3)
    recorder = RecordIndices()
    trainer(max_epochs=3, callbacks=[recorder]).fit(ToyModel(), dm)
    steps_per_epoch = sum(sizes) // 8
    assert len(recorder.steps) == 3 * steps_per_epoch
    epochs = [sum(recorder.steps[e * steps_per_epoch : (e + 1) * steps_per_epoch], []) for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(sum(sizes)))  # every example exactly once
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


# ---------------------------------------------------------------------------------------------- 6. bad input
def _as_module(dm):
    """What `balanced_loss` reads from a LightningModule inside `Trainer.fit(model, datamodule=dm)`."""
    return SimpleNamespace(_trainer=SimpleNamespace(datamodule=dm))


@pytest.mark.parametrize("groups, error, match", [
    (torch.tensor([0, -1, 2]), ValueError, r"ids in \[0, 4\)"),
    (torch.tensor([0, 4, 2]), ValueError, r"ids in \[0, 4\)"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer group ids"),
])
def test_balanced_loss_refuses_bad_groups(groups, error, match):
    dm = ToyData(strategy="upweight", temperature=5.0)
    dm.setup("fit")
    with pytest.raises(error, match=match):
        balanced_loss(_as_module(dm), torch.ones(3), groups=groups)


class WrongShapeLoss(ToyModel):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.shape == "scalar":
            return balanced_loss(self, F.cross_entropy(self(x), y))
        per_token = F.cross_entropy(self(x), y, reduction="none")[:, None].expand(-1, 3)
        return balanced_loss(self, per_token)


@pytest.mark.parametrize("shape", ["scalar", "per-token"])
@pytest.mark.parametrize("strategy", ["upweight", "upsample", "natural"])
def test_a_loss_that_is_not_per_sample_is_refused_under_every_strategy(strategy, shape):
    # Under every strategy, so that a module written against upsampling does not break when switched to upweighting.
    dm = ToyData(strategy=strategy, temperature=5.0 if strategy != "natural" else 1.0, batch_size=8)
    with pytest.raises(RuntimeError, match="reduction='none'"):
        trainer(max_steps=2).fit(WrongShapeLoss(shape), dm)


def test_batch_size_none_is_refused_at_construction():
    with pytest.raises(ValueError, match="`batch_size` to be a positive integer.*got None"):
        ToyData(strategy="upsample", batch_size=None)


def test_a_schedule_class_instead_of_an_instance_is_refused():
    with pytest.raises(TypeError, match="the class Cooldown. Instantiate it"):
        ToyData(strategy="upsample", temperature=Cooldown)


def test_numpy_scalars_are_accepted():
    dm = ToyData(strategy="upsample", temperature=5.0, batch_size=np.int64(8), seed=np.int64(3))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    reference = ToyData(strategy="upsample", temperature=5.0, batch_size=8, seed=3)
    reference.setup("fit")
    assert torch.equal(batch.indices, next(iter(reference.train_dataloader())).indices)
    assert len(batch.indices) == 8


@pytest.mark.parametrize("groups, kwargs, match", [
    ([[0, 1], [1]], {}, "ragged"),
    ([0, 1, 1], {"num_groups": 2.5}, "`num_groups` to be a positive integer"),
    ([0, 1, 1], {"num_groups": 0}, "`num_groups` to be a positive integer"),
])
def test_group_index_refuses_bad_input_clearly(groups, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupIndex(groups, **kwargs)


@pytest.mark.parametrize("build", [
    lambda schedule: ToyData(strategy="upsample", temperature=schedule),
    lambda schedule: TemperatureSampler([0, 1, 1], schedule, total_steps=10),
], ids=["datamodule", "sampler"])
def test_a_schedule_of_the_wrong_arity_is_named(build):
    with pytest.raises(TypeError, match=r"temperature schedule <lambda> could not be called as schedule\(progress\)"):
        build(lambda: 1.0)


# ---------------------------------------------------------------------------------------------- 7. dataloader alone
class Unpacking(ToyModel):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return balanced_loss(self, F.cross_entropy(self(x), y, reduction="none"))


@pytest.mark.parametrize("model", [
    pytest.param(Unpacking, id="unpacks"),
    pytest.param(ToyModel, id="indexes"),
])
def test_fitting_on_the_train_dataloader_alone_says_to_pass_the_datamodule(model):
    dm = ToyData(strategy="upsample", temperature=5.0, batch_size=8)
    dm.setup("fit")
    with pytest.raises(TypeError, match="datamodule=dm"):
        trainer(max_steps=2).fit(model(), train_dataloaders=dm.train_dataloader())


# ---------------------------------------------------------------------------------------------- 8. weights cache
def test_loss_weights_on_the_device_are_cached_per_temperature():
    dm = ToyData(strategy="upweight", temperature=5.0)
    dm.setup("fit")
    device = torch.device("meta")  # stands in for an accelerator: a copy would be a new tensor
    weights = dm.loss_weights(device)
    assert weights.device == device
    assert dm.loss_weights(device) is weights
    assert dm.loss_weights() is dm.loss_weights()
    torch.testing.assert_close(dm.loss_weights(), scalarization_weights(list(SIZES), 5.0))


# ---------------------------------------------------------------------------------------------- 9. one-step excursion
_EXCURSION = 50_001  # the one optimizer step of 100,000 at T = inf


def _excursion(progress):
    return float("inf") if 0.500005 < progress < 0.500015 else 1.0


def test_a_one_step_excursion_in_a_long_run_is_drawn_at_its_temperature():
    groups = np.zeros(10_000, dtype=np.int64)
    groups[-1] = 1  # one example of 10,000: p = 1e-4 at T = 1, 1/2 at T = inf
    sampler = TemperatureSampler(groups, _excursion, step_size=4, total_steps=100_000, seed=2)
    at = _EXCURSION * 4
    tail = groups[sampler._indices(at - 400, at + 404).numpy()] == 1
    # Two of the step's four draws are the tail example; the 100 steps either side draw it at most once.
    assert tail[400:404].sum() == 2 and tail[:400].sum() <= 1 and tail[404:].sum() <= 1
    mixture = sampler.mixture
    assert [mixture.temperature_at(s) for s in (_EXCURSION - 1, _EXCURSION, _EXCURSION + 1)] == [1.0, float("inf"), 1.0]


class OneExample(BalancedDataModule):
    def setup(self, stage=None):
        y = torch.zeros(10_000, dtype=torch.long)
        y[-1] = 1
        self.train_dataset = TensorDataset(torch.randn(len(y), 2), y)


def test_a_one_step_excursion_through_the_datamodule():
    dm = OneExample(strategy="upsample", temperature=_excursion, batch_size=4, total_steps=100_000, seed=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    groups = {}
    for step in (_EXCURSION - 1, _EXCURSION, _EXCURSION + 1):
        dm.sampler.set_position(step * 4)
        groups[step] = next(iter(loader)).groups.tolist()
    assert groups[_EXCURSION] == [0, 1, 0, 1] or sorted(groups[_EXCURSION]) == [0, 0, 1, 1]
    assert sum(groups[_EXCURSION - 1]) + sum(groups[_EXCURSION + 1]) <= 1
    mixture = dm.mixture()
    for step in (0, _EXCURSION - 1, _EXCURSION, _EXCURSION + 1, 99_999):
        dm.trainer = SimpleNamespace(global_step=step)  # what current_temperature reads of a Trainer
        assert dm.current_temperature() == dm.temperature_at(step) == mixture.temperature_at(step)
    assert dm.temperature_at(_EXCURSION) == float("inf")


# ---------------------------------------------------------------------------------------------- 10. huge epochs
def _rss_bytes():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_huge_epoch_costs_no_memory():
    dm = ToyData(strategy="upsample", temperature=5.0, batch_size=8, samples_per_epoch=10**12)
    dm.setup("fit")
    dm.group_counts  # noqa: B018 - the group index is built once whatever the epoch's length
    rss = _rss_bytes()
    tracemalloc.start()
    try:
        loader = dm.train_dataloader()
        batch = next(iter(loader))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(loader) == 10**12 // 8 and len(batch.indices) == 8
    assert peak < 50 * 2**20
    assert _rss_bytes() - rss < 50 * 2**20


def test_natural_epochs_that_do_not_divide_the_data_never_repeat_an_example():
    # 51 examples, 48 per epoch: like shuffle=True with drop_last, each epoch is a fresh permutation cut short.
    sizes = (40, 6, 1, 1, 3)
    dm = ToyData(sizes=sizes, strategy="natural", batch_size=8, seed=3)
    recorder = RecordIndices()
    trainer(max_epochs=3, callbacks=[recorder]).fit(ToyModel(num_classes=5), dm)
    for e in range(3):
        epoch = sum(recorder.steps[e * 6 : (e + 1) * 6], [])
        assert len(epoch) == 48 and len(set(epoch)) == 48
    counts = dm.mixture().counts(3 * 48).numpy()
    labels = dm.train_dataset.tensors[1]
    seen = np.bincount(labels[sum(recorder.steps, [])].numpy(), minlength=5)
    assert counts.tolist() == seen.tolist()
