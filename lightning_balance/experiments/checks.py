r"""
Checks at the boundary
^^^^^^^^^^^^^^^^^^^^^^

Everything a comparison checks before it trains: import paths, the DataModule and model classes, the data
(two non-empty groups, a validation set whose labels are training groups, group ids of the validation set when
the groups are not the labels), the Trainer's hardware settings, the optimizer, the output directory and a folder
to resume. Each check raises :class:`~lightning_balance.experiments.settings.ConfigurationError` with a message
that names the argument, the value and the fix; the command line turns it into exit status 2, before anything is
written.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from lightning_balance.datamodule import BalancedDataModule
from lightning_balance.experiments.settings import CompareSettings, ConfigurationError

__all__ = [
    "apply_optimizer",
    "build_config_value",
    "check_datamodule",
    "check_datamodule_class",
    "check_model_class",
    "check_output_dir",
    "check_trainer_arguments",
    "check_validation_labels",
    "ensure_cwd_importable",
    "import_object",
    "validation_groups",
]


def import_object(path: str, argument: str = "--datamodule") -> Any:
    """Import ``package.module.Name``, ``package.module:Name`` or ``path/to/file.py:Name``.

    The current directory is importable, as with ``python -m``, so a class in ``./my_data.py`` is
    ``my_data.MyData``.

    Raises:
        ConfigurationError: the path does not resolve; the message names ``argument`` and the path.

    Example:
        >>> import_object("lightning_balance.experiments.datasets.LongTailDigits").__name__
        'LongTailDigits'
        >>> import_object("lightning_balance.datasets.Nope", "--datamodule")
        Traceback (most recent call last):
        ...
        lightning_balance.experiments.settings.ConfigurationError: Cannot import `--datamodule`
        'lightning_balance.datasets.Nope': module 'lightning_balance.datasets' has no attribute 'Nope'. ...
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


def apply_optimizer(module: LightningModule, settings: CompareSettings) -> None:
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
    apply_optimizer(module, settings)
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
        lightning_balance.experiments.settings.ConfigurationError: Expected `--devices` to be a positive number ...
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
        lightning_balance.experiments.settings.ConfigurationError: `--datamodule` builtins.dict is not a subclass of
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
    """Set up ``datamodule`` for fitting and check there is something to balance and to validate on.

    When the groups are not the class labels (domains, languages: a ``groups`` attribute of the training set,
    ``train_sources`` or an overridden ``train_groups()``), the validation set must say the group of every example
    too, as a ``groups`` attribute: the comparison then measures accuracy and loss per group.
    """
    name = type(datamodule).__name__
    try:
        datamodule.setup("fit")
    except Exception as err:
        raise ConfigurationError(f"`{argument}` {name}.setup('fit') failed: {type(err).__name__}: {err}") from err
    train = datamodule.train_dataset if datamodule.train_sources is None else datamodule.train_sources
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
    val = datamodule.val_dataset
    if val is None or len(val) == 0:  # type: ignore[arg-type]
        raise ConfigurationError(
            f"`{argument}` {name} has no validation set. The comparison measures per-group recall on it: assign"
            " `self.val_dataset` in `setup()` (a balanced one measures every group equally)."
        )
    epoch = datamodule.samples_per_epoch or int(counts.sum())
    if datamodule.batch_size > epoch:
        raise ConfigurationError(
            f"`--batch-size` {datamodule.batch_size} is larger than the {epoch} training examples of {name}"
            f" (per epoch): no full batch can be drawn. Lower --batch-size (or batch_size in {argument}-args) to at"
            f" most {epoch}."
        )
    if datamodule.label_groups is False:
        groups = validation_groups(datamodule)
        if groups is None:
            raise ConfigurationError(
                f"`{argument}` {name} balances groups that are not the class labels (its training set's `groups`,"
                " `train_sources` or `train_groups()`), so the comparison measures accuracy and loss per group, but"
                " its validation set does not say the group of each example. Give `val_dataset` a `groups`"
                " attribute (one group id per example, the same ids as the training groups)."
            )
        if len(groups) != len(val):  # type: ignore[arg-type]
            raise ConfigurationError(
                f"`{argument}` {name}: `val_dataset.groups` holds {len(groups)} group ids for"
                f" {len(val)} validation examples. Give one group id per example."  # type: ignore[arg-type]
            )
        check_validation_labels(groups, len(counts), f"`{argument}` {name}", what="group ids")
        return
    labels = _dataset_labels(val)
    if labels is not None:
        check_validation_labels(labels, len(counts), f"`{argument}` {name}")


def validation_groups(datamodule: BalancedDataModule) -> Optional[Tensor]:
    """The group id of every validation example, from the validation set's ``groups`` attribute (or ``None``)."""
    dataset = datamodule.val_dataset
    indices = None
    while isinstance(dataset, Subset):
        indices = dataset.indices if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    found = getattr(dataset, "groups", None)
    if found is None:
        return None
    groups = _integer_ids(found)
    if groups is None:
        return None
    return groups if indices is None else groups[torch.as_tensor(list(indices), dtype=torch.long)]


def _integer_ids(values: Any) -> Optional[Tensor]:
    try:
        ids = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values)
    except (TypeError, ValueError):
        return None
    if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        return None
    return ids.long()


def _dataset_labels(dataset: Dataset) -> Optional[Tensor]:
    """The labels of ``dataset`` when they can be read without loading it (``targets``, a TensorDataset)."""
    indices = None
    while isinstance(dataset, Subset):
        indices = dataset.indices if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    labels: Any = getattr(dataset, "targets", None)
    if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
    ids = _integer_ids(labels) if labels is not None else None
    if ids is None:
        return None
    return ids if indices is None else ids[torch.as_tensor(list(indices), dtype=torch.long)]


def check_validation_labels(labels: Tensor, num_groups: int, where: str, what: str = "labels") -> None:
    """Raise :class:`ConfigurationError` if a validation label is not a training group id in ``[0, num_groups)``."""
    labels = labels.detach().long().cpu()
    bad = labels[(labels < 0) | (labels >= num_groups)]
    if bad.numel():
        values = sorted(set(bad.tolist()))
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ConfigurationError(
            f"{where} has validation {what} that are not training groups: {shown} ({bad.numel()} examples), but"
            f" the training set has groups 0..{num_groups - 1}. Use the same {'label' if what == 'labels' else 'group'}"
            " ids in `val_dataset` as in `train_dataset` (drop or remap the ones the training set lacks)."
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


