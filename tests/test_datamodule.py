import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import TensorDataset

from lightning_balance import (
    BalancedDataModule,
    Cooldown,
    balanced_loss,
    scalarization_weights,
    temperature_probs,
    weighted_mean,
)
from tests.helpers import DomainDataset, RecordIndices, ToyData, ToyModel, trainer


def test_unknown_strategy():
    with pytest.raises(ValueError, match="`strategy` to be one of .* but got 'oversample'"):
        BalancedDataModule(strategy="oversample")


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "`temperature` to be > 0"),
    ({"temperature": float("nan")}, "`temperature` to be > 0"),
    ({"temperature": lambda p: 0.0}, "returned 0.0 at progress 0.0"),
    ({"temperature": Cooldown(5.0, 1.0, 0.5).__class__(5.0, 1.0, 0.5), "normalize": "sum"}, "`normalize`"),
    ({"batch_size": 0}, "`batch_size` to be a positive integer"),
    ({"num_workers": -1}, "`num_workers`"),
])
def test_invalid_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BalancedDataModule(strategy="upsample", **kwargs)


def test_natural_with_temperature_warns():
    with pytest.warns(UserWarning, match="ignores `temperature=5.0`"):
        BalancedDataModule(strategy="natural", temperature=5.0)


def test_missing_train_dataset():
    with pytest.raises(RuntimeError, match="train_dataset` is not set"):
        BalancedDataModule().train_dataloader()


def test_groups_of_different_length_than_the_dataset():
    class Mismatch(ToyData):
        def train_groups(self):
            return [0] * 10

    dm = Mismatch()
    dm.setup()
    with pytest.raises(ValueError, match="returned 10 group ids but the training set has 376 examples"):
        dm.train_dataloader()


