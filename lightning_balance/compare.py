r"""
Comparing balancing strategies
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

The functional core of ``lightning-balance compare``: train the same model on the same data under natural
sampling, upsampling, upweighting, Cooldown (and optionally SALN) over several seeds, record per-group
validation loss and recall along the way, and summarise every strategy as mean ± std over the seeds.

What a DataModule and a model must provide
------------------------------------------
* The DataModule is a :class:`~lightning_balance.BalancedDataModule` whose ``__init__`` accepts (and passes on)
  ``strategy``, ``temperature`` and ``seed``; its groups are the classes (the validation targets), so
  head/medium/tail are the classes split by training count (:class:`~lightning_balance.tail_recall.TailRecall`).
  ``setup('fit')`` must give a training set with at least two non-empty groups and a validation set.
* The model's ``training_step`` reduces a per-sample loss with :func:`~lightning_balance.balanced_loss`. That
  call is the only place where ``upweight`` applies its weights, so a model that bypasses it would silently
  train ``upweight`` exactly like ``natural``. The runner checks it on the first training batch.
* ``validation_step`` returns ``{"preds": logits, "target": labels}`` (as
  :class:`~lightning_balance.models.MLPClassifier` does; ``"logits"`` and ``"targets"``/``"labels"``/``"y"`` are
  read too) or the logits ``[B, C]``. Whatever it does not return is read from the batch: ``(x, y, ...)``
  sequences by position, mappings by key (inputs ``"x"``, ``"input"``, ``"inputs"``, ``"image"``,
  ``"features"``; targets ``"y"``, ``"target"``, ``"targets"``, ``"label"``, ``"labels"``), the logits as
  ``model(inputs)``. The per-group validation loss is the cross-entropy of those logits.

A run whose training loss or validation loss becomes NaN or infinite is **diverged**: it stops at the next
validation, is flagged in its :class:`RunResult`, and the summary statistics leave it out.

Only rank 0 records: every rank computes the synchronised metrics (their states are summed over processes),
rank 0 keeps the curve points and builds the results; the other ranks return an empty result.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import logging
import math
import os
import signal
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset
from torchmetrics import Metric
from typing_extensions import override

from lightning_balance.datamodule import BalancedDataModule
from lightning_balance.functional.tail_recall import SPLITS, _split_arg_validation
from lightning_balance.schedules import Cooldown, TemperatureLike
from lightning_balance.tail_recall import TailRecall
from lightning_balance.temperature import _validate_temperature

__all__ = [
    "CompareResult",
    "CompareSettings",
    "ComponentSpec",
    "ConfigurationError",
    "RunResult",
    "RunSpec",
    "build_config_value",
    "check_output_dir",
    "check_run_arguments",
    "check_trainer_arguments",
    "compare",
    "default_runs",
    "ensure_cwd_importable",
    "global_rank",
    "import_object",
    "run_once",
    "smoothed_rise",
    "summarize",
]

#: Metrics of every validation point, in the order the tables show them.
METRICS = tuple(
    [f"recall_{s}" for s in (*SPLITS, "macro", "worst")]
    + [f"f1_{s}" for s in (*SPLITS, "macro", "worst")]
    + [f"loss_{s}" for s in (*SPLITS, "all")]
)
#: The runs ``compare`` makes by default, by name.
RUN_NAMES = ("natural", "upsample", "upweight", "cooldown", "saln")
#: Strategies whose processes would not report back to the runner.
_SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_notebook", "ddp_fork", "ddp_spawn_find_unused_parameters_true")
#: Validations over which the tail validation loss is averaged before its rise is measured.
RISE_WINDOW = 5
#: Trainer arguments the runner sets from ``CompareSettings`` (``max_steps``, ``val_every``), never directly.
_RUN_LENGTH_KEYS = ("max_steps", "val_check_interval")
#: Trainer arguments that would end or cut a run other than after ``max_steps`` optimizer steps, with the values
#: that leave the run alone, and the fix.
_RUN_CONFLICTS: dict[str, tuple[tuple[Any, ...], str]] = {
    "max_epochs": ((None, -1), "every run trains for the same number of optimizer steps: give `max_steps`"
                               " (--max-steps) instead"),
    "min_epochs": ((None, 0), "every run trains for exactly `max_steps` optimizer steps: remove it"),
    "max_time": ((None,), "every run trains for the same number of optimizer steps: give `max_steps` (--max-steps)"
                          " instead"),
    "fast_dev_run": ((False, 0), "for a smoke run use --quick (or --max-steps 10)"),
    "overfit_batches": ((0, 0.0), "it replaces the sampler that the strategies differ by: remove it"),
    "limit_train_batches": ((None, 1.0), "it cuts the epochs that the samplers plan: use `samples_per_epoch` of the"
                                         " DataModule instead"),
    "check_val_every_n_epoch": ((None,), "validation follows --val-every optimizer steps across epochs: set it to"
                                         " null"),
}


class ConfigurationError(ValueError):
    """A setting the comparison cannot run with; the message names the argument, the value and the fix."""


def global_rank() -> int:
    """This process's global rank: Lightning reads it from the environment a DDP launch sets, else 0."""
    return int(getattr(rank_zero_only, "rank", 0))


