import csv
import math

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_balance.callbacks import TailRecallMonitor
from lightning_balance.functional.tail_recall import tail_recall

# head {0, 1}, medium {2, 3}, tail {4, 5}; class 5 never occurs in the validation set.
COUNTS = [300, 120, 60, 30, 15, 5]
NUM_CLASSES = len(COUNTS)
NAMES = [f"val/{kind}_{name}" for kind in ("recall", "f1") for name in ("head", "medium", "tail", "macro", "worst")]


def _val_data():
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor([0] * 16 + [1] * 12 + [2] * 10 + [3] * 8 + [4] * 2)
    x = torch.randn(len(target), 4, generator=gen) + torch.nn.functional.one_hot(target, 4 + 2)[:, :4].float() * 2
    return x, target


def _train_data():
    gen = torch.Generator().manual_seed(1)
    target = torch.cat([torch.full((n // 5,), c) for c, n in enumerate(COUNTS)])
    x = torch.randn(len(target), 4, generator=gen)
    return x, target


class _Model(LightningModule):
    """A linear classifier; ``returns`` picks what ``validation_step`` gives back."""

    def __init__(self, returns="dict"):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, NUM_CLASSES)
        self.returns = returns

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if self.returns == "dict":
            return {"loss": loss, "preds": logits}
        if self.returns == "tensor":
            return logits
        if self.returns == "loss":
            return loss
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*_train_data()), batch_size=16, shuffle=False)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*_val_data()), batch_size=10)


def _trainer(tmp_path, monitor, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    return Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _logged_rows(trainer, prefix="val/"):
    with open(f"{trainer.logger.log_dir}/metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if row.get(f"{prefix}recall_macro")]


def _expected(model, counts=COUNTS):
    x, target = _val_data()
    model.eval()
    with torch.no_grad():
        return tail_recall(model(x), target, counts)


def _assert_row_matches(row, expected, prefix="val/"):
    for name in ("head", "medium", "tail", "macro", "worst"):
        for logged, value in ((f"recall_{name}", expected[name]), (f"f1_{name}", expected[f"f1_{name}"])):
            got, want = float(row[prefix + logged]), value.item()
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-5, abs=1e-7), logged


@pytest.mark.parametrize("returns", ["dict", "tensor", "loss", "none"])
def test_logs_every_name_with_the_values_of_a_direct_computation(tmp_path, returns):
    model = _Model(returns)
    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=COUNTS), num_sanity_val_steps=2)
    trainer.fit(model)
    rows = _logged_rows(trainer)
    assert len(rows) == 1
    assert set(NAMES) <= set(rows[0])
    expected = _expected(model)
    # class 5 is absent: the tail is class 4 alone, and the values are real numbers, not NaN.
    assert expected["tail"].item() == pytest.approx(expected["per_class"][4].item())
    _assert_row_matches(rows[0], expected)


def test_metric_is_reset_every_epoch(tmp_path):
    class EpochDependent(_Model):
        # Epoch 0 is always right; epoch 1 always says class 0. Accumulating over epochs would mix the two.
        def validation_step(self, batch, batch_idx):
            x, y = batch
            preds = y.clone() if self.current_epoch == 0 else torch.zeros_like(y)
            return {"preds": preds}

    model = EpochDependent()
    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=COUNTS), max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model)
    rows = _logged_rows(trainer)
    assert len(rows) == 2
    _, target = _val_data()
    _assert_row_matches(rows[0], tail_recall(target, target, COUNTS))
    _assert_row_matches(rows[1], tail_recall(torch.zeros_like(target), target, COUNTS))
    assert float(rows[1]["val/recall_tail"]) == 0.0


def test_per_class_values_and_prefix(tmp_path):
    model = _Model()
    monitor = TailRecallMonitor(class_counts=COUNTS, log_per_class=True, prefix="valid_")
    trainer = _trainer(tmp_path, monitor, num_sanity_val_steps=0)
    trainer.fit(model)
    (row,) = _logged_rows(trainer, prefix="valid_")
    expected = _expected(model)
    _assert_row_matches(row, expected, prefix="valid_")
    for c in range(5):
        assert float(row[f"valid_recall_class_{c}"]) == pytest.approx(expected["per_class"][c].item(), rel=1e-5)
        assert float(row[f"valid_f1_class_{c}"]) == pytest.approx(expected["per_class_f1"][c].item(), rel=1e-5)
    assert math.isnan(float(row["valid_recall_class_5"])) and math.isnan(float(row["valid_f1_class_5"]))


# ----------------------------------------------------------------------------- counts from the DataModule
class _DictDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


class _DuckDataModule(LightningDataModule):
    """Not a BalancedDataModule: it only has `group_counts` and `group_key`, set in `setup`."""

    group_key = "label"

    def setup(self, stage):
        x, y = _train_data()
        self.train_set = _DictDataset(x, y)
        self.group_counts = torch.bincount(y, minlength=NUM_CLASSES) * 5  # the training counts, as COUNTS

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=16)

    def val_dataloader(self):
        return DataLoader(_DictDataset(*_val_data()), batch_size=10)


class _DictModel(_Model):
    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch["features"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch["features"]), batch["label"])