def test_dataset_without_groups():
    class NoGroups(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = torch.utils.data.Subset(TensorDataset(torch.zeros(5, 2)), [0, 1])

    dm = NoGroups()
    dm.setup()
    with pytest.raises(AttributeError, match="override `NoGroups.train_groups\\(\\)`"):
        dm.train_dataloader()


def test_loss_weights_per_strategy():
    for strategy, expected in (
        ("natural", torch.ones(4, dtype=torch.float64)),
        ("upsample", torch.ones(4, dtype=torch.float64)),
        ("upweight", scalarization_weights([300, 60, 12, 4], 5.0)),
    ):
        dm = ToyData(strategy=strategy, temperature=5.0 if strategy != "natural" else 1.0)
        dm.setup()
        torch.testing.assert_close(dm.loss_weights(), expected)


def test_reduce_loss_applies_weights_of_the_batch_groups():
    dm = ToyData(strategy="upweight", temperature=5.0)
    dm.setup()
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    groups = torch.tensor([0, 3, 3, 1])
    w = scalarization_weights([300, 60, 12, 4], 5.0)[groups].float()
    torch.testing.assert_close(dm.reduce_loss(losses, groups), (w * losses).sum() / 4)
    dm.normalize = "weights"
    torch.testing.assert_close(dm.reduce_loss(losses, groups), (w * losses).sum() / w.sum())


def test_weighted_mean_validates_shapes():
    with pytest.raises(RuntimeError, match="reduction='none'"):
        weighted_mean(torch.ones(3, 2), torch.ones(3))
    with pytest.raises(RuntimeError, match="one weight per sample"):
        weighted_mean(torch.ones(3), torch.ones(4))


def test_upweighted_loss_is_unbiased_for_the_temperature_loss():
    # Each sample's loss is a function of its group; the mean of the weighted batch losses under the
    # natural loader must approach sum_g p_g(T) * L_g, the loss of temperature sampling.
    dm = ToyData(strategy="upweight", temperature=5.0, batch_size=32, samples_per_epoch=32 * 200)
    dm.setup()
    group_loss = torch.tensor([0.1, 1.0, 3.0, 10.0])
    values = []
    for epoch in range(10):
        loader = dm.train_dataloader()
        dm.sampler.set_epoch(epoch)
        for batch in loader:
            y = batch.batch[1]
            assert torch.equal(batch.groups, y)  # the groups are the labels here
            values.append(float(dm.reduce_loss(group_loss[y], y)))
    expected = float((temperature_probs([300, 60, 12, 4], 5.0) * group_loss.double()).sum())
    natural = float((temperature_probs([300, 60, 12, 4], 1.0) * group_loss.double()).sum())
    assert np.mean(values) == pytest.approx(expected, rel=0.03)
    assert abs(np.mean(values) - natural) > 0.5


def test_balanced_loss_is_plain_mean_without_balanced_datamodule():
    model = ToyModel()
    losses = torch.tensor([1.0, 3.0])
    assert balanced_loss(model, losses) == 2.0


@pytest.mark.parametrize("strategy", ["natural", "upsample", "upweight"])
def test_training_runs_under_every_strategy_with_the_same_module(strategy):
    dm = ToyData(strategy=strategy, temperature=5.0 if strategy != "natural" else 1.0, batch_size=8)
    recorder = RecordIndices()
    model = ToyModel()
    trainer(max_epochs=2, callbacks=[recorder]).fit(model, dm)
    assert len(recorder.steps) == 2 * (376 // 8)
    y = dm.train_dataset.tensors[1].numpy()
    drawn = np.bincount(y[np.concatenate(recorder.steps)], minlength=4)
    t = 5.0 if strategy == "upsample" else 1.0
    assert chisquare(drawn, temperature_probs([300, 60, 12, 4], t).numpy() * drawn.sum()).pvalue > 1e-4


def test_domain_groups_separate_from_labels():
    class Domains(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DomainDataset([400, 40, 4])

    dm = Domains(strategy="upsample", temperature=float("inf"), batch_size=12)
    recorder = RecordIndices()

    class Model(ToyModel):
        def training_step(self, batch, batch_idx):
            x, y, domain = batch
            losses = torch.nn.functional.cross_entropy(self(x), y, reduction="none")
            # The DataModule knows each sample's domain from the dataset index; it must agree with the batch.
            assert torch.equal(self.trainer.datamodule._batch_groups, domain)
            return balanced_loss(self, losses)

    trainer(max_epochs=3, callbacks=[recorder]).fit(Model(num_classes=3), dm)
    domains = dm.train_dataset.groups.numpy()[np.concatenate(recorder.steps)]
    assert chisquare(np.bincount(domains, minlength=3), np.full(3, len(domains) / 3)).pvalue > 1e-4


def test_upweight_with_domain_groups_uses_domain_weights():
    class Domains(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DomainDataset([400, 40, 4])

    dm = Domains(strategy="upweight", temperature=float("inf"))
    dm.setup()
    np.testing.assert_allclose(dm.loss_weights().numpy(), scalarization_weights([400, 40, 4], float("inf")).numpy())


def _two_group_data(**kwargs):
    class TwoGroups(BalancedDataModule):
        def setup(self, stage=None):
            y = torch.zeros(1000, dtype=torch.long)
            y[::250] = 1  # 4 tail examples
            self.train_dataset = TensorDataset(torch.randn(1000, 4), y)

    return TwoGroups(**kwargs)


def test_schedule_switches_inside_a_single_epoch_from_max_steps():
    dm = _two_group_data(strategy="upsample", temperature=Cooldown(float("inf"), 1.0, 0.5), batch_size=20)
    recorder = RecordIndices()
    trainer(max_steps=40, callbacks=[recorder]).fit(ToyModel(num_classes=2), dm)
    assert len(recorder.steps) == 40
    y = dm.train_dataset.tensors[1]
    tail_per_step = [int(y[s].sum()) for s in recorder.steps]
    # The epoch has 50 steps; the switch is at step 20 of 40, inside it.
    assert sum(tail_per_step[:20]) > 150 and min(tail_per_step[15:20]) >= 3
    assert sum(tail_per_step[20:]) < 6
    assert recorder.temperatures[:20] == [float("inf")] * 20 and recorder.temperatures[20:] == [1.0] * 20


def test_schedule_horizon_from_max_epochs():
    dm = _two_group_data(strategy="upweight", temperature=Cooldown(5.0, 1.0, 0.25), batch_size=100)
    recorder = RecordIndices()
    trainer(max_epochs=4, callbacks=[recorder]).fit(ToyModel(num_classes=2), dm)
    assert recorder.temperatures == [5.0] * 10 + [1.0] * 30


def test_schedule_without_training_length_fails_clearly():
    dm = _two_group_data(strategy="upsample", temperature=Cooldown(), batch_size=100)
    with pytest.raises(ValueError, match="needs the length of training: set `Trainer\\(max_steps=...\\)`"):
        trainer(max_epochs=-1, max_time="00:00:00:05").fit(ToyModel(num_classes=2), dm)


def test_explicit_total_steps():
    dm = _two_group_data(strategy="upweight", temperature=Cooldown(5.0, 1.0, 0.5), batch_size=100, total_steps=4)
    recorder = RecordIndices()
    trainer(max_epochs=-1, max_steps=6, callbacks=[recorder]).fit(ToyModel(num_classes=2), dm)
    assert recorder.temperatures == [5.0, 5.0, 1.0, 1.0, 1.0, 1.0]


def test_epoch_smaller_than_a_batch():
    dm = ToyData(batch_size=1000)
    dm.setup()
    with pytest.raises(ValueError, match="smaller than one global batch"):
        dm.train_dataloader()


def test_validation_loss_is_unweighted_and_module_hook_still_runs():
    seen = {}

    class Model(ToyModel):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            seen["calls"] = seen.get("calls", 0) + 1
            return batch

        def validation_step(self, batch, batch_idx):
            losses = torch.nn.functional.cross_entropy(self(batch[0]), batch[1], reduction="none")
            seen["val"] = (float(balanced_loss(self, losses)), float(losses.mean()))

    dm = ToyData(strategy="upweight", temperature=5.0, batch_size=8, samples_per_epoch=16)
    trainer(max_epochs=1, limit_val_batches=1).fit(Model(), dm)
    assert seen["val"][0] == pytest.approx(seen["val"][1])
    assert seen["calls"] == 3  # two training batches and one validation batch


def test_schedule_with_gradient_accumulation_switches_sampler_and_weights_together():
    # 10 batches per epoch, 3 batches per optimizer step (Lightning closes a window at every epoch end).
    dm = _two_group_data(strategy="upsample", temperature=Cooldown(float("inf"), 1.0, 0.5), batch_size=100)
    recorder = RecordIndices()
    trainer(max_epochs=4, accumulate_grad_batches=3, callbacks=[recorder]).fit(ToyModel(num_classes=2), dm)
    y = dm.train_dataset.tensors[1]
    tail_per_batch = [int(y[s].sum()) for s in recorder.steps]
    assert len(tail_per_batch) == 40
    # The sampler and the DataModule agree on the batch where the temperature changes.
    assert recorder.temperatures.index(1.0) == 20
    assert min(tail_per_batch[:20]) >= 30 and max(tail_per_batch[20:]) <= 3


def test_horizon_from_max_steps_with_accumulation():
    dm = _two_group_data(strategy="upweight", temperature=Cooldown(5.0, 1.0, 0.5), batch_size=100)
    recorder = RecordIndices()
    # 4 steps per epoch (3 + 3 + 3 + 1 batches); 6 steps = one epoch (10 batches) and two more steps (6 batches).
    trainer(max_steps=6, accumulate_grad_batches=3, callbacks=[recorder]).fit(ToyModel(num_classes=2), dm)
    assert len(recorder.temperatures) == 16
    # Cooldown(at=0.5) switches at optimizer step 3 of 6: after 3 whole windows, never inside one.
    assert recorder.temperatures == [5.0] * 9 + [1.0] * 7


def test_schedule_over_lightnings_default_epochs_warns():
    import lightning.pytorch as pl

    class StopAtOnce(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.should_stop = True

    dm = _two_group_data(strategy="upsample", temperature=Cooldown(), batch_size=500)
    with pytest.warns(UserWarning, match="spans 1000 epochs"):
        trainer(callbacks=[StopAtOnce()]).fit(ToyModel(num_classes=2), dm)  # Lightning's default of 1000 epochs
    assert dm._total_steps == 1000 * 2


def test_groups_follow_a_callback_that_keeps_part_of_the_batch():
    import lightning.pytorch as pl

    class KeepOddReversed(pl.Callback):
        def transform_train_batch(self, trainer, pl_module, batch, indices):
            keep = torch.arange(indices.numel() - 1, -1, -1)[1::2]
            return tuple(t[keep] for t in batch), indices[keep]

    class Domains(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DomainDataset([400, 40, 4])

    checked = []

    class Model(ToyModel):
        def training_step(self, batch, batch_idx):
            x, y, domain = batch
            assert torch.equal(self.trainer.datamodule._batch_groups, domain)
            checked.append(len(domain))
            losses = torch.nn.functional.cross_entropy(self(x), y, reduction="none")
            return balanced_loss(self, losses)

    dm = Domains(strategy="upweight", temperature=5.0, batch_size=12)
    trainer(max_steps=5, callbacks=[KeepOddReversed()]).fit(Model(num_classes=3), dm)
    assert checked == [6] * 5