# ----------------------------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One strategy of the comparison.

    Args:
        name: label in tables and files (``"upsample"``, ``"cooldown"``...).
        strategy: the :class:`~lightning_balance.BalancedDataModule` strategy.
        temperature: fixed temperature or schedule.
        saln_keep: when set, train with :class:`~lightning_balance.callbacks.SALN` keeping this fraction.
        saln_method: the SALN ``method``: ``"spectral"`` (SALN itself) or a baseline at the same kept fraction
            (``"random"``, ``"loss"``).
    """

    name: str
    strategy: str
    temperature: TemperatureLike = 1.0
    saln_keep: Optional[float] = None
    saln_method: str = "spectral"

    @property
    def label(self) -> str:
        """The temperature (or schedule) in words, e.g. ``"T=5"`` or ``"T=5→1 at 50%"``."""
        t = self.temperature
        if isinstance(t, Cooldown):
            return f"T={_num(t.start)}→{_num(t.end)} at {t.at:.0%}"
        if callable(t):
            return repr(t)
        label = f"T={_num(float(t))}" if self.strategy != "natural" else "T=1"
        if self.saln_keep is None:
            return label
        method = "SALN" if self.saln_method == "spectral" else f"{self.saln_method} selection"
        return label + f", {method} keep {self.saln_keep:g}"


def _num(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def check_run_arguments(temperature: Any, cooldown_at: Any) -> tuple[float, float]:
    """Return ``(temperature, cooldown_at)`` as floats, or raise :class:`ConfigurationError` saying how to fix them.

    Example:
        >>> check_run_arguments(5, 0.5)
        (5.0, 0.5)
        >>> check_run_arguments(0, 0.5)
        Traceback (most recent call last):
        ...
        lightning_balance.compare.ConfigurationError: Expected argument `temperature` to be > 0 ...
    """
    try:
        temperature = _validate_temperature(temperature, "temperature")
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"{err} Give a positive temperature (or inf), e.g. --temperature 5."
        ) from err
    if (isinstance(cooldown_at, bool) or not isinstance(cooldown_at, (int, float, np.integer, np.floating))
            or math.isnan(cooldown_at) or not 0.0 <= cooldown_at <= 1.0):
        raise ConfigurationError(
            f"Expected argument `cooldown_at` to be the fraction of training in [0, 1] after which Cooldown samples"
            f" at T=1, but got {cooldown_at!r}. Give a fraction, e.g. --cooldown-at 0.5."
        )
    return temperature, float(cooldown_at)


def default_runs(
    temperature: float = 5.0,
    cooldown_at: float = 0.5,
    *,
    saln_keep: Optional[float] = None,
    saln_method: str = "spectral",
    only: Optional[Sequence[str]] = None,
) -> list[RunSpec]:
    """The paper's comparison: natural, upsample (T), upweight (T), Cooldown (T → 1), optionally SALN.

    Args:
        temperature: ``T`` of upsampling, upweighting and the start of Cooldown.
        cooldown_at: fraction of training after which Cooldown samples at ``T = 1``.
        saln_keep: add a natural-sampling run with SALN keeping this fraction of every batch.
        saln_method: the selection ``method`` of that run (``"spectral"`` is SALN).
        only: names of the runs to keep (from ``natural, upsample, upweight, cooldown, saln``).

    Example:
        >>> [(r.name, r.label) for r in default_runs(5.0)]
        [('natural', 'T=1'), ('upsample', 'T=5'), ('upweight', 'T=5'), ('cooldown', 'T=5→1 at 50%')]
    """
    temperature, cooldown_at = check_run_arguments(temperature, cooldown_at)
    runs = [
        RunSpec("natural", "natural", 1.0),
        RunSpec("upsample", "upsample", temperature),
        RunSpec("upweight", "upweight", temperature),
        RunSpec("cooldown", "upsample", Cooldown(temperature, 1.0, cooldown_at)),
    ]
    if saln_keep is not None:
        if isinstance(saln_keep, bool) or not isinstance(saln_keep, (int, float)) or not 0.0 < saln_keep <= 1.0:
            raise ConfigurationError(
                f"Expected `saln_keep` to be the fraction of each batch SALN trains on, in (0, 1], but got"
                f" {saln_keep!r}. Try --saln-keep 0.5."
            )
        runs.append(RunSpec("saln", "natural", 1.0, saln_keep=saln_keep, saln_method=saln_method))
    if only is not None:
        unknown = [name for name in only if name not in RUN_NAMES]
        if unknown or not only:
            raise ConfigurationError(
                f"Expected `only` to name runs among {RUN_NAMES}, but got {list(only)!r}."
                " Separate several with commas, e.g. --only natural,upsample."
            )
        if "saln" in only and saln_keep is None:
            raise ConfigurationError("`only` names 'saln' but SALN is off: add --saln (and --saln-keep) to run it.")
        runs = [run for run in runs if run.name in only]
    return runs


@dataclass
class CompareSettings:
    """How long and how each run trains, and how it is measured.

    Args:
        seeds: seeds of the runs; each seed fixes the model's initialisation and the sampling plan, and is
            shared by all strategies so that they are compared pairwise.
        max_steps: optimizer steps per run.
        val_every: validate every this many optimizer steps (and always at the end).
        tail_target: report the first step at which tail recall reached this value.
        many: head threshold of the class split (head: more than ``many`` training examples).
        few: tail threshold (tail: fewer than ``few`` training examples).
        split: ``"absolute"`` (thresholds above) or ``"quantile"`` (thirds of the classes by count).
        trainer_kwargs: passed to every ``Trainer`` (``accelerator``, ``devices``, ``strategy``,
            ``gradient_clip_val``, ``accumulate_grad_batches``, ``callbacks``...). Entries written as in a
            LightningCLI config, ``{"class_path": ..., "init_args": ...}``, are built afresh for every run. The run
            length is ``max_steps`` and ``val_every``; arguments that would end a run otherwise (``max_epochs``,
            ``max_time``, ``limit_train_batches``...) are refused.
        optimizer: the optimizer of every run as a LightningCLI ``optimizer:`` section (``{"class_path":
            "torch.optim.Adam", "init_args": {"lr": 0.01}}`` or a class name); it replaces the model's
            ``configure_optimizers`` as LightningCLI does. ``None`` keeps the model's own.
        lr_scheduler: a LightningCLI ``lr_scheduler:`` section, used with ``optimizer``.
    """

    seeds: Sequence[int] = (0, 1, 2)
    max_steps: int = 1500
    val_every: int = 50
    tail_target: float = 0.5
    many: float = 100
    few: float = 20
    split: str = "absolute"
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: Optional[Any] = None
    lr_scheduler: Optional[Any] = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "val_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Expected `{name}` to be a positive integer, but got {value!r}.")
        self.trainer_kwargs = dict(self.trainer_kwargs)
        for key in _RUN_LENGTH_KEYS:
            if key in self.trainer_kwargs:
                own = "max_steps" if key == "max_steps" else "val_every"
                raise ConfigurationError(
                    f"`trainer_kwargs` sets `{key}`={self.trainer_kwargs[key]!r}: the runner sets it from"
                    f" `{own}` of the settings. Give `{own}` instead (--{own.replace('_', '-')})."
                )
        for key, (neutral, fix) in _RUN_CONFLICTS.items():
            if key in self.trainer_kwargs and not _is_one_of(self.trainer_kwargs[key], neutral):
                raise ConfigurationError(
                    f"Cannot honour the Trainer argument `trainer.{key}`={self.trainer_kwargs[key]!r} in a"
                    f" comparison: {fix}."
                )
        accumulate = self.trainer_kwargs.get("accumulate_grad_batches", 1)
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ConfigurationError(
                f"Expected the Trainer argument `accumulate_grad_batches` to be a positive integer, but got"
                f" {accumulate!r}."
            )
        if self.lr_scheduler is not None and self.optimizer is None:
            raise ConfigurationError(
                f"`lr_scheduler` {self.lr_scheduler!r} is given without `optimizer`: a LightningCLI scheduler"
                " section needs an `optimizer:` section beside it (e.g. `optimizer: {class_path: torch.optim.SGD,"
                " init_args: {lr: 0.05}}`)."
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigurationError(f"Expected `seeds` to be distinct integers, at least one, but got {self.seeds!r}.")
        if not 0.0 <= float(self.tail_target) <= 1.0:
            raise ConfigurationError(
                f"Expected `tail_target` to be a recall in [0, 1], but got {self.tail_target!r}. Try 0.5."
            )
        try:
            _split_arg_validation(self.many, self.few, self.split)
        except ValueError as err:
            raise ConfigurationError(
                f"{err} Head classes have more than `many` (--many) training examples and tail classes fewer than"
                " `few` (--few): give non-negative counts with few <= many, e.g. --many 100 --few 20."
            ) from err
        strategy = self.trainer_kwargs.get("strategy")
        if isinstance(strategy, str) and strategy in _SPAWNING_STRATEGIES:
            raise ConfigurationError(
                f"`strategy={strategy!r}` trains in spawned processes that do not report back to the runner. Use"
                " --strategy ddp (it re-launches the command on every device and rank 0 writes the results)."
            )
        self.seeds = [int(s) for s in self.seeds]


def _is_one_of(value: Any, allowed: Sequence[Any]) -> bool:
    # `False == 0` in Python: compare types too, so that `fast_dev_run: 1` is not taken for `False`.
    return any(value is a or (type(value) is type(a) and value == a) for a in allowed)


@dataclass
class ComponentSpec:
    """A class to build with keyword arguments, e.g. a DataModule class and its ``init_args``.

    With ``size_from_data=True`` (a model), the arguments ``num_features`` and ``num_classes`` that ``kwargs``
    leaves out are read from the DataModule when the runner builds it.

    Example:
        >>> from lightning_balance.datasets import LongTailDigits
        >>> spec = ComponentSpec(LongTailDigits, {"batch_size": 16})
        >>> spec.build(strategy="upweight").batch_size
        16
    """

    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    argument: str = "--datamodule"
    size_from_data: bool = False

    @property
    def name(self) -> str:
        name = f"{self.cls.__module__}.{self.cls.__qualname__}"
        return name + " (sized from the data)" if self.size_from_data else name

    def build(self, **overrides: Any) -> Any:
        """An instance with ``kwargs`` updated by ``overrides``; a bad argument raises :class:`ConfigurationError`."""
        kwargs = {**self.kwargs, **overrides}
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as err:
            args_flag = f"{self.argument}-args"
            hint = (
                " The class must accept `strategy`, `temperature` and `seed` and pass them on to"
                " BalancedDataModule.__init__ (e.g. through **kwargs)."
                if self.argument == "--datamodule" and isinstance(err, TypeError) else ""
            )
            raise ConfigurationError(
                f"Cannot build `{self.argument}` {self.cls.__module__}.{self.cls.__qualname__}(**{kwargs!r}):"
                f" {str(err).rstrip('.')}. Check {args_flag}.{hint}"
            ) from err


# ----------------------------------------------------------------------------------------------------------
# Validation at the boundary
# ----------------------------------------------------------------------------------------------------------
def import_object(path: str, argument: str = "--datamodule") -> Any:
    """Import ``package.module.Name``, ``package.module:Name`` or ``path/to/file.py:Name``.

    The current directory is importable, as with ``python -m``, so a class in ``./my_data.py`` is
    ``my_data.MyData``.

    Raises:
        ConfigurationError: the path does not resolve; the message names ``argument`` and the path.

    Example:
        >>> import_object("lightning_balance.datasets.LongTailDigits").__name__
        'LongTailDigits'
        >>> import_object("lightning_balance.datasets.Nope", "--datamodule")
        Traceback (most recent call last):
        ...
        lightning_balance.compare.ConfigurationError: Cannot import `--datamodule` 'lightning_balance.datasets.Nope':
        module 'lightning_balance.datasets' has no attribute 'Nope'. ...
    """
    fix = (
        " Give the import path of a class, `package.module.ClassName` or `path/to/file.py:ClassName`, importable"
        f" from the current directory ({os.getcwd()})."
    )
    if not isinstance(path, str) or not path.strip():
        raise ConfigurationError(f"Cannot import `{argument}` {path!r}: it is empty.{fix}")
    ensure_cwd_importable()
    module_name, sep, attribute = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not attribute:
        if path.isidentifier() and _is_module(path):
            raise ConfigurationError(_module_message(path, argument, fix))
        raise ConfigurationError(f"Cannot import `{argument}` {path!r}: it names no module.{fix}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ImportError(f"no file {str(file)!r}")
            spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[file.stem] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
        found = getattr(module, attribute)
    except (ImportError, AttributeError) as err:
        if not module_name.endswith(".py") and _is_module(path):
            raise ConfigurationError(_module_message(path, argument, fix)) from err
        raise ConfigurationError(f"Cannot import `{argument}` {path!r}: {err}.{fix}") from err
    if isinstance(found, types.ModuleType):
        raise ConfigurationError(_module_message(path, argument, fix))
    return found


def ensure_cwd_importable() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does, so ``./my_data.py`` is ``my_data``.

    The installed ``lightning-balance`` script starts with its own folder there instead; every subcommand calls
    this before it imports user classes, so ``compare`` and ``fit`` find the same modules.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def build_config_value(value: Any, argument: str) -> Any:
    """Build ``{class_path, init_args}`` entries (as LightningCLI configs write them), recursively.

    Example:
        >>> build_config_value({"class_path": "lightning_balance.Cooldown", "init_args": {"start": 5.0}}, "x")
        Cooldown(start=5.0, end=1.0, at=0.5)
        >>> build_config_value([1, {"a": 2}], "x")
        [1, {'a': 2}]
    """
    if isinstance(value, Mapping) and "class_path" in value:
        cls = import_object(value["class_path"], argument)
        init_args = {k: build_config_value(v, argument) for k, v in (value.get("init_args") or {}).items()}
        try:
            return cls(**init_args)
        except (TypeError, ValueError) as err:
            raise ConfigurationError(
                f"Cannot build {value['class_path']}(**{init_args!r}) in `{argument}`: {err}."
            ) from err
    if isinstance(value, Mapping):
        return {k: build_config_value(v, argument) for k, v in value.items()}
    if isinstance(value, list):
        return [build_config_value(v, argument) for v in value]
    return value


def _class_section(value: Any, argument: str, search: Sequence[str]) -> dict[str, Any]:
    """A LightningCLI ``optimizer:`` / ``lr_scheduler:`` section as ``{class_path, init_args}`` with a full path.

    A bare class name (``Adam``) is looked up in the ``search`` modules, as LightningCLI resolves it.
    """
    if isinstance(value, str):
        value = {"class_path": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
        raise ConfigurationError(
            f"Expected `{argument}` to be a class name or a `class_path` with `init_args`, as LightningCLI writes"
            f" it (e.g. `{{class_path: torch.optim.SGD, init_args: {{lr: 0.05}}}}`), but got {value!r}."
        )
    path = value["class_path"]
    if "." not in path and ":" not in path:
        for module in search:
            if isinstance(getattr(importlib.import_module(module), path, None), type):
                path = f"{module}.{path}"
                break
    cls = import_object(path, argument)
    init_args = value.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigurationError(f"Expected `{argument}.init_args` to be a mapping, but got {init_args!r}.")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(init_args)}


_OPTIMIZER_MODULES = ("torch.optim",)
_SCHEDULER_MODULES = ("lightning.pytorch.cli", "torch.optim.lr_scheduler")


def _apply_optimizer(module: LightningModule, settings: CompareSettings) -> None:
    """Replace ``configure_optimizers`` by the settings' optimizer and scheduler, the way LightningCLI does."""
    if settings.optimizer is None:
        return
    from lightning.pytorch.cli import LightningCLI, instantiate_class

    init = _class_section(settings.optimizer, "optimizer", _OPTIMIZER_MODULES)
    try:
        optimizer = instantiate_class(module.parameters(), init)
        scheduler = None
        if settings.lr_scheduler is not None:
            scheduler_init = _class_section(settings.lr_scheduler, "lr_scheduler", _SCHEDULER_MODULES)
            scheduler = instantiate_class(optimizer, scheduler_init)
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"Cannot build the `optimizer` {init['class_path']}(**{init['init_args']!r})"
            + (f" with the `lr_scheduler` {settings.lr_scheduler!r}" if settings.lr_scheduler is not None else "")
            + f": {err}. Check the `optimizer:` and `lr_scheduler:` sections of --config."
        ) from err
    configure = functools.partial(LightningCLI.configure_optimizers, optimizer=optimizer, lr_scheduler=scheduler)
    functools.update_wrapper(configure, LightningCLI.configure_optimizers)
    module.configure_optimizers = types.MethodType(configure, module)  # type: ignore[method-assign]


