"""The comparison runner: runs, aggregation, files written, and every configuration error."""

import csv
import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_balance import BalancedDataModule, Cooldown
from lightning_balance.compare import (
    CompareSettings,
    ComponentSpec,
    ConfigurationError,
    RunResult,
    check_datamodule_class,
    check_model_class,
    check_output_dir,
    check_run_arguments,
    compare,
    default_runs,
    import_object,
    summarize,
)
from lightning_balance.datasets import LongTailDigits
from lightning_balance.models import MLPClassifier
from lightning_balance.reporting import RUN_COLUMNS, SUMMARY_COLUMNS, summary_markdown, verdict, write_compare_outputs

TINY = dict(max_steps=6, val_every=3)


# ------------------------------------------------------------------ user code the errors are about
class SmallDigits(LongTailDigits):
    """Digits with a smaller validation set, to keep the runs fast."""

    def __init__(self, **kwargs):
        kwargs.setdefault("val_per_class", 10)
        kwargs.setdefault("batch_size", 16)
        super().__init__(**kwargs)


class EmptyData(BalancedDataModule):
    def setup(self, stage=None):
        self.train_dataset = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
        self.val_dataset = self.train_dataset


class SingleClassData(BalancedDataModule):
    def setup(self, stage=None):
        self.train_dataset = TensorDataset(torch.randn(40, 4), torch.zeros(40, dtype=torch.long))
        self.val_dataset = self.train_dataset


class NoValidationData(BalancedDataModule):
    def setup(self, stage=None):
        self.train_dataset = TensorDataset(torch.randn(40, 4), torch.tensor([0] * 30 + [1] * 10))


class UnseenValidationClassData(BalancedDataModule):
    """Validation label 2 is not a training group (the training set has groups 0 and 1)."""

    def setup(self, stage=None):
        self.train_dataset = TensorDataset(torch.randn(40, 4), torch.tensor([0] * 30 + [1] * 10))
        self.val_dataset = TensorDataset(torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0]))


class PlainMeanModel(MLPClassifier):
    """Reduces its loss with a plain mean: upweighting would silently do nothing."""

    def training_step(self, batch, batch_idx):
        return self.per_sample_loss(batch).mean()


class NoTrainingStep(torch.nn.Module):
    pass


# ------------------------------------------------------------------ what runs
def test_default_runs_and_labels():
    runs = default_runs(5.0, 0.5, saln_keep=0.5)
    assert [r.name for r in runs] == ["natural", "upsample", "upweight", "cooldown", "saln"]
    assert [r.strategy for r in runs] == ["natural", "upsample", "upweight", "upsample", "natural"]
    assert isinstance(runs[3].temperature, Cooldown) and runs[3].temperature.at == 0.5
    assert runs[3].label == "T=5→1 at 50%" and runs[4].saln_keep == 0.5
    assert [r.name for r in default_runs(only=["upweight", "natural"])] == ["natural", "upweight"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(only=["oversample"]), r"Expected `only` to name runs among .* got \['oversample'\]"),
        (dict(only=["saln"]), r"`only` names 'saln' but SALN is off: add --saln"),
    ],
)
def test_default_runs_rejects_unknown_names(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        default_runs(**kwargs)


@pytest.mark.parametrize(
    ("temperature", "cooldown_at", "match"),
    [
        (0, 0.5, r"Expected argument `temperature` to be > 0 .* but got 0.0\. .* e.g. --temperature 5"),
        (math.nan, 0.5, r"Expected argument `temperature` to be > 0 .* but got nan"),
        (-2.0, 0.5, r"but got -2.0"),
        ("5", 0.5, r"Expected argument `temperature` to be a positive float"),
        (5.0, 2, r"Expected argument `cooldown_at` to be the fraction of training in \[0, 1\] .* but got 2\."
                 r" .* e.g. --cooldown-at 0.5"),
        (5.0, math.nan, r"`cooldown_at` .* but got nan"),
    ],
)
def test_run_arguments_are_validated(temperature, cooldown_at, match):
    with pytest.raises(ConfigurationError, match=match):
        check_run_arguments(temperature, cooldown_at)
    with pytest.raises(ConfigurationError, match=match):
        default_runs(temperature, cooldown_at)
    assert check_run_arguments(math.inf, 1) == (math.inf, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_steps=0), r"Expected `max_steps` to be a positive integer, but got 0"),
        (dict(val_every=2.5), r"Expected `val_every` to be a positive integer, but got 2.5"),
        (dict(seeds=[]), r"Expected `seeds` to be distinct integers"),
        (dict(tail_target=1.5), r"Expected `tail_target` to be a recall in \[0, 1\], but got 1.5"),
        (dict(trainer_kwargs={"strategy": "ddp_spawn"}), r"`strategy='ddp_spawn'` .* Use --strategy ddp"),
        (dict(few=200), r"Expected argument `few` to be <= `many` .* got few=200 and many=100.* e.g. --many 100"),
        (dict(many=-1), r"Expected argument `many` to be a finite, non-negative training count, but got -1"),
        (dict(few=math.nan), r"Expected argument `few` to be a finite, non-negative training count, but got nan"),
        (dict(split="thirds"), r"Expected argument `split` to be one of"),
    ],
)
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        CompareSettings(**kwargs)


