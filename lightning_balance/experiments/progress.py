r"""
Progress and quiet
^^^^^^^^^^^^^^^^^^

What a comparison shows while it runs: one rich progress bar over all runs (rank 0 only), Lightning's start-up
messages and the warnings a small benchmark triggers kept out of the way (:func:`quiet_lightning`), and the
machine's load (:func:`load_average`), which every wall time is reported with: on a shared machine a run's wall
time says as much about the other jobs as about the strategy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any, Optional

from lightning_balance.experiments.settings import global_rank

__all__ = ["RunProgress", "load_average", "quiet_lightning"]

#: Warnings a comparison on a small data set triggers by design, and Lightning's advertisements.
QUIET_WARNINGS = (
    ".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LitLogger.*", ".*sync_dist=True.*",
    ".*is empty.*", ".*no target.*", ".*LeafSpec.*", ".*held NaN or inf.*", ".*litmodels.*", ".*Tip:.*",
    ".*TensorBoard.*", ".*tensorboardX.*", ".*ModelCheckpoint.*", ".*Checkpoint directory.*",
)
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")


def load_average() -> Optional[float]:
    """The one-minute load average of the machine (``None`` where the OS does not say)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def quiet_lightning(deprecations: bool = False) -> Iterator[None]:
    """Silence Lightning's start-up messages and the warnings a tiny benchmark set triggers, then restore.

    Args:
        deprecations: also silence ``DeprecationWarning`` and ``FutureWarning`` (for ``fit``, whose user sees
            only their own run).
    """
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message)
            if deprecations:
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class RunProgress:
    """One rich progress bar over all the runs of a comparison (rank 0 only)."""

    def __init__(self, runs: int, steps_per_run: int, enabled: bool) -> None:
        self.enabled = enabled and global_rank() == 0
        self.total_steps = runs * steps_per_run
        self.steps_per_run = steps_per_run
        self._base = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            console = Console()
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                TextColumn("steps"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=console if console.is_terminal else Console(width=100),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("compare", total=self.total_steps)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_run(self, text: str, index: int) -> None:
        """Show which run trains; ``index`` runs (of ``steps_per_run`` steps each) are done."""
        self._base = index * self.steps_per_run
        if self._progress is not None:
            self._progress.update(self._task, description=text, completed=self._base)

    def at_step(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self._base + min(step, self.steps_per_run))