def _check_optimizers(module: LightningModule, settings: CompareSettings, argument: str) -> None:
    """Build the optimizers once before any training, so that e.g. a negative learning rate fails first."""
    _apply_optimizer(module, settings)
    where = "the `optimizer:` section of --config" if settings.optimizer is not None else f"{argument}-args"
    try:
        module.configure_optimizers()
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"`{argument}` {type(module).__name__}.configure_optimizers() refused its settings: {err}. Check"
            f" {where} (e.g. a positive learning rate, lr=0.05)."
        ) from err
    except Exception:  # noqa: BLE001 - it may need the Trainer (e.g. estimated_stepping_batches): checked in training
        return


def check_trainer_arguments(trainer_kwargs: Mapping[str, Any], names: Optional[Mapping[str, str]] = None) -> None:
    """Reject hardware settings the Trainer cannot run with, naming the argument, the value and the fix.

    ``names`` maps a Trainer argument to how the user gave it (``"--devices"``, ``"trainer.devices in --config"``).

    Example:
        >>> check_trainer_arguments({"devices": 0}, {"devices": "--devices"})
        Traceback (most recent call last):
        ...
        lightning_balance.compare.ConfigurationError: Expected `--devices` to be a positive number of devices, -1 ...
    """
    names = names or {}

    def name(key: str) -> str:
        return names.get(key, f"trainer_kwargs['{key}']")

    devices = trainer_kwargs.get("devices")
    if devices is not None:
        ids = _device_ids(devices)
        if ids is None:
            raise ConfigurationError(
                f"Expected `{name('devices')}` to be a positive number of devices, -1 (all), 'auto' or device ids"
                f" such as '0,1', but got {devices!r}. Give e.g. --devices 1."
            )
    accelerator = trainer_kwargs.get("accelerator")
    if accelerator is not None and isinstance(accelerator, str):
        from lightning.pytorch.accelerators import AcceleratorRegistry

        known = sorted(AcceleratorRegistry.available_accelerators())
        available = [a for a in known if AcceleratorRegistry[a]["accelerator"].is_available()]
        if accelerator not in (*known, "gpu", "auto"):
            raise ConfigurationError(
                f"Expected `{name('accelerator')}` to be one of {['auto', 'gpu', *known]}, but got {accelerator!r}."
                f" Available on this machine: {available}."
            )
        usable = accelerator == "auto" or accelerator in available or (
            accelerator == "gpu" and any(a in available for a in ("cuda", "mps")))
        if not usable:
            raise ConfigurationError(
                f"`{name('accelerator')}` {accelerator!r} is not available on this machine (available:"
                f" {available}). Give e.g. --accelerator {available[0] if available else 'cpu'}, or leave it out."
            )
    precision = trainer_kwargs.get("precision")
    if precision is not None:
        from lightning.fabric.connector import _PRECISION_INPUT

        allowed = [v for literal in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(literal)]
        if isinstance(precision, bool) or precision not in allowed:
            raise ConfigurationError(
                f"Expected `{name('precision')}` to be one of {[str(v) for v in allowed if isinstance(v, str)]},"
                f" but got {precision!r}. Give e.g. --precision 32-true or bf16-mixed."
            )
    num_nodes = trainer_kwargs.get("num_nodes")
    if num_nodes is not None and (isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1):
        raise ConfigurationError(
            f"Expected `{name('num_nodes')}` to be a positive number of machines, but got {num_nodes!r}."
        )
    unknown = sorted(set(trainer_kwargs) - set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"})
    if unknown:
        verb = "is not a Trainer argument" if len(unknown) == 1 else "are not Trainer arguments"
        raise ConfigurationError(
            f"{', '.join(f'`{name(k)}`' for k in unknown)} {verb}. Check the spelling against"
            " `lightning.pytorch.Trainer`."
        )


def _device_ids(devices: Any) -> Optional[Any]:
    """``devices`` if Lightning can read it as a device count or list, else ``None``."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 or devices == -1 else None
    if isinstance(devices, (list, tuple)):
        ok = devices and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
        return devices if ok else None
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return text
        if text.isdigit():
            return text if int(text) > 0 else None
        parts = [p.strip() for p in text.split(",")]
        if any(parts) and all(p.isdigit() for p in parts if p):
            return text
    return None


def _is_module(path: str) -> bool:
    try:
        importlib.import_module(path)
    except Exception:  # noqa: BLE001 - any failure means it is not an importable module
        return False
    return True


def _module_message(path: str, argument: str, fix: str) -> str:
    return (
        f"Cannot import `{argument}` {path!r}: it names a module, not a class; a class path like"
        f" `package.module.ClassName` is expected (e.g. `{path}.ClassName`).{fix}"
    )


def check_datamodule_class(cls: Any, argument: str = "--datamodule") -> type:
    """Return ``cls`` if it is a :class:`~lightning_balance.BalancedDataModule` subclass, else explain.

    Example:
        >>> check_datamodule_class(dict)
        Traceback (most recent call last):
        ...
        lightning_balance.compare.ConfigurationError: `--datamodule` builtins.dict is not a subclass of
        lightning_balance.BalancedDataModule. ...
    """
    if isinstance(cls, type) and issubclass(cls, BalancedDataModule):
        return cls
    name = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else repr(cls)
    plain = isinstance(cls, type) and issubclass(cls, LightningDataModule)
    found = " (it is a plain LightningDataModule)" if plain else ""
    raise ConfigurationError(
        f"`{argument}` {name} is not a subclass of lightning_balance.BalancedDataModule{found}. The runner switches"
        " strategies through BalancedDataModule(strategy=..., temperature=...): subclass it and assign"
        " `self.train_dataset` and `self.val_dataset` in `setup()`."
    )


def check_model_class(cls: Any, argument: str = "--model") -> type:
    """Return ``cls`` if it is a LightningModule with its own ``training_step`` and ``validation_step``.

    Whether ``training_step`` reduces its loss with :func:`~lightning_balance.balanced_loss` can only be seen
    when it runs; the runner checks that on the first training batch.
    """
    name = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else repr(cls)
    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise ConfigurationError(
            f"`{argument}` {name} is not a LightningModule subclass. Give a LightningModule whose `training_step`"
            " returns `lightning_balance.balanced_loss(self, per_sample_loss)`."
        )
    for hook in ("training_step", "validation_step"):
        if getattr(cls, hook) is getattr(LightningModule, hook):
            raise ConfigurationError(
                f"`{argument}` {name} does not define `{hook}`. The runner needs `training_step` to return"
                " `lightning_balance.balanced_loss(self, per_sample_loss)` and `validation_step` to return"
                " `{'preds': logits, 'target': labels}`."
            )
    return cls


def check_datamodule(datamodule: BalancedDataModule, argument: str = "--datamodule") -> None:
    """Set up ``datamodule`` for fitting and check there is something to balance and to validate on."""
    name = type(datamodule).__name__
    try:
        datamodule.setup("fit")
    except Exception as err:
        raise ConfigurationError(f"`{argument}` {name}.setup('fit') failed: {type(err).__name__}: {err}") from err
    train = datamodule.train_dataset
    if train is None or len(train) == 0:  # type: ignore[arg-type]
        raise ConfigurationError(
            f"`{argument}` {name} has an empty training set (train_dataset={'None' if train is None else 'empty'})."
            " Assign a non-empty `self.train_dataset` in `setup()`."
        )
    counts = datamodule.group_counts
    nonempty = int((counts > 0).sum())
    if nonempty < 2:
        raise ConfigurationError(
            f"`{argument}` {name} has a single group in its training set (group sizes {counts.tolist()}): there is"
            " nothing to balance. Check that the groups (the labels) are read correctly, or override"
            " `train_groups()`."
        )
    if datamodule.label_groups is False:
        raise ConfigurationError(
            f"`{argument}` {name} balances groups that are not the class labels (its dataset's `groups`), but the"
            " comparison reports recall per class split by training counts. Balance by the labels for `compare`"
            " (make `train_groups()` return them and set `self.label_groups = True`)."
        )
    val = datamodule.val_dataset
    if val is None or len(val) == 0:  # type: ignore[arg-type]
        raise ConfigurationError(
            f"`{argument}` {name} has no validation set. The comparison measures per-class recall on it: assign"
            " `self.val_dataset` in `setup()` (a balanced one measures every class equally)."
        )
    epoch = datamodule.samples_per_epoch or len(train)  # type: ignore[arg-type]
    if datamodule.batch_size > epoch:
        raise ConfigurationError(
            f"`--batch-size` {datamodule.batch_size} is larger than the {epoch} training examples of {name}"
            f" (per epoch): no full batch can be drawn. Lower --batch-size (or batch_size in {argument}-args) to at"
            f" most {epoch}."
        )
    labels = _dataset_labels(val)
    if labels is not None:
        check_validation_labels(labels, len(counts), f"`{argument}` {name}")


def _dataset_labels(dataset: Dataset) -> Optional[Tensor]:
    """The labels of ``dataset`` when they can be read without loading it (``groups``/``targets``, TensorDataset)."""
    indices = None
    while isinstance(dataset, Subset):
        indices = dataset.indices if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    labels: Any = None
    for attribute in ("groups", "targets"):
        if (found := getattr(dataset, attribute, None)) is not None:
            labels = found
            break
    if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
    if labels is None:
        return None
    try:
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    except (TypeError, ValueError):
        return None
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return None
    return labels if indices is None else labels[torch.as_tensor(list(indices), dtype=torch.long)]


def check_validation_labels(labels: Tensor, num_groups: int, what: str) -> None:
    """Raise :class:`ConfigurationError` if a validation label is not a training group id in ``[0, num_groups)``."""
    labels = labels.detach().long().cpu()
    bad = labels[(labels < 0) | (labels >= num_groups)]
    if bad.numel():
        values = sorted(set(bad.tolist()))
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ConfigurationError(
            f"{what} has validation labels that are not training groups: {shown} ({bad.numel()} examples), but"
            f" the training set has groups 0..{num_groups - 1}. Use the same label ids in `val_dataset` as in"
            " `train_dataset` (drop or remap the classes the training set lacks)."
        )


def check_output_dir(path: Union[str, os.PathLike], argument: str = "--out", create: bool = True) -> Path:
    """Create ``path`` (and its parents) and make sure a file can be written in it.

    With ``create=False`` nothing is created: only the nearest existing folder on the way is checked to be a
    writable directory, so a run that fails its checks leaves no empty output directory behind.

    Raises:
        ConfigurationError: the directory cannot be created or written.

    Example:
        >>> import tempfile
        >>> check_output_dir(Path(tempfile.mkdtemp()) / "runs").is_dir()
        True
    """
    out = Path(path)
    if not create:
        existing = out.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        reason = None
        if not existing.is_dir():
            reason = f"{str(existing)!r} is not a directory"
        elif not os.access(existing, os.W_OK | os.X_OK):
            reason = f"{str(existing)!r} is not writable"
        if reason is not None:
            raise ConfigurationError(
                f"Cannot write to `{argument}` {str(out)!r}: {reason}. Choose a writable directory with {argument}."
            )
        return out
    probe = out / ".write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigurationError(
            f"Cannot write to `{argument}` {str(out)!r}: {reason}. Choose a writable directory with {argument}."
        ) from err
    return out


# ----------------------------------------------------------------------------------------------------------
# Measurement during training
# ----------------------------------------------------------------------------------------------------------
class _ClassLoss(Metric):
    """Summed validation loss and sample count per class, and the count of non-finite losses (over processes)."""

    full_state_update = False
    loss_sum: Tensor
    count: Tensor
    nonfinite: Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("loss_sum", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, losses: Tensor, target: Tensor) -> None:
        self.loss_sum.index_add_(0, target, losses.to(torch.float64))
        self.count += torch.bincount(target, minlength=self.num_classes)
        self.nonfinite += (~torch.isfinite(losses)).sum()

    def compute(self) -> tuple[Tensor, Tensor]:
        per_class = self.loss_sum / self.count.clamp_min(1).to(torch.float64)
        return per_class + torch.where(self.count > 0, 0.0, math.nan), self.nonfinite.clone()


class _LossCallCounter:
    """Wraps ``BalancedDataModule.reduce_loss`` on one instance to count how often the model calls it."""

    def __init__(self, reduce_loss: Callable[..., Tensor]) -> None:
        self.reduce_loss = reduce_loss
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.reduce_loss(*args, **kwargs)


class _Recorder(Callback):
    """Per-group validation loss and recall at every validation, training samples and the loss-hook check."""

    def __init__(self, settings: CompareSettings, model_name: str, on_step: Optional[Callable[[int], None]] = None):
        self.settings = settings
        self.model_name = model_name
        self.on_step = on_step
        self.curve: list[dict[str, Any]] = []
        self.samples_seen = 0
        self._checked = False
        self._counter: Optional[_LossCallCounter] = None
        self.recall: Optional[TailRecall] = None
        self.losses: Optional[_ClassLoss] = None
        #: Step of the validation that found a non-finite training or validation loss (the run then stops).
        self.diverged_at: Optional[int] = None
        #: Whether training stopped on Ctrl-C (Lightning turns it into ``SystemExit``).
        self.interrupted = False
        self._train_nonfinite: Optional[Tensor] = None  # on the device: no synchronisation per step

    @override
    def setup(self, trainer: pl.Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if self.recall is None:
            counts = datamodule.group_counts
            s = self.settings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty split is reported as NaN in the table instead
                self.recall = TailRecall(counts, many=s.many, few=s.few, split=s.split, validate_args=False)  # type: ignore[arg-type]
            self.losses = _ClassLoss(len(counts))
        if stage == "fit" and self._counter is None:
            # An instance attribute shadows the method, so `balanced_loss` reaches the counter.
            self._counter = _LossCallCounter(datamodule.reduce_loss)
            datamodule.reduce_loss = self._counter

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._checked:
            self._checked = True
            if self._counter is not None and self._counter.calls == 0:
                raise ConfigurationError(
                    f"`--model` {self.model_name}: `training_step` did not reduce its loss with"
                    " `lightning_balance.balanced_loss`, so strategy='upweight' would silently train without its"
                    " weights. Compute the per-sample loss (reduction='none') and return"
                    " `balanced_loss(self, per_sample_loss)`."
                )
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            bad = ~torch.isfinite(loss.detach()).all()
            self._train_nonfinite = bad if self._train_nonfinite is None else self._train_nonfinite | bad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.samples_seen += extract_batch_size(batch) * trainer.world_size
        if self.on_step is not None and trainer.is_global_zero:
            self.on_step(trainer.global_step)  # optimizer steps, not batches: right with gradient accumulation too

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: LightningModule) -> None:
        for metric in (self.recall, self.losses):
            metric.to(pl_module.device)  # type: ignore[union-attr]
            metric.reset()  # type: ignore[union-attr]

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        logits, target = _logits_and_target(pl_module, outputs, batch, self.model_name)
        target = target.long().to(pl_module.device)
        check_validation_labels(target, self.losses.num_classes, f"`--datamodule` {type(trainer.datamodule).__name__}")  # type: ignore
        self.recall.update(logits.detach(), target)  # type: ignore[union-attr]
        if logits.is_floating_point() and logits.ndim == 2:
            self.losses.update(F.cross_entropy(logits.detach().float(), target, reduction="none"), target)  # type: ignore

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Every rank computes: the metrics sum their states over processes here.
        values = self.recall.compute()  # type: ignore[union-attr]
        per_class_loss, nonfinite = self.losses.compute()  # type: ignore[union-attr]
        train_bad = bool(self._train_nonfinite) if self._train_nonfinite is not None else False
        # Every rank takes the same decision, so that all of them stop at this validation.
        train_bad = bool(trainer.strategy.reduce_boolean_decision(train_bad, all=False))
        if (train_bad or int(nonfinite) > 0) and self.diverged_at is None:
            self.diverged_at = int(trainer.global_step)
        if self.diverged_at is not None:
            trainer.should_stop = True  # a diverged run measures nothing more
        if not trainer.is_global_zero:
            return
        point: dict[str, Any] = {"step": int(trainer.global_step), "val_nonfinite": int(nonfinite),
                                 "train_nonfinite": train_bad}
        for name in (*SPLITS, "macro", "worst"):
            point[f"recall_{name}"] = float(values[name])
            point[f"f1_{name}"] = float(values[f"f1_{name}"])
        for name, classes in self.recall.splits.items():  # type: ignore[union-attr]
            point[f"loss_{name}"] = _nanmean(per_class_loss[classes.to(per_class_loss.device)])
        point["loss_all"] = _nanmean(per_class_loss)
        point["per_class_recall"] = [float(v) for v in values["per_class"]]
        if self.curve and self.curve[-1]["step"] == point["step"]:
            self.curve[-1] = point
        else:
            self.curve.append(point)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


#: Keys of the logits, the targets and the inputs in ``validation_step`` outputs and in mapping batches.
_LOGIT_KEYS = ("preds", "logits")
_TARGET_KEYS = ("target", "targets", "y", "label", "labels")
_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "features")
_CONTRACT = (
    " `validation_step` should return {'preds': logits [B, num_classes], 'target': labels [B]}; otherwise the"
    " runner reads the batch: an (inputs, labels, ...) sequence, or a mapping with the inputs under one of"
    f" {list(_INPUT_KEYS)} and the labels under one of {list(_TARGET_KEYS)}."
)


def _batch_part(batch: Any, keys: Sequence[str], position: int) -> Optional[Any]:
    if isinstance(batch, Mapping):
        return next((batch[k] for k in keys if k in batch), None)
    if isinstance(batch, (list, tuple)) and len(batch) > position:
        return batch[position]
    return None


def _logits_and_target(
    pl_module: LightningModule, outputs: Any, batch: Any, model_name: str = "model"
) -> tuple[Tensor, Tensor]:
    logits = target = None
    if isinstance(outputs, Mapping):
        logits = next((outputs[k] for k in _LOGIT_KEYS if isinstance(outputs.get(k), Tensor)), None)
        target = next((outputs[k] for k in _TARGET_KEYS if isinstance(outputs.get(k), Tensor)), None)
    elif isinstance(outputs, Tensor):
        logits = outputs
    if target is None:
        target = _batch_part(batch, _TARGET_KEYS, 1)
    if not isinstance(target, Tensor):
        keys = f" (its keys: {sorted(map(str, batch))})" if isinstance(batch, Mapping) else ""
        raise ConfigurationError(
            f"`--model` {model_name}: cannot find the labels of a validation batch of type {type(batch).__name__}"
            f"{keys}.{_CONTRACT}"
        )
    if not (isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[0] == len(target)):
        inputs = _batch_part(batch, _INPUT_KEYS, 0)
        if inputs is None:
            keys = f" (its keys: {sorted(map(str, batch))})" if isinstance(batch, Mapping) else ""
            raise ConfigurationError(
                f"`--model` {model_name}: `validation_step` returned no logits and the inputs of a validation batch"
                f" of type {type(batch).__name__}{keys} cannot be found.{_CONTRACT}"
            )
        with torch.no_grad():
            logits = pl_module(inputs)
    if not (isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[0] == len(target)):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ConfigurationError(
            f"`--model` {model_name}: expected logits of shape [{len(target)}, num_classes] for a validation batch"
            f" of {len(target)} labels, but got {shape}.{_CONTRACT}"
        )
    return logits, target


class _RunProgress:
    """One rich progress bar over all the runs of a comparison (rank 0 only)."""

    def __init__(self, runs: int, steps_per_run: int, enabled: bool) -> None:
        self.enabled = enabled and global_rank() == 0
        self.total_steps = runs * steps_per_run
        self.steps_per_run = steps_per_run
        self._base = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _RunProgress:
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
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=console if console.is_terminal else Console(width=160),
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


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up messages and the warnings a tiny benchmark set triggers, then restore."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                            ".*LitLogger.*", ".*sync_dist=True.*", ".*is empty.*", ".*no target.*",
                            ".*LeafSpec.*", ".*held NaN or inf.*"):  # a diverged run is reported as such
                warnings.filterwarnings("ignore", message)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one (strategy, seed) run measured; ``curve`` holds one point per validation.

    ``diverged`` is true when the training loss or the validation loss became NaN or infinite; ``diverged_at`` is
    the step of the validation that found it (the run stopped there). ``tail_loss_rise`` is
    :func:`smoothed_rise` of the tail validation loss.
    """

    name: str
    label: str
    strategy: str
    seed: int
    steps: int
    samples_seen: int
    wall_time_s: float
    world_size: int
    final: dict[str, float]
    steps_to_tail_target: Optional[int]
    tail_loss_min: float
    tail_loss_min_step: Optional[int]
    curve: list[dict[str, Any]]
    diverged: bool = False
    diverged_at: Optional[int] = None
    tail_loss_rise: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smoothed_rise(values: Sequence[float], window: int = RISE_WINDOW) -> float:
    """How far a curve ends above its minimum, after a trailing mean over ``window`` points (NaN points skipped).

    A noisy curve always ends above its lowest point; the mean takes most of that noise out, so what is left is
    the trend (e.g. the tail overfitting). NaN for a curve without finite points.

    Example:
        >>> noisy = [3.0, 2.0, 1.0, 1.2, 0.8, 1.2, 0.8, 1.2]  # flat after step 3, with noise
        >>> round(smoothed_rise(noisy, window=1), 3)  # raw: ends 0.4 above its lowest point
        0.4
        >>> round(smoothed_rise(noisy, window=2), 3)  # the wiggle averages out
        0.0
        >>> round(smoothed_rise([3.0, 2.0, 1.0, 1.5, 2.0, 2.5], window=2), 3)  # a real rise stays
        1.0
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan
    window = max(1, int(window))
    smooth = [float(np.mean(finite[max(0, i - window + 1) : i + 1])) for i in range(len(finite))]
    return smooth[-1] - min(smooth)


def _data_sizes(datamodule: BalancedDataModule) -> dict[str, int]:
    """``num_features`` and ``num_classes`` of the DataModule's data, for a model sized from it."""
    sample = datamodule.train_dataset[0]  # type: ignore[index]
    if isinstance(sample, Mapping):
        raise ConfigurationError(
            f"`--datamodule` {type(datamodule).__name__} yields mappings (keys {sorted(map(str, sample))}), but"
            " the default model (MLPClassifier) trains on (inputs, labels) tuples. Give your own model with"
            " --model (its training_step reads the mapping), or make the dataset return (x, y)."
        )
    num_features = getattr(datamodule, "num_features", None)
    if num_features is None:
        num_features = int(torch.as_tensor(sample[0]).numel())
    num_classes = getattr(datamodule, "num_classes", None) or datamodule.num_groups
    return {"num_features": int(num_features), "num_classes": int(num_classes)}


def default_model(datamodule: BalancedDataModule, **kwargs: Any) -> LightningModule:
    """An :class:`~lightning_balance.models.MLPClassifier` sized from the DataModule's data.

    ``kwargs`` (``hidden``, ``lr``...) go to the model and win over the sizes read from the data.
    """
    from lightning_balance.models import MLPClassifier

    spec = ComponentSpec(MLPClassifier, kwargs, "--model", size_from_data=True)
    return _build_model(spec, datamodule)[0]


def _default_model_spec() -> ComponentSpec:
    from lightning_balance.models import MLPClassifier

    return ComponentSpec(MLPClassifier, {}, "--model", size_from_data=True)


def _build_model(model: Optional[ComponentSpec], datamodule: BalancedDataModule) -> tuple[LightningModule, str]:
    """The model of a run and its name; ``datamodule`` must be set up when the model is sized from the data."""
    spec = model if model is not None else _default_model_spec()
    sizes = _data_sizes(datamodule) if spec.size_from_data else {}
    module = spec.build(**{k: v for k, v in sizes.items() if k not in spec.kwargs})
    return module, f"{spec.cls.__module__}.{spec.cls.__qualname__}"


def _trainer_kwargs(settings: CompareSettings, callbacks: Sequence[Callback]) -> dict[str, Any]:
    """Keyword arguments of one run's Trainer: the runner's defaults, then ``settings.trainer_kwargs``, built afresh."""
    user = {key: build_config_value(value, f"trainer.{key}") for key, value in settings.trainer_kwargs.items()}
    accumulate = int(user.get("accumulate_grad_batches", 1))
    kwargs: dict[str, Any] = dict(
        max_steps=settings.max_steps,
        # Lightning counts validation intervals in batches; `val_every` is in optimizer steps.
        val_check_interval=settings.val_every * accumulate,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, settings.val_every),
        deterministic=False,
    )
    kwargs.update(user)
    extra = user.get("callbacks") or []
    kwargs["callbacks"] = [*callbacks, *(extra if isinstance(extra, (list, tuple)) else [extra])]
    return kwargs


