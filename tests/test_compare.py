"""The comparison runner through `lightning_balance.compare`: runs, aggregation, files written, and every
configuration error."""

import csv
import json
import math
import signal

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from lightning_balance import BalancedDataModule, Cooldown, balanced_loss
from lightning_balance.compare import (
    CompareSettings,
    ComponentSpec,
    ConfigurationError,
    RunResult,
    check_datamodule_class,
    check_model_class,
    check_output_dir,
    check_run_arguments,
    check_trainer_arguments,
    compare,
    default_runs,
    import_object,
    smoothed_rise,
    summarize,
)
from lightning_balance.datasets import LongTailDigits
from lightning_balance.models import MLPClassifier
from lightning_balance.reporting import (
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    paired_difference,
    summary_markdown,
    summary_table,
    verdict,
    write_compare_outputs,
)

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


class DivergingModel(MLPClassifier):
    """The digits MLP with a learning rate that sends its weights to infinity within two steps."""

    def __init__(self, **kwargs):
        kwargs.setdefault("lr", 1.0e30)
        super().__init__(**kwargs)


class _DictDigits(Dataset):
    """The digits as mappings ``{"x": features, "y": label}``; ``targets`` are the groups."""

    def __init__(self, dataset):
        self.x, self.targets = dataset.tensors

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.targets[i]}


class DictDigits(SmallDigits):
    """SmallDigits whose batches are dicts with keys "x" and "y"."""

    def setup(self, stage=None):
        super().setup(stage)
        if not isinstance(self.train_dataset, _DictDigits):
            self.train_dataset = _DictDigits(self.train_dataset)
            self.val_dataset = _DictDigits(self.val_dataset)


class DictModel(MLPClassifier):
    """Reads dict batches; `validation_step` returns nothing, so the runner reads the batch itself."""

    def training_step(self, batch, batch_idx):
        return balanced_loss(self, F.cross_entropy(self(batch["x"]), batch["y"], reduction="none"))

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self(batch["x"]), batch["y"]))


class DictLogitsModel(DictModel):
    """Returns {"logits": ..., "targets": ...} from `validation_step`."""

    def validation_step(self, batch, batch_idx):
        return {"logits": self(batch["x"]), "targets": batch["y"]}


class _OddKeys(_DictDigits):
    def __getitem__(self, i):
        return {"pixels": self.x[i], "digit": self.targets[i]}


class OddKeyDigits(SmallDigits):
    def setup(self, stage=None):
        super().setup(stage)
        if not isinstance(self.train_dataset, _OddKeys):
            self.train_dataset = _OddKeys(self.train_dataset)
            self.val_dataset = _OddKeys(self.val_dataset)


class OddKeyModel(MLPClassifier):
    def training_step(self, batch, batch_idx):
        return balanced_loss(self, F.cross_entropy(self(batch["pixels"]), batch["digit"], reduction="none"))

    def validation_step(self, batch, batch_idx):
        return None


class InterruptedModel(MLPClassifier):
    """Training of the second model built is interrupted (Ctrl-C) at its third step."""

    built = 0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        type(self).built += 1
        self.number = type(self).built

    def training_step(self, batch, batch_idx):
        if self.number == 3 and self.global_step == 2:  # the probe is the first model, the runs come after
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


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
        assert len(run.curve[-1]["per_group_recall"]) == len(run.curve[-1]["per_group_loss"]) == 10
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
        "summary.csv", "runs.csv", "curves.csv", "results.json", "summary.md", "curves.png", "tradeoff.png"}
    assert all(files[k].stat().st_size > 1000 for k in ("curves_plot", "tradeoff_plot"))

    with open(files["summary"]) as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == list(SUMMARY_COLUMNS)
    assert [row["name"] for row in summary] == ["natural", "upweight"]
    with open(files["runs"]) as f:
        runs = list(csv.DictReader(f))
    assert list(runs[0]) == list(RUN_COLUMNS) and len(runs) == 4
    with open(files["curves"]) as f:
        assert len(list(csv.DictReader(f))) == 8  # 4 runs x 2 validations

    data = json.loads(files["json"].read_text())
    assert set(data) == {"complete", "settings", "summary", "runs"} and data["complete"] is True
    assert [row["complete"] for row in summary] == ["True", "True"]
    assert data["settings"]["runs_planned"] == data["settings"]["runs_finished"] == 4
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
    assert "Diverged" not in table  # the column appears only when a run diverged
    assert verdict(tiny_result.summary, tiny_result.runs) == []  # no upsample run to compare with


# ------------------------------------------------------------------ diverged runs
def test_a_diverged_run_is_flagged_stops_and_is_left_out_of_the_summary():
    result = compare(ComponentSpec(SmallDigits), ComponentSpec(DivergingModel, {}, "--model"),
                     runs=default_runs(only=["upweight"]), settings=CompareSettings(seeds=[0], **TINY), progress=False)
    (run,) = result.runs
    assert run.diverged and run.diverged_at == 3
    assert run.steps == 3  # stopped at the validation that found it, not at max_steps=6
    assert run.curve[-1]["val_nonfinite"] > 0 or run.curve[-1]["train_nonfinite"]
    row = result.summary[0]
    assert row["diverged"] == 1 and row["seeds"] == 1
    assert math.isnan(row["recall_head_mean"])  # a diverged model's "recall" is not a measurement
    assert result.all_diverged
    text = summary_markdown(result.summary)
    assert "| Diverged |" in text.splitlines()[0] and "| 1/1 | diverged |" in text