def test_counts_and_target_key_come_from_the_datamodule(tmp_path):
    model = _DictModel()
    # Neither counts nor target key given: both are read from the DataModule; the inputs are found by name.
    trainer = _trainer(tmp_path, TailRecallMonitor(input_key="features"), num_sanity_val_steps=0)
    trainer.fit(model, datamodule=_DuckDataModule())
    assert trainer.datamodule.group_counts.tolist() == COUNTS
    (row,) = _logged_rows(trainer)
    _assert_row_matches(row, _expected(model))


def test_with_balanced_datamodule(tmp_path):
    datamodule = pytest.importorskip("lightning_balance.datamodule")

    class ToyData(datamodule.BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = TensorDataset(*_train_data())
            self.val_dataset = TensorDataset(*_val_data())

    model = _Model("loss")
    trainer = _trainer(tmp_path, TailRecallMonitor(), num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="head split has no classes"):
        trainer.fit(model, datamodule=ToyData(strategy="natural", batch_size=16))
    counts = trainer.datamodule.group_counts
    assert counts.tolist() == [n // 5 for n in COUNTS]  # all below 100: no head, logged as NaN
    assert math.isnan(float(_logged_rows(trainer)[0]["val/recall_head"]))
    (row,) = _logged_rows(trainer)
    _assert_row_matches(row, _expected(model, counts))


def test_plain_datamodule_without_counts_is_an_error_that_asks_for_class_counts(tmp_path):
    class Plain(LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(*_train_data()), batch_size=16)

        def val_dataloader(self):
            return DataLoader(TensorDataset(*_val_data()), batch_size=10)

    trainer = _trainer(tmp_path, TailRecallMonitor())
    with pytest.raises(MisconfigurationException, match=r"a Plain without `group_counts`.*class_counts=\.\.\."):
        trainer.fit(_Model(), datamodule=Plain())
    trainer = _trainer(tmp_path, TailRecallMonitor())
    with pytest.raises(MisconfigurationException, match=r"no DataModule.*class_counts=\.\.\."):
        trainer.fit(_Model())


# ----------------------------------------------------------------------------------------------- errors
def test_wrong_number_of_counts_names_class_counts(tmp_path):
    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=[300, 50, 5]), num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match=r"number of classes, 3 \(the length of `class_counts`\)"):
        trainer.fit(_Model())


def test_forward_that_does_not_return_a_tensor(tmp_path):
    class DictForward(_Model):
        def forward(self, x):
            return {"logits": self.layer(x)}

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch[0])["logits"], batch[1])

        def validation_step(self, batch, batch_idx):
            return None

    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=COUNTS), num_sanity_val_steps=0)
    with pytest.raises(MisconfigurationException, match=r"got a dict, not a tensor of logits.*'preds'"):
        trainer.fit(DictForward())


def test_missing_target_key(tmp_path):
    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=COUNTS, target_key=3), num_sanity_val_steps=0)
    with pytest.raises(MisconfigurationException, match=r"batch\[3\].*TailRecallMonitor\(target_key=\.\.\.\)"):
        trainer.fit(_Model())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_counts": [5, -1]}, "non-negative"),
        ({"split": "ranked"}, "Expected argument `split`"),
        ({"prefix": None}, "Expected argument `prefix`"),
        ({"input_key": 1.0}, "Expected argument `input_key`"),
        ({"target_key": True}, "Expected argument `target_key`"),
        ({"few": 200}, "few=200 and many=100"),
    ],
)
def test_constructor_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TailRecallMonitor(**kwargs)


def test_domain_groups_are_not_taken_for_class_counts():
    from lightning_balance import BalancedDataModule
    from lightning_balance.callbacks import TailRecallMonitor
    from tests.helpers import DomainDataset, ToyModel
    from tests.helpers import trainer as make_trainer

    class Domains(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DomainDataset([300, 60, 10])
            self.val_dataset = self.train_dataset

    with pytest.raises(MisconfigurationException, match="not the class labels"):
        make_trainer(max_steps=1, limit_val_batches=1, callbacks=[TailRecallMonitor()]).fit(
            ToyModel(num_classes=3), Domains(batch_size=8)
        )


def test_a_diverged_model_logs_zero_recall_not_perfect_head_recall(tmp_path):
    class Diverged(_Model):
        def validation_step(self, batch, batch_idx):
            return {"preds": torch.full((len(batch[0]), NUM_CLASSES), float("nan"))}

    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=COUNTS), num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="48 of 48 prediction rows held NaN or inf"):
        trainer.fit(Diverged())
    (row,) = _logged_rows(trainer)
    for name in ("head", "medium", "tail", "macro", "worst"):
        assert float(row[f"val/recall_{name}"]) == 0.0 and float(row[f"val/f1_{name}"]) == 0.0


def test_the_extra_forward_pass_treats_nan_logits_the_same_way(tmp_path):
    class Diverged(_Model):
        def forward(self, x):
            return self.layer(x) * float("nan")

        def validation_step(self, batch, batch_idx):
            return None  # the monitor calls forward itself

    trainer = _trainer(tmp_path, TailRecallMonitor(class_counts=COUNTS), num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="48 of 48 prediction rows held NaN or inf"):
        trainer.fit(Diverged())
    (row,) = _logged_rows(trainer)
    assert float(row["val/recall_head"]) == 0.0 and float(row["val/recall_macro"]) == 0.0