def run_once(
    spec: RunSpec,
    seed: int,
    data: ComponentSpec,
    model: Optional[ComponentSpec],
    settings: CompareSettings,
    on_step: Optional[Callable[[int], None]] = None,
) -> Optional[RunResult]:
    """Train one strategy with one seed and return its measurements (``None`` on ranks other than 0).

    Raises:
        KeyboardInterrupt: training was interrupted (Ctrl-C); Lightning's own ``SystemExit`` is turned back into it.
    """
    pl.seed_everything(seed, verbose=False)
    datamodule = data.build(strategy=spec.strategy, temperature=spec.temperature, seed=seed)
    if model is None or model.size_from_data:
        datamodule.setup("fit")
    module, model_name = _build_model(model, datamodule)
    _apply_optimizer(module, settings)
    recorder = _Recorder(settings, model_name, on_step)
    callbacks: list[Callback] = [recorder]
    saln = None
    if spec.saln_keep is not None:
        from lightning_balance.callbacks.saln import SALN

        saln = SALN(keep=spec.saln_keep, method=spec.saln_method, seed=seed)  # type: ignore[arg-type]
        callbacks.append(saln)
    trainer = pl.Trainer(**_trainer_kwargs(settings, callbacks))
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule)
        if trainer.global_step % settings.val_every:
            # The last validation came before the end; every rank validates again, as the metrics sync.
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except SystemExit:
        if recorder.interrupted:
            raise KeyboardInterrupt from None
        raise
    wall = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    samples = recorder.samples_seen if saln is None else saln.samples_kept * trainer.world_size
    return _run_result(spec, seed, recorder, trainer, samples, wall, settings.tail_target)