# ------------------------------------------------------------------ a real comparison
@pytest.fixture(scope="module")
def tiny_result():
    settings = CompareSettings(seeds=[0, 1], tail_target=0.0, **TINY)
    return compare(ComponentSpec(SmallDigits), runs=default_runs(only=["natural", "upweight"]), settings=settings,
                   progress=False)


def test_runs_and_curves(tiny_result):
    assert [(r.name, r.seed) for r in tiny_result.runs] == [("natural", 0), ("natural", 1), ("upweight", 0),
                                                            ("upweight", 1)]
    for run in tiny_result.runs:
        assert run.steps == 6 and run.samples_seen == 6 * 16 and run.world_size == 1
        assert [p["step"] for p in run.curve] == [3, 6]
        assert run.final["recall_tail"] == run.curve[-1]["recall_tail"]
        # tail_target 0 is reached at the first validation
        assert run.steps_to_tail_target == 3
        assert len(run.curve[-1]["per_class_recall"]) == 10
        assert 0 <= run.final["recall_worst"] <= run.final["recall_macro"] <= 1
        assert run.tail_loss_min == min(p["loss_tail"] for p in run.curve)
    dm = SmallDigits()
    dm.setup("fit")
    assert tiny_result.settings["group_counts"] == dm.group_counts.tolist()


def test_same_seed_same_start_and_different_seeds_differ(tiny_result):
    natural = [r for r in tiny_result.runs if r.name == "natural"]
    assert natural[0].curve[0]["loss_all"] != natural[1].curve[0]["loss_all"]


def test_summary_is_mean_and_std_of_the_runs(tiny_result):
    rows = {row["name"]: row for row in tiny_result.summary}
    for name, row in rows.items():
        finals = [r.final["recall_tail"] for r in tiny_result.runs if r.name == name]
        assert row["seeds"] == 2
        assert row["recall_tail_mean"] == pytest.approx(sum(finals) / 2)
        assert row["recall_tail_std"] == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))
        assert row["steps_mean"] == 6 and row["samples_seen_mean"] == 96
        assert row["tail_target_reached"] == "2/2" and row["steps_to_tail_target_mean"] == 3


def test_summarize_single_seed_and_unreached_target():
    run = RunResult("upsample", "T=5", "upsample", 0, 10, 320, 1.0, 1, {"recall_tail": 0.4, "loss_tail": 2.0}, None,
                    1.5, 5, [])
    row = summarize([run], tail_target=0.5)[0]
    assert row["recall_tail_mean"] == 0.4 and math.isnan(row["recall_tail_std"])
    assert row["tail_target_reached"] == "0/1" and math.isnan(row["steps_to_tail_target_mean"])
    assert row["tail_loss_rise_mean"] == pytest.approx(0.5)


def test_files_written_match_the_runs(tiny_result, tmp_path):
    files = write_compare_outputs(tiny_result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "summary.csv", "runs.csv", "curves.csv", "results.json", "curves.png", "tradeoff.png"}
    assert all(files[k].stat().st_size > 1000 for k in ("curves_plot", "tradeoff_plot"))

    with open(files["summary"]) as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == SUMMARY_COLUMNS
    assert [row["name"] for row in summary] == ["natural", "upweight"]
    with open(files["runs"]) as f:
        runs = list(csv.DictReader(f))
    assert list(runs[0]) == RUN_COLUMNS and len(runs) == 4
    with open(files["curves"]) as f:
        assert len(list(csv.DictReader(f))) == 8  # 4 runs x 2 validations

    data = json.loads(files["json"].read_text())
    assert set(data) == {"settings", "summary", "runs"}
    assert data["settings"]["max_steps"] == 6 and data["settings"]["seeds"] == [0, 1]
    for row_csv, row_json, run in zip(runs, data["runs"], tiny_result.runs, strict=True):
        expected = run.final["recall_tail"]
        assert float(row_csv["recall_tail"]) == pytest.approx(row_json["final"]["recall_tail"]) == expected
        assert int(row_csv["samples_seen"]) == row_json["samples_seen"] == 96
    for row_csv, row_json in zip(summary, data["summary"], strict=True):
        assert float(row_csv["recall_head_mean"]) == pytest.approx(row_json["recall_head_mean"])