def _run(name, seed, final, diverged=False, rise=None):
    return RunResult(name, "T=5", name, seed, 100, 3200, 1.0, 1, final, 20, 1.0, 20, [], diverged=diverged,
                     diverged_at=20 if diverged else None, tail_loss_rise=rise)


def _finals(recall_tail, recall_head=0.9):
    return {"recall_tail": recall_tail, "recall_head": recall_head, "f1_tail": recall_tail,
            "recall_worst": recall_tail, "loss_tail": 1.0}


def test_a_diverged_strategy_never_wins_a_verdict():
    runs = [_run("upsample", s, _finals(0.9), diverged=True) for s in range(3)]
    runs += [_run("upweight", s, _finals(0.5)) for s in range(3)]
    lines = verdict(summarize(runs), runs)
    assert "upsample in 3/3 seeds" in lines[1]
    assert "upweight is the one that trains: upsample diverged in every seed." in lines[2]
    assert not any("upsample is better" in line for line in lines)
    # Diverged in one seed of three, ahead on the other two: still no win.
    runs = [_run("upsample", s, _finals(0.9 + 0.01 * s), diverged=s == 0) for s in range(3)]
    runs += [_run("upweight", s, _finals(0.5)) for s in range(3)]
    lines = verdict(summarize(runs), runs)
    tail = next(line for line in lines if line.startswith("  tail recall"))
    assert "upsample ahead by" in tail and "on the 2 seeds where both trained" in tail and "no win" in tail


def test_the_table_says_diverged_instead_of_a_constant_prediction_s_recall():
    runs = [_run("upsample", 0, _finals(0.1, recall_head=1.0), diverged=True), _run("upweight", 0, _finals(0.5))]
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(summary_table(summarize(runs)))
    text = console.export_text()
    assert "Div" in text and "diverged" in text.split("upsample")[1].splitlines()[0]
    assert "1/1" in text.split("upsample")[1].splitlines()[0]
    assert "1.000" not in text


# ------------------------------------------------------------------ paired statistics
def test_verdict_pairs_the_seeds_and_uses_the_t_quantile():
    # Seeds differ a lot from each other, upsample beats upweight by 0.02 in every seed: only pairing sees it.
    base = [0.5, 0.7, 0.9]
    runs = [_run("upsample", s, _finals(b + 0.02 + 0.001 * s)) for s, b in enumerate(base)]
    runs += [_run("upweight", s, _finals(b)) for s, b in enumerate(base)]
    stat = paired_difference(runs, "upsample", "upweight", "recall_tail")
    assert stat["pairs"] == 3 and stat["t_quantile"] == pytest.approx(4.303, abs=1e-3)
    assert stat["difference"] == pytest.approx(0.021)
    line = next(x for x in verdict(summarize(runs), runs) if x.startswith("  tail recall"))
    assert line.startswith("  tail recall: upsample is better by 0.021 (95% CI")
    # Paired differences 0.02, 0.04, 0.09: more than 2 standard errors from 0, not more than t(0.975, 2) = 4.30.
    diffs = [0.02, 0.04, 0.09]
    runs = [_run("upsample", s, _finals(b + d)) for s, (b, d) in enumerate(zip(base, diffs, strict=True))]
    runs += [_run("upweight", s, _finals(b)) for s, b in enumerate(base)]
    stat = paired_difference(runs, "upsample", "upweight", "recall_tail")
    assert 2 * stat["standard_error"] < stat["difference"] < stat["t_quantile"] * stat["standard_error"]
    line = next(x for x in verdict(summarize(runs), runs) if x.startswith("  tail recall"))
    assert line.startswith("  tail recall: no clear difference (+0.050, 95% CI")


def test_smoothed_rise_separates_noise_from_a_trend():
    noisy = [3.0, 2.0, 1.0, 1.1, 0.9, 1.1, 0.9, 1.1, 0.9, 1.1]
    assert noisy[-1] - min(noisy) == pytest.approx(0.2)  # the raw rise of a flat, noisy curve
    assert smoothed_rise(noisy) < 0.05
    assert smoothed_rise([3.0, 2.0, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4]) == pytest.approx(0.6)
    assert math.isnan(smoothed_rise([math.nan]))


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


# ------------------------------------------------------------------ dict batches
@pytest.mark.parametrize("model", [DictModel, DictLogitsModel])
def test_dict_batches(model):
    result = compare(ComponentSpec(DictDigits), ComponentSpec(model, {}, "--model"),
                     runs=default_runs(only=["upweight"]), settings=CompareSettings(seeds=[0], **TINY), progress=False)
    (run,) = result.runs
    assert [p["step"] for p in run.curve] == [3, 6] and not run.diverged
    assert 0 <= run.final["recall_macro"] <= 1 and math.isfinite(run.final["loss_all"])