def _run_result(
    spec: RunSpec, seed: int, recorder: _Recorder, trainer: pl.Trainer, samples: int, wall: float,
    tail_target: float,
) -> RunResult:
    curve = recorder.curve
    final = {name: curve[-1][name] for name in METRICS} if curve else {name: math.nan for name in METRICS}
    reached = next((p["step"] for p in curve if p["recall_tail"] >= tail_target), None)
    tail_losses = [(p["loss_tail"], p["step"]) for p in curve if math.isfinite(p["loss_tail"])]
    tail_min, tail_min_step = min(tail_losses) if tail_losses else (math.nan, None)
    return RunResult(
        name=spec.name, label=spec.label, strategy=spec.strategy, seed=seed, steps=int(trainer.global_step),
        samples_seen=int(samples), wall_time_s=wall, world_size=trainer.world_size, final=final,
        steps_to_tail_target=reached, tail_loss_min=tail_min, tail_loss_min_step=tail_min_step, curve=curve,
        diverged=recorder.diverged_at is not None, diverged_at=recorder.diverged_at,
        tail_loss_rise=smoothed_rise([p["loss_tail"] for p in curve]),
    )


# ----------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; the std of a single value is NaN."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else math.nan


def _rise(run: RunResult) -> float:
    if run.tail_loss_rise is not None:
        return run.tail_loss_rise
    return run.final.get("loss_tail", math.nan) - run.tail_loss_min  # a result built by hand, without its curve


