"""BalancedDataModule is configured from a LightningCLI YAML: strategy, schedule class, batch size, seed."""

import sys

import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from lightning_balance import Cooldown, LinearRamp
from lightning_balance.cli import main
from lightning_balance.datasets import LongTailDigits
from lightning_balance.models import MLPClassifier

CONFIG = """
data:
  strategy: upsample
  temperature:
    class_path: lightning_balance.Cooldown
    init_args:
      start: 5.0
      end: 1.0
      at: 0.3
  batch_size: 8
  seed: 3
  imbalance_factor: 50
trainer:
  max_steps: 6
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
"""


def _cli(args):
    return LightningCLI(MLPClassifier, LongTailDigits, run=False, args=args, save_config_callback=None)


def test_yaml_config_with_a_schedule_class(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    cli = _cli(["--config", str(path)])
    dm = cli.datamodule
    assert isinstance(dm.temperature, Cooldown)
    assert (dm.temperature.start, dm.temperature.end, dm.temperature.at) == (5.0, 1.0, 0.3)
    assert (dm.strategy, dm.batch_size, dm.seed, dm.imbalance_factor) == ("upsample", 8, 3, 50)
    cli.trainer.fit(cli.model, dm)
    assert cli.trainer.global_step == 6
    # The schedule ran over the 6 steps of the run and switched after 30% of them.
    assert dm.current_temperature() == 1.0


def test_command_line_overrides(tmp_path):
    cli = _cli(["--data.strategy", "upweight", "--data.temperature", "3.33", "--data.batch_size", "4"])
    assert (cli.datamodule.strategy, cli.datamodule.temperature, cli.datamodule.batch_size) == ("upweight", 3.33, 4)
    cli = _cli(["--data.strategy", "upsample", "--data.temperature", "lightning_balance.LinearRamp"])
    assert isinstance(cli.datamodule.temperature, LinearRamp)


def test_unknown_strategy_from_yaml_is_rejected():
    with pytest.raises(SystemExit):
        _cli(["--data.strategy", "oversample"])


# ------------------------------------------------------------------ `lightning-balance fit`: imports and threads
FIT_ARGS = ["--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data", "lightning_balance.datasets.LongTailDigits",
            "--data.batch_size=8"]

MODULE = """
from lightning_balance.models import MLPClassifier


class LocalModel(MLPClassifier):
    pass
"""


@pytest.fixture
def _console(monkeypatch, tmp_path):
    """As the installed script runs: the current directory is not on sys.path, and sys.argv is the command's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.setattr(sys, "argv", ["lightning-balance"])


@pytest.mark.usefixtures("_console")
def test_fit_imports_a_model_from_the_current_directory_as_compare_does(tmp_path):
    (tmp_path / "local_fit_model.py").write_text(MODULE)
    try:
        assert main(["fit", "--model", "local_fit_model.LocalModel", f"--trainer.default_root_dir={tmp_path}",
                     *FIT_ARGS]) == 0
    finally:
        sys.modules.pop("local_fit_model", None)


@pytest.mark.usefixtures("_console")
def test_threads_applies_to_fit(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["fit", "--threads", "3", "--model", "lightning_balance.models.MLPClassifier",
                 f"--trainer.default_root_dir={tmp_path}", *FIT_ARGS]) == 0
    assert calls == [3]
    assert main(["validate", "--threads=2", "--model", "lightning_balance.models.MLPClassifier",
                 f"--trainer.default_root_dir={tmp_path}", *FIT_ARGS]) == 0
    assert calls == [3, 2]


@pytest.mark.usefixtures("_console")
def test_threads_of_fit_are_checked(capsys):
    assert main(["fit", "--threads", "0"]) == 2
    assert "lightning-balance fit: error: Expected `--threads` to be a positive number of CPU threads, but got 0." in (
        capsys.readouterr().err)