def test_markdown_and_verdict(tiny_result):
    table = summary_markdown(tiny_result.summary)
    assert table.count("\n") == 3 and "| natural | T=1 |" in table
    assert verdict(tiny_result.summary) == []  # no upsample run to compare with


# ------------------------------------------------------------------ errors
def test_import_path_that_does_not_resolve():
    with pytest.raises(ConfigurationError, match=r"Cannot import `--datamodule` 'no_such_pkg.Data': No module named"):
        import_object("no_such_pkg.Data", "--datamodule")
    with pytest.raises(ConfigurationError, match=r"Cannot import `--model` 'Data': it names no module"):
        import_object("Data", "--model")
    with pytest.raises(ConfigurationError, match=r"`--model` 'missing.py:Model': no file 'missing.py'"):
        import_object("missing.py:Model", "--model")


@pytest.mark.parametrize(
    "path", ["lightning_balance.datasets", "lightning_balance.functional.spectral", "torch.nn", "lightning_balance"]
)
def test_import_path_that_names_a_module(path):
    with pytest.raises(ConfigurationError, match=rf"Cannot import `--datamodule` '{path}': it names a module, not a"
                                                 r" class; a class path like `package.module.ClassName` is expected"):
        import_object(path, "--datamodule")


def test_import_from_a_file(tmp_path, monkeypatch):
    (tmp_path / "my_data_file.py").write_text("class Thing:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    assert import_object("my_data_file.py:Thing").__name__ == "Thing"


def test_datamodule_that_is_not_balanced():
    from lightning.pytorch import LightningDataModule

    with pytest.raises(ConfigurationError, match=r"`--datamodule` .*LightningDataModule is not a subclass of"
                                                 r" lightning_balance.BalancedDataModule \(it is a plain"):
        check_datamodule_class(LightningDataModule)


def test_model_that_is_not_a_lightning_module():
    with pytest.raises(ConfigurationError, match=r"`--model` .*NoTrainingStep is not a LightningModule subclass"):
        check_model_class(NoTrainingStep)
    from lightning.pytorch import LightningModule

    with pytest.raises(ConfigurationError, match=r"does not define `training_step`"):
        check_model_class(LightningModule)


def test_model_that_bypasses_balanced_loss():
    with pytest.raises(ConfigurationError, match=r"`training_step` did not reduce its loss with"
                                                 r" `lightning_balance.balanced_loss`"):
        compare(ComponentSpec(SmallDigits), ComponentSpec(PlainMeanModel, argument="--model"),
                runs=default_runs(only=["upweight"]), settings=CompareSettings(seeds=[0], **TINY), progress=False)


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (EmptyData, r"`--datamodule` EmptyData has an empty training set"),
        (SingleClassData, r"`--datamodule` SingleClassData has a single group in its training set \(group sizes"
                          r" \[40\]\): there is nothing to balance"),
        (NoValidationData, r"`--datamodule` NoValidationData has no validation set"),
        (UnseenValidationClassData, r"`--datamodule` UnseenValidationClassData has validation labels that are not"
                                    r" training groups: 2 \(2 examples\), but the training set has groups 0..1\."
                                    r" Use the same label ids"),
    ],
)
def test_datasets_that_cannot_be_compared(cls, match):
    with pytest.raises(ConfigurationError, match=match):
        compare(ComponentSpec(cls), settings=CompareSettings(seeds=[0], **TINY), progress=False)


def test_batch_size_larger_than_the_training_set_of_digits():
    with pytest.raises(ConfigurationError, match=r"`--batch-size` 100000 is larger than the \d+ training examples of"
                                                 r" SmallDigits .* Lower --batch-size .* to at most \d+\."):
        compare(ComponentSpec(SmallDigits, {"batch_size": 100000}), settings=CompareSettings(seeds=[0], **TINY),
                progress=False)


