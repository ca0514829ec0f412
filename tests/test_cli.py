"""`lightning-balance` commands: compare, paper, fit (LightningCLI), their files and their error messages."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_balance import Cooldown
from lightning_balance.cli import build_parser, lightning_cli, main, parse_kwargs
from lightning_balance.compare import ConfigurationError
from lightning_balance.datasets import LongTailDigits
from lightning_balance.models import MLPClassifier
from lightning_balance.reporting import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# A few steps of two strategies, one seed: every command path in a second or two.
TINY = ["--seeds", "1", "--max-steps", "4", "--val-every", "2", "--no-progress"]


def _compare(tmp_path, *extra):
    return main(["compare", *TINY, "--out", str(tmp_path / "out"), *extra])


def test_compare_writes_its_files_and_prints_the_table(tmp_path, capsys):
    code = _compare(tmp_path, "--only", "upsample,upweight", "--tail-target", "0", "--datamodule-args",
                    "val_per_class=10", "batch_size=8")
    assert code == 0
    printed = capsys.readouterr().out
    assert "Final validation metrics" in printed and "Upsample vs upweight (T=5)" in printed
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "summary.csv", "runs.csv", "curves.csv", "results.json", "curves.png", "tradeoff.png"}
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert [(r["name"], r["label"], r["seeds"], r["steps_mean"]) for r in rows] == [
        ("upsample", "T=5", "1", "4.0"), ("upweight", "T=5", "1", "4.0")]
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["datamodule"] == "lightning_balance.datasets.LongTailDigits"
    assert data["settings"]["datamodule_args"] == {"val_per_class": 10, "batch_size": 8}
    assert data["settings"]["total_wall_time_s"] > 0
    for run in data["runs"]:
        assert run["samples_seen"] == 4 * 8 and [p["step"] for p in run["curve"]] == [2, 4]
        assert run["steps_to_tail_target"] == 2
    summary = {row["name"]: row for row in data["summary"]}
    for run in data["runs"]:
        assert summary[run["name"]]["recall_tail_mean"] == pytest.approx(run["final"]["recall_tail"])


def test_compare_with_a_user_model_and_json_arguments(tmp_path):
    code = _compare(tmp_path, "--only", "natural", "--model", "lightning_balance.models.MLPClassifier",
                    "--model-args", '{"num_features": 64, "num_classes": 10, "hidden": 8}', "--batch-size", "4")
    assert code == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["settings"]["model"] == "lightning_balance.models.MLPClassifier"
    assert data["settings"]["model_args"]["hidden"] == 8
    assert data["runs"][0]["samples_seen"] == 16


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_compare_reads_a_lightning_cli_config(tmp_path, capsys, config):
    assert _compare(tmp_path, "--config", str(config), "--only", "natural") == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["settings"]["model_args"]["hidden"] == 64
    # compare sets strategy, temperature and seed itself, run by run
    assert "strategy" not in data["settings"]["datamodule_args"]
    assert "Ignoring strategy" in capsys.readouterr().out


def test_quick_flag(tmp_path):
    args = build_parser().parse_args(["compare", "--quick"])
    assert (args.quick, args.seeds, args.max_steps) == (True, 3, 1000)  # --quick applies when the command runs
    assert args.tail_target == 0.5 and args.temperature == 5.0 and args.val_every == 20


def test_saln_flag(tmp_path):
    pytest.importorskip("lightning_balance.callbacks.saln")
    assert _compare(tmp_path, "--only", "saln", "--saln", "--saln-keep", "0.25") == 0
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["name"] == "saln" and run["samples_seen"] == 4 * 8  # a quarter of 4 batches of 32


def test_hardware_arguments_reach_the_trainer(tmp_path):
    assert _compare(tmp_path, "--only", "natural", "--accelerator", "cpu", "--devices", "1") == 0
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["trainer_kwargs"] == {"accelerator": "cpu", "devices": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--datamodule", "nowhere.Data"], "Cannot import `--datamodule` 'nowhere.Data': No module named 'nowhere'"),
        (["--datamodule", "lightning.pytorch.LightningDataModule"],
         "`--datamodule` lightning.pytorch.core.datamodule.LightningDataModule is not a subclass of"
         " lightning_balance.BalancedDataModule"),
        (["--datamodule", "tests.test_compare.SingleClassData"],
         "has a single group in its training set (group sizes [40]): there is nothing to balance"),
        (["--datamodule", "tests.test_compare.EmptyData"], "`--datamodule` EmptyData has an empty training set"),
        (["--model", "tests.test_compare.NoTrainingStep"], "is not a LightningModule subclass"),
        (["--model", "tests.test_compare.PlainMeanModel", "--only", "upweight"],
         "`training_step` did not reduce its loss with `lightning_balance.balanced_loss`"),
        (["--model-args", "hidden=3"], "`--model-args` was given without `--model`"),
        (["--datamodule-args", "oops"], "Cannot read `--datamodule-args` 'oops': expected key=value"),
        (["--datamodule-args", "colour=red"], "Check --datamodule-args"),
        (["--only", "natural,bogus"], "Expected `only` to name runs among"),
        (["--strategy", "ddp_spawn"], "Use --strategy ddp"),
        (["--seeds", "0"], "Expected `--seeds` to be a positive number of seeds, but got 0"),
        (["--config", "missing.yaml"], "Cannot read `--config` 'missing.yaml'"),
        (["--quick", "--temperature", "0"], "Expected argument `temperature` to be > 0"),
        (["--quick", "--temperature", "0"], "but got 0.0. Give a positive temperature (or inf), e.g. --temperature 5."),
        (["--temperature", "nan"], "Expected argument `temperature` to be > 0"),
        (["--cooldown-at", "2"], "Expected argument `cooldown_at` to be the fraction of training in [0, 1] after"
                                 " which Cooldown samples at T=1, but got 2.0. Give a fraction, e.g."
                                 " --cooldown-at 0.5."),
        (["--few", "200"], "Expected argument `few` to be <= `many`"),
        (["--few", "200"], "few=200.0 and many=100"),
        (["--few", "200"], "e.g. --many 100 --few 20"),
        (["--many", "-1"], "Expected argument `many` to be a finite, non-negative training count, but got -1.0."),
        (["--batch-size", "0"], "Expected `--batch-size` to be a positive number of samples per process, but got 0."
                                " Give e.g. --batch-size 32"),
        (["--batch-size", "1000"], "`--batch-size` 1000 is larger than the"),
        (["--batch-size", "1000"], "Lower --batch-size (or batch_size in --datamodule-args) to at most"),
        (["--datamodule-args", "batch_size=0"], "Expected argument `batch_size` to be a positive integer, but got 0."
                                                " Check --datamodule-args"),
        (["--datamodule", "tests.test_compare.UnseenValidationClassData"],
         "has validation labels that are not training groups: 2 (2 examples), but the training set has groups 0..1."
         " Use the same label ids in `val_dataset` as in `train_dataset`"),
        (["--datamodule", "lightning_balance.datasets"],
         "Cannot import `--datamodule` 'lightning_balance.datasets': it names a module, not a class; a class path"
         " like `package.module.ClassName` is expected"),
    ],
)
def test_compare_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert _compare(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-balance compare: error: ")
    assert message in err
    assert "Traceback" not in err
    if "training_step" not in message:  # found on the first training batch; every other error comes first
        assert not (tmp_path / "out").exists()  # nothing is written for a run that cannot start


def test_data_errors_leave_no_output_directory(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert main(["compare", *TINY, "--out", str(out), "--datamodule", "tests.test_compare.SingleClassData"]) == 2
    assert "has a single group in its training set" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "new").exists()


def test_paper_rejects_a_bad_temperature_before_writing(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["paper", *TINY, "--temperature", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-balance paper: error: ") and "but got -1.0" in err
    assert not out.exists()


def test_unwritable_output_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["compare", *TINY, "--out", str(tmp_path / "file" / "out")]) == 2
    assert "Cannot write to `--out`" in capsys.readouterr().err
    assert main(["compare", *TINY, "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "Cannot write to `--out`" in err and "Choose a writable directory with --out" in err


def test_config_without_class_path(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  strategy: upsample\n")
    assert _compare(tmp_path, "--config", str(config)) == 2
    assert "the `data:` section needs a `class_path`" in capsys.readouterr().err


def test_parse_kwargs():
    assert parse_kwargs(["a=1", "b=x", "c=[1, 2]", "d=null"], "--x") == {"a": 1, "b": "x", "c": [1, 2], "d": None}
    assert parse_kwargs(['{"a": {"b": 1}}'], "--x") == {"a": {"b": 1}}
    with pytest.raises(ConfigurationError, match=r"Cannot read `--x` '\{bad': invalid JSON"):
        parse_kwargs(["{bad"], "--x")


def test_paper_command(tmp_path, capsys):
    out = tmp_path / "paper"
    code = main(["paper", *TINY, "--num-batches", "20", "--out", str(out)])
    assert code == 0
    assert "(a) Full-batch GD" in capsys.readouterr().out
    report = json.loads((out / "paper.json").read_text())
    assert {"full_batch_equivalence", "gradient_variance", "tail_dynamics", "cooldown"} <= set(report)
    assert (out / "report.md").read_text().startswith("# Upsample or upweight?")
    assert (out / "compare" / "summary.csv").exists() and (out / "variance_digits.png").exists()


def test_module_and_console_script(tmp_path):
    """`python -m lightning_balance` and the installed `lightning-balance` run the same command line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "lightning_balance", "--help"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and "compare" in result.stdout and "paper" in result.stdout
    script = Path(sys.executable).with_name("lightning-balance")
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    result = subprocess.run([str(script), "compare", "--datamodule", "nope.Nope", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Cannot import `--datamodule` 'nope.Nope'" in result.stderr


# ------------------------------------------------------------------ fit through LightningCLI
FIT_CONFIG = """
seed_everything: 1
model:
  class_path: lightning_balance.models.MLPClassifier
  init_args:
    hidden: 16
data:
  class_path: lightning_balance.datasets.LongTailDigits
  init_args:
    strategy: upsample
    temperature:
      class_path: lightning_balance.Cooldown
      init_args: {start: 4.0, end: 1.0, at: 0.25}
    batch_size: 8
    seed: 7
trainer:
  max_steps: 8
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
"""


@pytest.fixture
def _console_argv(monkeypatch):
    """As from a console: LightningCLI warns when it gets both ``args`` and pytest's own ``sys.argv``."""
    monkeypatch.setattr(sys, "argv", ["lightning-balance"])


@pytest.mark.usefixtures("_console_argv")
def test_balanced_datamodule_from_yaml_with_a_schedule_class(tmp_path):
    config = tmp_path / "fit.yaml"
    config.write_text(FIT_CONFIG)
    cli = lightning_cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    dm = cli.datamodule
    assert isinstance(dm, LongTailDigits) and isinstance(cli.model, MLPClassifier)
    assert (dm.strategy, dm.batch_size, dm.seed) == ("upsample", 8, 7)
    assert isinstance(dm.temperature, Cooldown)
    assert (dm.temperature.start, dm.temperature.end, dm.temperature.at) == (4.0, 1.0, 0.25)
    assert cli.model.hparams.hidden == 16
    cli.trainer.fit(cli.model, dm)
    assert cli.trainer.global_step == 8
    assert dm.current_temperature() == 1.0  # the schedule switched after a quarter of the 8 steps


@pytest.mark.usefixtures("_console_argv")
def test_fit_subcommand_runs_every_example_config(tmp_path):
    for config in CONFIGS:
        assert main(["fit", "--config", str(config), "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                     "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                     f"--trainer.default_root_dir={tmp_path / config.stem}"]) == 0
    assert {c.stem for c in CONFIGS} >= {"digits_cooldown", "digits_upweight"}


@pytest.mark.usefixtures("_console_argv")
def test_fit_rejects_an_unknown_strategy(tmp_path):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS[0]), "--data.init_args.strategy=oversample",
              f"--trainer.default_root_dir={tmp_path}"])
