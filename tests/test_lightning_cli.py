"""BalancedDataModule is configured from a LightningCLI YAML: strategy, schedule class, batch size, seed."""

import pytest
from lightning.pytorch.cli import LightningCLI

from lightning_balance import Cooldown, LinearRamp
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
