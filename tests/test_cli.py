"""`lightning-balance` commands: compare, paper, fit (LightningCLI), their files and their error messages."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch import Callback

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
    """`compare` on the digits (a second a run), unless the arguments name the data."""
    data = [] if {"--datamodule", "--config", "--data"} & set(extra) else ["--data", "digits"]
    return main(["compare", *TINY, *data, "--out", str(tmp_path / "out"), *extra])


class TrainerSpy(Callback):
    """Records the settings every run's Trainer, model and optimizer trained with (named in a config)."""

    seen: list = []

    def on_train_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        type(self).seen.append({
            "max_steps": trainer.max_steps, "global_step": trainer.global_step,
            "gradient_clip_val": trainer.gradient_clip_val, "accumulate": trainer.accumulate_grad_batches,
            "optimizer": type(optimizer).__name__, "lr": optimizer.param_groups[0]["initial_lr"]
            if "initial_lr" in optimizer.param_groups[0] else optimizer.param_groups[0]["lr"],
            "schedulers": [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs],
            "model_lr": pl_module.hparams.get("lr"),
        })


def test_compare_writes_its_files_and_prints_the_table(tmp_path, capsys):
    code = _compare(tmp_path, "--only", "upsample,upweight", "--tail-target", "0", "--datamodule-args",
                    "val_per_class=10", "batch_size=8")
    assert code == 0
    printed = capsys.readouterr().out
    assert "Final validation, mean ± std" in printed and "Upsample vs upweight (T=5)" in printed
    # --prefer balanced measures the head against natural sampling, which this run leaves out
    assert "No recommendation: --prefer balanced needs natural sampling's head recall" in printed
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "summary.csv", "runs.csv", "curves.csv", "results.json", "summary.md", "curves.png", "tradeoff.png", "logs"}
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert [(r["name"], r["label"], r["seeds"], r["steps_mean"]) for r in rows] == [
        ("upsample", "T=5", "1", "4.0"), ("upweight", "T=5", "1", "4.0")]
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["datamodule"] == "lightning_balance.experiments.datasets.LongTailDigits"
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
    assert data["settings"]["model"] == "lightning_balance.experiments.models.MLPClassifier"
    assert data["settings"]["model_args"]["hidden"] == 8
    assert data["runs"][0]["samples_seen"] == 16


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_compare_reads_a_lightning_cli_config(tmp_path, capsys, config):
    assert _compare(tmp_path, "--config", str(config), "--only", "natural") == 0
    import yaml

    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["settings"]["model_args"] == yaml.safe_load(config.read_text())["model"]["init_args"]
    # compare sets strategy, temperature and seed itself, run by run
    assert "strategy" not in data["settings"]["datamodule_args"]
    assert "Ignoring strategy" in capsys.readouterr().out


def test_quick_flag(tmp_path):
    args = build_parser().parse_args(["compare", "--quick"])
    # --quick and the defaults (1000 steps, or trainer.max_steps of --config) apply when the command runs
    assert (args.quick, args.seeds, args.max_steps, args.val_every) == (True, 3, None, None)
    assert args.tail_target is None and args.temperature == 5.0  # the task's target, applied when the command runs


# ------------------------------------------------------------------ --config: every Trainer and optimizer setting
HONOURED = """
trainer:
  max_steps: 6
  val_check_interval: 4
  accumulate_grad_batches: 2
  gradient_clip_val: 0.25
  log_every_n_steps: 1
  callbacks:
    - class_path: tests.test_cli.TrainerSpy
model:
  class_path: lightning_balance.models.MLPClassifier
  init_args:
    hidden: 8
    lr: 5e-2
optimizer:
  class_path: torch.optim.Adam
  init_args:
    lr: 1e-3
lr_scheduler:
  class_path: torch.optim.lr_scheduler.StepLR
  init_args:
    step_size: 2
data:
  class_path: lightning_balance.datasets.LongTailDigits
  init_args:
    batch_size: 8
    val_per_class: 10
"""


