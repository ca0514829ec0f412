"""Groups that are not the labels (domains, languages) and head/medium/tail splits that could be empty."""

import json

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch.utils.data import TensorDataset

from lightning_balance import BalancedDataModule
from lightning_balance.experiments.cli import main
from lightning_balance.experiments.runner import compare, resolve_split
from lightning_balance.experiments.settings import CompareSettings, ComponentSpec, ConfigurationError, default_runs
from tests.helpers import DomainDataset

TINY = dict(max_steps=6, val_every=3)


class Domains(BalancedDataModule):
    """Three domains of 300, 60 and 10 examples, independent of the three labels; the validation set names its
    examples' domains in `groups`, in a shuffled order."""

    def __init__(self, val_groups=True, **kwargs):
        kwargs.setdefault("batch_size", 16)
        super().__init__(**kwargs)
        self.num_classes = 3
        self.val_groups = val_groups

    def setup(self, stage=None):
        if self.train_dataset is None:
            self.train_dataset = DomainDataset([300, 60, 10], seed=0)
            self.val_dataset = DomainDataset([40, 40, 40], seed=1)
            if not self.val_groups:
                val = self.val_dataset
                self.val_dataset = TensorDataset(val.x, val.y, val.groups)  # the domains, but no `groups`


class GroupAccuracySpy(Callback):
    """Per-group accuracy and loss of the model on the validation set, computed here independently."""

    def __init__(self):
        self.points = []

    def on_validation_epoch_end(self, trainer, pl_module):
        data = trainer.datamodule.val_dataset
        with torch.no_grad():
            logits = pl_module(data.x)
        correct = (logits.argmax(1) == data.y).double()
        losses = F.cross_entropy(logits, data.y, reduction="none").double()
        self.points.append({
            "step": trainer.global_step,
            "accuracy": [float(correct[data.groups == g].mean()) for g in range(3)],
            "loss": [float(losses[data.groups == g].mean()) for g in range(3)],
        })


def test_accuracy_and_loss_per_group_come_from_the_validation_groups():
    spy = GroupAccuracySpy()
    settings = CompareSettings(seeds=[0], split="quantile", trainer_kwargs={"callbacks": [spy]}, **TINY)
    result = compare(ComponentSpec(Domains), runs=default_runs(only=["natural", "upsample"]), settings=settings,
                     progress=False)
    assert result.settings["label_groups"] is False and result.settings["group_counts"] == [300, 60, 10]
    natural = result.runs[0]
    assert [p["step"] for p in natural.curve] == [3, 6]
    for point, expected in zip(natural.curve, spy.points[:2], strict=True):
        assert point["per_group_recall"] == pytest.approx(expected["accuracy"], abs=1e-6)
        assert point["per_group_loss"] == pytest.approx(expected["loss"], abs=1e-5)
        # quantile split of three groups: one each; head = the 300, tail = the 10
        assert point["recall_head"] == pytest.approx(expected["accuracy"][0], abs=1e-6)
        assert point["recall_tail"] == pytest.approx(expected["accuracy"][2], abs=1e-6)
        assert point["recall_worst"] == pytest.approx(min(expected["accuracy"]), abs=1e-6)
        assert point["f1_tail"] != point["f1_tail"]  # NaN: F1 is per class, and these groups are not classes
    assert natural.best_metric == "recall_tail"  # tail F1 replaced by tail accuracy


def test_a_validation_set_without_groups_is_refused():
    with pytest.raises(ConfigurationError, match=r"balances groups that are not the class labels .* Give"
                                                 r" `val_dataset` a `groups` attribute"):
        compare(ComponentSpec(Domains, {"val_groups": False}), settings=CompareSettings(seeds=[0], **TINY),
                progress=False)


def test_baselines_that_need_class_counts_are_refused_by_name(tmp_path, capsys):
    args = ["compare", "--datamodule", "tests.test_experiments_groups.Domains", "--seeds", "1", "--max-steps", "4",
            "--val-every", "2", "--no-progress", "--out", str(tmp_path / "out")]
    assert main([*args, "--strategies", "natural,class_balanced,logit_adjust_posthoc"]) == 2
    err = capsys.readouterr().err
    assert ("`--strategies` includes class_balanced, logit_adjust_posthoc, which weight or shift the loss by"
            " per-class counts, but `--datamodule` Domains balances groups that are not the class labels") in err
    assert "Leave them out, e.g. --strategies natural." in err
    assert not (tmp_path / "out").exists()
    # Without --strategies the default set leaves them out and says so.
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Left out logit_adjust_posthoc: they weight or shift the loss per class" in out
    assert "accuracy and loss are measured per group, from the validation set's `groups`" in out
    assert "Head acc" in out and "Tail acc" in out
    names = [r["name"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]]
    assert names == ["natural", "upsample", "upweight", "cooldown"]


def test_auto_split_keeps_every_part_non_empty():
    settings = CompareSettings(split="auto")
    assert resolve_split([124, 74, 44, 26, 16, 9, 5, 3, 2, 1], settings) == ("absolute", None)
    assert resolve_split([500] * 9 + [300], settings) == ("quantile", None)  # nothing at or below 100
    split, warning = resolve_split([500] * 9 + [300], CompareSettings(split="absolute"))
    assert split == "absolute"
    assert "leaves the medium and the tail without groups" in warning and "Use --split quantile" in warning


def test_the_command_warns_when_the_split_leaves_a_part_empty(tmp_path, capsys):
    args = ["compare", "--seeds", "1", "--max-steps", "4", "--val-every", "2", "--no-progress", "--strategies",
            "natural", "--data", "digits", "--datamodule-args", "imbalance_factor=1", "val_per_class=10",
            "batch_size=8"]
    assert main([*args, "--out", str(tmp_path / "a"), "--split", "absolute"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Warning: The absolute split (head: more than 100 training examples, tail: fewer than 20) leaves the" in out
    assert "Use --split quantile" in out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # --split auto
    out = " ".join(capsys.readouterr().out.split())
    assert "Warning" not in out and "Split: quantile (thirds of the groups by count)" in out
    settings = json.loads((tmp_path / "b" / "results.json").read_text())["settings"]
    assert (settings["split"], settings["split_requested"]) == ("quantile", "auto")