def test_dict_batches_with_unknown_keys_say_what_validation_step_must_return():
    with pytest.raises(ConfigurationError, match=r"`--model` .*OddKeyModel: cannot find the labels of a validation"
                                                 r" batch of type dict \(its keys: \['digit', 'pixels'\]\)\."
                                                 r" `validation_step` should return \{'preds': logits"):
        compare(ComponentSpec(OddKeyDigits), ComponentSpec(OddKeyModel, {}, "--model"),
                runs=default_runs(only=["natural"]), settings=CompareSettings(seeds=[0], **TINY), progress=False)


def test_the_default_model_refuses_dict_batches_before_training():
    with pytest.raises(ConfigurationError, match=r"yields mappings \(keys \['x', 'y'\]\), but the default model"):
        compare(ComponentSpec(DictDigits), runs=default_runs(only=["natural"]),
                settings=CompareSettings(seeds=[0], **TINY), progress=False)


# ------------------------------------------------------------------ interruption
def test_an_interrupted_comparison_keeps_its_finished_runs():
    InterruptedModel.built = 0
    handler = signal.getsignal(signal.SIGINT)
    written = []
    result = compare(ComponentSpec(SmallDigits), ComponentSpec(InterruptedModel, {}, "--model"),
                     runs=default_runs(only=["natural", "upweight"]), settings=CompareSettings(seeds=[0], **TINY),
                     progress=False, on_run=written.append)
    assert not result.complete
    assert [run.name for run in result.runs] == ["natural"]
    assert result.settings["interrupted"] == "upweight seed 0"
    assert (result.settings["runs_finished"], result.settings["runs_planned"]) == (1, 2)
    assert [len(w.runs) for w in written] == [1] and not written[0].complete  # written as it finished
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's "ignore Ctrl-C" does not outlive the run


# ------------------------------------------------------------------ Trainer settings
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_epochs=3), r"Cannot honour the Trainer argument `trainer.max_epochs`=3 .* give `max_steps`"),
        (dict(max_time="00:01:00:00"), r"`trainer.max_time`"),
        (dict(limit_train_batches=0.5), r"`trainer.limit_train_batches`=0.5"),
        (dict(fast_dev_run=True), r"`trainer.fast_dev_run`=True .* --quick"),
        (dict(check_val_every_n_epoch=1), r"`trainer.check_val_every_n_epoch`=1 .* set it to null"),
        (dict(max_steps=5), r"`trainer_kwargs` sets `max_steps`=5: the runner sets it from `max_steps`"),
        (dict(accumulate_grad_batches=0), r"`accumulate_grad_batches` to be a positive integer, but got 0"),
    ],
)
def test_trainer_settings_a_comparison_cannot_honour_are_refused(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        CompareSettings(trainer_kwargs=kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(devices=0), r"Expected `--devices` to be a positive number of devices, -1 \(all\), 'auto' or device"
                          r" ids such as '0,1', but got 0"),
        (dict(devices="0"), r"but got '0'"),
        (dict(accelerator="tpu"), r"`--accelerator` 'tpu' is not available on this machine \(available: \["),
        (dict(accelerator="abacus"), r"Expected `--accelerator` to be one of"),
        (dict(precision="7"), r"Expected `--precision` to be one of .* but got '7'. Give e.g. --precision 32-true"),
        (dict(num_nodes=0), r"Expected `--num_nodes` to be a positive number of machines"),
        (dict(gradient_clip=1.0), r"`--gradient_clip` is not a Trainer argument"),
    ],
)
def test_hardware_settings_are_checked(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        check_trainer_arguments(kwargs, {key: f"--{key}" for key in kwargs})
    check_trainer_arguments({"devices": "0,1", "accelerator": "cpu", "precision": "bf16-mixed", "num_nodes": 1})


def test_a_negative_learning_rate_of_the_default_model_is_refused_before_training():
    settings = CompareSettings(seeds=[0], **TINY)
    model = ComponentSpec(MLPClassifier, {"lr": -1.0}, "--model", size_from_data=True)
    checked = []
    with pytest.raises(ConfigurationError, match=r"`--model` MLPClassifier.configure_optimizers\(\) refused its"
                                                 r" settings: Invalid learning rate: -1.0. Check --model-args"):
        compare(ComponentSpec(SmallDigits), model, runs=default_runs(only=["natural"]), settings=settings,
                progress=False, on_checked=checked.append)
    assert not checked


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


def test_verdict_without_the_runs_says_it_needs_them():
    runs = [_run(name, s, _finals(0.5)) for name in ("upsample", "upweight") for s in range(2)]
    lines = verdict(summarize(runs))
    assert "pass the runs too, verdict(result.summary, result.runs)" in lines[1]
    assert not any(line.startswith("  tail recall") for line in lines)