def test_compare_honours_every_trainer_and_optimizer_setting_of_a_config(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(HONOURED)
    TrainerSpy.seen = []
    code = main(["compare", "--config", str(config), "--seeds", "1", "--strategies", "upsample,upweight",
                 "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 0
    assert len(TrainerSpy.seen) == 2  # a fresh callback in every run
    for seen in TrainerSpy.seen:
        assert (seen["max_steps"], seen["global_step"]) == (6, 6)  # trainer.max_steps, not the default 1000
        assert seen["gradient_clip_val"] == 0.25 and seen["accumulate"] == 2
        assert (seen["optimizer"], seen["lr"], seen["schedulers"]) == ("Adam", 0.001, ["StepLR"])
        assert seen["model_lr"] == 0.05 and isinstance(seen["model_lr"], float)  # 5e-2 read as jsonargparse does
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    run = data["runs"][0]
    assert [p["step"] for p in run["curve"]] == [2, 4, 6]  # val_check_interval 4 batches = 2 optimizer steps
    assert run["samples_seen"] == 6 * 2 * 8  # two batches of 8 per optimizer step
    assert data["settings"]["optimizer"]["class_path"] == "torch.optim.Adam"
    assert data["settings"]["trainer_kwargs"]["gradient_clip_val"] == 0.25
    assert data["settings"]["model_args"]["lr"] == 0.05


def test_command_line_flags_win_over_the_config(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(HONOURED)
    TrainerSpy.seen = []
    assert _compare(tmp_path, "--config", str(config), "--only", "natural") == 0  # TINY: --max-steps 4 --val-every 2
    assert [(s["max_steps"], s["global_step"]) for s in TrainerSpy.seen] == [(4, 4)]


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ("max_epochs: 3", "Cannot honour the Trainer argument `trainer.max_epochs`=3 in a comparison: every run trains"
                          " for the same number of optimizer steps: give `max_steps` (--max-steps) instead."),
        ("limit_train_batches: 0.5", "`trainer.limit_train_batches`=0.5"),
        ("val_check_interval: 0.5", "`trainer.val_check_interval` 0.5 in --config: a comparison validates every so"
                                    " many optimizer steps"),
        ("val_check_interval: 3\n  accumulate_grad_batches: 2", "not a whole number of optimizer steps with"
                                                                " `accumulate_grad_batches` 2. Give a multiple of 2"),
        ("devices: 0", "Expected `trainer.devices in --config` to be a positive number of devices"),
        ("gradient_clip: 1.0", "`trainer.gradient_clip in --config` is not a Trainer argument"),
    ],
)
def test_config_settings_that_cannot_be_honoured_are_refused_by_name(tmp_path, capsys, trainer, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(f"trainer:\n  {trainer}\n")
    assert _compare(tmp_path, "--config", str(config)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_config_sections_compare_cannot_use_are_refused(tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text("trainer:\n  max_steps: 4\nfancy:\n  x: 1\n")
    assert _compare(tmp_path, "--config", str(config)) == 2
    assert "has sections that `compare` cannot use: `fancy:`" in capsys.readouterr().err
    config.write_text("ckpt_path: last.ckpt\n")
    assert _compare(tmp_path, "--config", str(config)) == 2
    assert "sets `ckpt_path: last.ckpt`" in capsys.readouterr().err
    config.write_text("lr_scheduler:\n  class_path: torch.optim.lr_scheduler.StepLR\n")
    assert _compare(tmp_path, "--config", str(config)) == 2
    assert "is given without `optimizer`" in capsys.readouterr().err


# ------------------------------------------------------------------ diverged runs and interruption
def test_a_comparison_where_every_run_diverged_says_so_and_exits_1(tmp_path, capsys):
    code = _compare(tmp_path, "--only", "upsample,upweight", "--model-args", "lr=1.0e+30")
    captured = capsys.readouterr()
    assert code == 1
    assert "every run diverged" in captured.err and "Lower the learning rate" in captured.err
    assert "Head R" in captured.out and "diverged" in captured.out.split("upsample", 1)[1].splitlines()[0]
    assert "1.000" not in captured.out  # no "perfect head recall" of a model that predicts nothing
    assert "no verdict: both diverged in every seed" in captured.out and "equal" not in captured.out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["diverged"] for r in data["runs"]] == [True, True]
    assert [r["diverged"] for r in data["summary"]] == [1, 1]
    with open(tmp_path / "out" / "runs.csv") as f:
        assert [row["diverged"] for row in csv.DictReader(f)] == ["True", "True"]


def test_ctrl_c_keeps_the_finished_runs_and_exits_130(tmp_path, capsys):
    from tests.test_compare import InterruptedModel

    InterruptedModel.built = 0
    code = _compare(tmp_path, "--only", "natural,upweight", "--model", "tests.test_compare.InterruptedModel",
                    "--model-args", "num_features=64", "num_classes=10")
    out = capsys.readouterr().out
    assert code == 130
    assert "Incomplete: interrupted during upweight seed 0; 1 of 2 runs finished" in " ".join(out.split())
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["complete"] is False and [r["name"] for r in data["runs"]] == ["natural"]
    assert data["settings"]["interrupted"] == "upweight seed 0"
    with open(tmp_path / "out" / "summary.csv") as f:
        assert [(r["name"], r["complete"]) for r in csv.DictReader(f)] == [("natural", "False")]


def test_saln_flag(tmp_path):
    pytest.importorskip("lightning_balance.callbacks.saln")
    assert _compare(tmp_path, "--only", "saln", "--saln", "--saln-keep", "0.25") == 0
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["name"] == "saln" and run["samples_seen"] == 4 * 8  # a quarter of 4 batches of 32


def test_saln_options_without_saln_are_refused(tmp_path, capsys):
    assert _compare(tmp_path, "--saln-keep", "0") == 2
    err = capsys.readouterr().err
    assert "`--saln-keep` was given without `--saln`, so no SALN run would use it. Add --saln" in err
    assert _compare(tmp_path, "--saln-method", "random", "--saln-keep", "0.5") == 2
    assert "`--saln-keep` and `--saln-method` were given without `--saln`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
        (["--model-args", "depth=3"],
         "Cannot build `--model` lightning_balance.experiments.models.MLPClassifier(**{'depth': 3,"),
        (["--model-args", "lr=-1"], "`--model` MLPClassifier.configure_optimizers() refused its settings: Invalid"
                                    " learning rate: -1. Check --model-args (e.g. a positive learning rate"),
        (["--datamodule", ""], "Cannot import `--datamodule` '': it is empty."),
        (["--model", ""], "Cannot import `--model` '': it is empty."),
        (["--devices", "0"], "Expected `--devices` to be a positive number of devices, -1 (all), 'auto' or device ids"
                             " such as '0,1', but got 0. Give e.g. --devices 1."),
        (["--accelerator", "tpu"], "`--accelerator` 'tpu' is not available on this machine (available: ["),
        (["--precision", "7"], "Expected `--precision` to be one of"),
        (["--precision", "7"], "but got '7'. Give e.g. --precision 32-true or bf16-mixed."),
        (["--threads", "0"], "Expected `--threads` to be a positive number of CPU threads, but got 0."),
        (["--datamodule-args", "oops"], "Cannot read `--datamodule-args` 'oops': expected key=value"),
        (["--datamodule-args", "colour=red"], "Check --datamodule-args"),
        (["--strategies", "natural,bogus"], "Expected `--strategies` to name runs among"),
        (["--only", "natural,bogus"], "Expected `--strategies` to name runs among"),
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
    assert main(["compare", *TINY, "--data", "digits", "--out", str(tmp_path / "file" / "out")]) == 2
    assert "Cannot write to `--out`" in capsys.readouterr().err
    assert main(["compare", *TINY, "--data", "digits", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "Cannot write to `--out`" in err and "Choose a writable directory with --out" in err


def test_config_without_class_path(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  strategy: upsample\n")
    assert _compare(tmp_path, "--config", str(config)) == 2
    assert "the `data:` section needs a `class_path`" in capsys.readouterr().err


def test_parse_kwargs():
    assert parse_kwargs(["a=1", "b=x", "c=[1, 2]", "d=null"], "--x") == {"a": 1, "b": "x", "c": [1, 2], "d": None}
    # Numbers as LightningCLI (jsonargparse) reads them, not YAML 1.1: 1e-3 is a float.
    parsed = parse_kwargs(["lr=1e-3", "wd=5E-4", "big=1.0e+30", "n=-1", "name=1e-3x"], "--x")
    assert parsed == {"lr": 0.001, "wd": 0.0005, "big": 1e30, "n": -1, "name": "1e-3x"}
    assert isinstance(parsed["lr"], float) and isinstance(parsed["wd"], float)
    assert parse_kwargs(['{"a": {"b": 1}}'], "--x") == {"a": {"b": 1}}
    with pytest.raises(ConfigurationError, match=r"Cannot read `--x` '\{bad': invalid JSON"):
        parse_kwargs(["{bad"], "--x")


def test_paper_command(tmp_path, capsys):
    out = tmp_path / "paper"
    code = main(["paper", *TINY, "--data", "digits", "--num-batches", "20", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(a) p(T) of sizes 900/90/10 against hand-worked values" in printed and "-> holds: True" in printed
    report = json.loads((out / "paper.json").read_text())
    assert {"known_answer", "full_batch_equivalence", "full_batch_holds", "gradient_variance", "variance_verdict",
            "tail_dynamics", "cooldown"} <= set(report)
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


def test_the_default_comparison_is_long_tailed_mnist1d_with_its_cnn_and_budget(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    from lightning_balance.experiments import runner
    from lightning_balance.experiments.mnist1d import COMPARE_SETTINGS, CNN1DClassifier, LongTailMNIST1D

    seen = {}

    def fake_compare(data, model, runs, settings, **kwargs):
        seen.update(data=data, model=model, runs=runs, settings=settings)
        return runner.CompareResult({}, [], [], True)

    monkeypatch.setattr(runner, "compare", fake_compare)
    assert main(["compare", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    assert seen["data"].cls is LongTailMNIST1D and seen["data"].kwargs == {}
    assert seen["model"].cls is CNN1DClassifier and seen["model"].size_from_data
    s = seen["settings"]
    assert (s.max_steps, s.val_every) == (COMPARE_SETTINGS["max_steps"], COMPARE_SETTINGS["val_every"])
    assert (s.seeds, s.tail_target, s.split, s.prefer, s.select) == ([0, 1, 2], 0.1, "auto", "balanced", "final")
    assert [r.name for r in seen["runs"]] == ["natural", "upsample", "upweight", "cooldown", "logit_adjust_posthoc"]
    # the digits stay one flag away
    assert main(["compare", "--no-progress", "--data", "digits", "--out", str(tmp_path / "digits")]) == 0
    assert seen["data"].cls is LongTailDigits and (seen["settings"].max_steps, seen["settings"].tail_target) == (
        1000, 0.5)
    assert main(["compare", "--data", "digits", "--datamodule", "x.Y"]) == 2