def test_validation_label_check_at_validation_time():
    """Labels that the data check cannot read up front are checked before the validation loss is computed."""
    from lightning_balance.compare import check_validation_labels

    check_validation_labels(torch.tensor([0, 1, 1]), 2, "`--datamodule` X")
    with pytest.raises(ConfigurationError, match=r"`--datamodule` X has validation labels that are not training"
                                                 r" groups: -1, 5 \(2 examples\)"):
        check_validation_labels(torch.tensor([0, -1, 5]), 2, "`--datamodule` X")


def test_bad_constructor_arguments():
    with pytest.raises(ConfigurationError, match=r"Cannot build `--datamodule` .*SmallDigits\(.*'colour': 'red'.*"
                                                 r"Check --datamodule-args"):
        compare(ComponentSpec(SmallDigits, {"colour": "red"}), settings=CompareSettings(seeds=[0], **TINY),
                progress=False)
    with pytest.raises(ConfigurationError, match=r"Cannot build `--model` .*MLPClassifier.*Check --model-args"):
        compare(ComponentSpec(SmallDigits), ComponentSpec(MLPClassifier, {"depth": 3}, "--model"),
                settings=CompareSettings(seeds=[0], **TINY), progress=False)
    with pytest.raises(ConfigurationError, match=r"Cannot build `--datamodule` .*SmallDigits\(.*'batch_size': 0.*"
                                                 r"Expected argument `batch_size` to be a positive integer, but got 0."
                                                 r" Check --datamodule-args"):
        compare(ComponentSpec(SmallDigits, {"batch_size": 0}), settings=CompareSettings(seeds=[0], **TINY),
                progress=False)


def test_output_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match=r"Cannot write to `--out` '.*a_file/runs': .*Choose a writable"):
        check_output_dir(blocker / "runs")
    assert check_output_dir(tmp_path / "new" / "dir").is_dir()
    # create=False checks without creating anything
    with pytest.raises(ConfigurationError, match=r"Cannot write to `--out` .*a_file/runs': .*is not a directory"):
        check_output_dir(blocker / "runs", create=False)
    assert check_output_dir(tmp_path / "later" / "dir", create=False) == tmp_path / "later" / "dir"
    assert not (tmp_path / "later").exists()


def test_saln_run_trains_on_the_kept_samples():
    pytest.importorskip("lightning_balance.callbacks.saln")
    result = compare(ComponentSpec(SmallDigits), runs=default_runs(saln_keep=0.5, only=["saln"]),
                     settings=CompareSettings(seeds=[0], **TINY), progress=False)
    (run,) = result.runs
    assert run.name == "saln" and run.samples_seen == 6 * 8


# ------------------------------------------------------------------ several processes
def _cli(args, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "lightning_balance", "compare", "--seeds", "1", "--max-steps", "6",
               "--val-every", "3", "--only", "natural,upweight", "--no-progress", "--accelerator", "cpu",
               "--datamodule-args", "val_per_class=10", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.ddp
def test_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """Two DDP ranks of 8 train on the single-process batches of 16; metrics are summed over ranks; rank 0 writes."""
    _cli(["--batch-size", "16", "--out", "single"], tmp_path)
    _cli(["--batch-size", "8", "--devices", "2", "--strategy", "ddp", "--out", "ddp"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # the other rank wrote nothing
    single = json.loads((tmp_path / "single" / "results.json").read_text())["runs"]
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())["runs"]
    for one, two in zip(single, ddp, strict=True):
        assert (one["world_size"], two["world_size"]) == (1, 2)
        assert one["samples_seen"] == two["samples_seen"] == 6 * 16
        for p, q in zip(one["curve"], two["curve"], strict=True):
            assert p["step"] == q["step"]
            for key in ("loss_all", "loss_tail", "recall_macro", "recall_tail", "f1_head"):
                assert p[key] == pytest.approx(q[key], abs=1e-5), key


def test_domain_groups_are_refused_with_a_clear_error():
    from lightning_balance import BalancedDataModule
    from lightning_balance.compare import ConfigurationError, check_datamodule
    from tests.helpers import DomainDataset

    class Domains(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DomainDataset([300, 60, 10])
            self.val_dataset = self.train_dataset

    with pytest.raises(ConfigurationError, match="not the class labels"):
        check_datamodule(Domains())