def summarize(runs: Sequence[RunResult], tail_target: float = 0.5) -> list[dict[str, Any]]:
    """One row per strategy, in first-seen order: mean and std over its seeds of every measurement.

    Columns: ``name``, ``label``, ``seeds``, ``diverged`` (how many of those seeds diverged: their measurements
    are left out of every mean and std below), ``<metric>_mean`` / ``<metric>_std`` for the final recall, F1 and
    validation loss of every split (the std is the sample std over seeds, NaN for a single seed),
    ``wall_time_s``, ``steps``, ``samples_seen`` (over all seeds, diverged ones included), ``steps_to_tail_target``
    (over the seeds that reached ``tail_target``; ``tail_target_reached`` counts them), ``tail_loss_min_step``
    and ``tail_loss_rise`` (how far the smoothed tail validation loss ended above its minimum, see
    :func:`smoothed_rise`: how far the tail has overfitted).

    Example:
        >>> run = RunResult("natural", "T=1", "natural", 0, 10, 320, 1.0, 1, {"recall_tail": 0.5}, 10, 1.0, 10, [])
        >>> row = summarize([run])[0]
        >>> row["recall_tail_mean"], row["recall_tail_std"], row["tail_target_reached"], row["diverged"]
        (0.5, nan, '1/1', 0)
    """
    rows = []
    for name in dict.fromkeys(run.name for run in runs):
        group = [run for run in runs if run.name == name]
        trained = [run for run in group if not run.diverged]
        row: dict[str, Any] = {"name": name, "label": group[0].label, "seeds": len(group),
                               "diverged": len(group) - len(trained)}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([r.final.get(metric, math.nan) for r in trained])
        for key in ("wall_time_s", "steps", "samples_seen"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([float(getattr(r, key)) for r in group])
        reached = [r.steps_to_tail_target for r in trained if r.steps_to_tail_target is not None]
        row["tail_target"] = tail_target
        row["steps_to_tail_target_mean"], row["steps_to_tail_target_std"] = _mean_std([float(s) for s in reached])
        row["tail_target_reached"] = f"{len(reached)}/{len(group)}"
        steps = [float(r.tail_loss_min_step) for r in trained if r.tail_loss_min_step is not None]
        row["tail_loss_min_step_mean"], row["tail_loss_min_step_std"] = _mean_std(steps)
        row["tail_loss_rise_mean"], row["tail_loss_rise_std"] = _mean_std([_rise(r) for r in trained])
        rows.append(row)
    return rows


@dataclass
class CompareResult:
    """All runs of a comparison, their per-strategy summary and the settings that produced them.

    ``complete`` is false for a comparison interrupted before its last run (or still running, in the files
    written after each run): ``runs`` then holds the finished runs only.
    """

    settings: dict[str, Any]
    runs: list[RunResult]
    summary: list[dict[str, Any]]
    complete: bool = True

    @property
    def is_empty(self) -> bool:
        """True on ranks other than 0, which record nothing."""
        return not self.runs

    @property
    def all_diverged(self) -> bool:
        """True when there are runs and every one of them diverged."""
        return bool(self.runs) and all(run.diverged for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "settings": self.settings, "summary": self.summary,
                "runs": [r.to_dict() for r in self.runs]}


def _probe_trainer(settings: CompareSettings) -> None:
    """Build one Trainer with the runs' arguments, so that a setting it refuses fails before anything is written."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        pl.Trainer(**_trainer_kwargs(settings, []))
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        given = {k: v for k, v in settings.trainer_kwargs.items() if k != "callbacks"}
        raise ConfigurationError(
            f"The Trainer refuses the settings {given!r}: {str(err).rstrip('.')}. Check --accelerator, --devices,"
            " --strategy, --num-nodes, --precision and the `trainer:` section of --config."
        ) from err


@contextlib.contextmanager
def _keep_sigint_handler() -> Iterator[None]:
    """Restore the Ctrl-C handler afterwards: Lightning ignores Ctrl-C once it has caught one."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def compare(
    data: ComponentSpec,
    model: Optional[ComponentSpec] = None,
    runs: Optional[Sequence[RunSpec]] = None,
    settings: Optional[CompareSettings] = None,
    progress: bool = True,
    on_checked: Optional[Callable[[], None]] = None,
    on_run: Optional[Callable[[CompareResult], None]] = None,
) -> CompareResult:
    """Train every run of ``runs`` with every seed of ``settings`` and summarise them.

    Args:
        data: the DataModule class (a :class:`~lightning_balance.BalancedDataModule` subclass) and its arguments;
            ``strategy``, ``temperature`` and ``seed`` are set per run.
        model: the LightningModule class and its arguments; ``None`` sizes an
            :class:`~lightning_balance.models.MLPClassifier` from the data (so does a spec with
            ``size_from_data=True``, with its arguments).
        runs: the strategies; defaults to :func:`default_runs`.
        settings: steps, seeds and measurement; defaults to :class:`CompareSettings`.
        progress: show one rich progress bar over all runs (on rank 0).
        on_checked: called once the data, the model, the optimizer and the Trainer settings have passed their
            checks, before any training (e.g. to create the output directory only for a comparison that can run).
        on_run: called on rank 0 after every finished run with the results so far (``complete=False`` until the
            last one), e.g. to write them, so that an interrupted comparison keeps its finished runs.

    Returns:
        The results; ``complete`` is false when the comparison was interrupted (Ctrl-C): it holds the runs that
        finished before, and ``settings["interrupted"]`` names the run that was cut.

    Raises:
        ConfigurationError: the data, the model or the settings do not meet the contract in the module docstring.

    Example:
        >>> from lightning_balance.datasets import LongTailDigits
        >>> result = compare(ComponentSpec(LongTailDigits), runs=default_runs(only=["upweight"]),
        ...                  settings=CompareSettings(seeds=[0], max_steps=8, val_every=4), progress=False)
        >>> [(p["step"], round(p["recall_macro"], 2) >= 0) for p in result.runs[0].curve]
        [(4, True), (8, True)]
        >>> result.summary[0]["samples_seen_mean"]  # 8 steps of 32 samples
        256.0
        >>> result.complete, result.runs[0].diverged
        (True, False)
    """
    settings = settings or CompareSettings()
    runs = list(runs) if runs is not None else default_runs()
    if not runs:
        raise ConfigurationError("Expected at least one run to compare, but got none.")
    check_datamodule_class(data.cls, data.argument)
    if model is not None:
        check_model_class(model.cls, model.argument)
    check_trainer_arguments(settings.trainer_kwargs)
    with quiet_lightning():
        probe = data.build(strategy="natural", temperature=1.0, seed=int(settings.seeds[0]))
        check_datamodule(probe, data.argument)
        # A wrong --model-args or optimizer setting fails here, before any training.
        module, _ = _build_model(model, probe)
        _check_optimizers(module, settings, model.argument if model is not None else "--model")
        _probe_trainer(settings)
        described = {
            "datamodule": data.name,
            "datamodule_args": _jsonable(data.kwargs),
            "model": model.name if model is not None else _default_model_spec().name,
            "model_args": _jsonable(model.kwargs) if model is not None else {},
            "runs": [{"name": r.name, "strategy": r.strategy, "temperature": r.label, "saln_keep": r.saln_keep,
                      "saln_method": r.saln_method if r.saln_keep is not None else None} for r in runs],
            "group_counts": [int(c) for c in probe.group_counts],
            **_jsonable({k: v for k, v in asdict(settings).items()}),
        }
        if on_checked is not None:
            on_checked()
        results: list[RunResult] = []
        plan = [(spec, seed) for spec in runs for seed in settings.seeds]
        described["runs_planned"] = len(plan)
        interrupted: Optional[str] = None

        def current(complete: bool) -> CompareResult:
            settings_now = {**described, "runs_finished": len(results)}
            if interrupted is not None:
                settings_now["interrupted"] = interrupted
            return CompareResult(settings_now, list(results),
                                 summarize(results, settings.tail_target) if results else [], complete)

        with _keep_sigint_handler(), _RunProgress(len(plan), settings.max_steps, progress) as bar:
            for i, (spec, seed) in enumerate(plan):
                bar.start_run(f"{spec.name} ({spec.label}) seed {seed}  [{i + 1}/{len(plan)}]", i)
                try:
                    result = run_once(spec, seed, data, model, settings, on_step=bar.at_step)
                except KeyboardInterrupt:
                    interrupted = f"{spec.name} seed {seed}"
                    break
                if result is not None:
                    results.append(result)
                    if on_run is not None:
                        on_run(current(complete=False))
            if interrupted is None:
                bar.start_run(f"{len(plan)} runs done", len(plan))
    return current(complete=interrupted is None)


def _jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold replaced by its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
