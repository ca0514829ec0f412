r"""
Mixture monitor
^^^^^^^^^^^^^^^

Log what the sample stream of a :class:`~lightning_balance.BalancedDataModule` is doing, under any strategy:
the temperature in force, every group's sampling probability and how many times its data has been gone through
(epochs per group, the number users ask for when they upsample a small language or domain).

It logs ``mixing/temperature``, ``mixing/p_<group>`` and ``mixing/epochs_<group>`` every ``every_n_steps``
optimizer steps, through the Trainer's loggers (CSV, TensorBoard, ...). The values are computed from the stream's
position, identical on every rank, so nothing is reduced.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

__all__ = ["MixtureMonitor"]


class MixtureMonitor(Callback):
    """Log the temperature, group probabilities and epochs per group of a BalancedDataModule's stream.

    Args:
        every_n_steps: logging period in optimizer steps.

    Example:
        >>> from lightning_balance.callbacks import MixtureMonitor
        >>> monitor = MixtureMonitor(every_n_steps=50)
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps <= 0:
            raise ValueError(f"Expected argument `every_n_steps` to be a positive integer, but got {every_n_steps!r}.")
        self.every_n_steps = every_n_steps

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning_balance.datamodule import BalancedDataModule

        if not isinstance(getattr(trainer, "datamodule", None), BalancedDataModule):
            raise RuntimeError(
                "`MixtureMonitor` reads the stream of a BalancedDataModule; pass one: `trainer.fit(model,"
                " datamodule=dm)`."
            )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        datamodule: Any = getattr(trainer, "datamodule", None)
        mixture = datamodule.mixture()
        position = datamodule.trained_samples()
        if mixture is None or position is None:
            return
        probs = mixture.probs_at_position(position)
        epochs = mixture.epochs(position)
        values = {"mixing/temperature": float(datamodule.current_temperature())}
        for g, name in enumerate(datamodule.group_names):
            values[f"mixing/p_{name}"] = float(probs[g])
            values[f"mixing/epochs_{name}"] = float(epochs[g])
        # Straight to the loggers, as LearningRateMonitor does: on the steps asked for, whatever
        # `Trainer(log_every_n_steps)` is; the values are the same on every rank and loggers write on rank 0 only.
        trainer = pl_module.trainer
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
