r"""
Tail recall monitor
^^^^^^^^^^^^^^^^^^^

Log head/medium/tail recall and F1 of every validation epoch without a line of code in the LightningModule.

The callback keeps a :class:`~lightning_balance.TailRecall` on the module's device, feeds it every validation
batch and logs ``val/recall_head``, ``val/recall_medium``, ``val/recall_tail``, ``val/recall_macro``,
``val/recall_worst`` and the same with ``f1_`` at the end of the epoch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_balance.functional.tail_recall import (
    SPLITS,
    CountsLike,
    SplitLike,
    _split_arg_validation,
    _validate_class_counts,
)
from lightning_balance.tail_recall import TailRecall

__all__ = ["TailRecallMonitor"]

BatchKey = Union[int, str]
_MISSING = object()


class TailRecallMonitor(Callback):
    r"""Log recall and F1 of the head, medium and tail classes at the end of every validation epoch.

    Logged names (with the default ``prefix="val/"``): ``val/recall_head``, ``val/recall_medium``,
    ``val/recall_tail``, ``val/recall_macro``, ``val/recall_worst``, ``val/f1_head``, ``val/f1_medium``,
    ``val/f1_tail``, ``val/f1_macro``, ``val/f1_worst``, and with ``log_per_class=True`` also
    ``val/recall_class_{c}`` and ``val/f1_class_{c}``. Values follow :class:`~lightning_balance.TailRecall`:
    classes without a validation target are left out of the averages, and a split without such classes is
    logged as ``NaN``. Logits with NaN or inf values, from ``validation_step`` or from the extra forward pass
    below, count as wrong predictions (the metric never takes the arg-max of a NaN), with one warning.

    **Training counts.** ``class_counts`` if given, else ``trainer.datamodule.group_counts`` after the
    DataModule's ``setup`` (as :class:`~lightning_balance.BalancedDataModule` provides) when its groups are the
    class labels. Without either, or when the DataModule balances other groups (``label_groups`` is False:
    languages, domains), ``setup`` raises an error that asks for ``class_counts=``.

    **Predictions and targets**, for each validation batch, from the first source that applies:

    1. ``validation_step`` returned a dict with ``preds_key`` (default ``"preds"``): logits, probabilities or
       labels; the target is the dict's ``"target"`` entry if present, else ``batch[target_key]``.
    2. ``validation_step`` returned a tensor shaped like predictions for ``batch[target_key]`` (float
       ``(N, C, ...)`` or integer labels shaped like the target); a scalar loss does not qualify.
    3. Otherwise the callback calls ``pl_module(batch[input_key])`` without gradients and takes its output as
       logits. This costs an extra forward pass per batch; return ``{"preds": logits, ...}`` from
       ``validation_step`` to avoid it.

    ``target_key`` defaults to ``trainer.datamodule.group_key`` when the DataModule has one, else ``1``: the
    second element of an ``(inputs, labels)`` batch. ``input_key`` and ``target_key`` may be ints (tuple or
    list batches) or strings (dict batches). All validation dataloaders are pooled into one result.

    **Distributed training.** The metric sums its count states over processes when it computes, so every
    rank logs the same values, equal to one process's on the samples the ranks saw; the callback computes on
    every rank, as the synchronisation requires. Lightning's distributed validation sampler pads the shards to
    equal length by repeating up to ``world_size - 1`` samples, and those repeats are counted: use a validation
    set whose size divides by the number of processes for results identical to a single process.
    Sanity-check batches are not counted.

    Args:
        class_counts: training count of every class; if ``None``, read from the DataModule.
        many: head threshold of the absolute split (head: ``count > many``).
        few: tail threshold of the absolute split (tail: ``count < few``; medium: ``few <= count <= many``).
        split: ``"absolute"`` or ``"quantile"``; see :class:`~lightning_balance.TailRecall`.
        tail_fraction: fraction of classes in the tail for ``split="quantile"``.
        head_fraction: fraction of classes in the head for ``split="quantile"``.
        ignore_index: target value to skip, e.g. padding.
        prefix: prepended to every logged name.
        log_per_class: also log every class's recall and F1.
        prog_bar: show the values in the progress bar.
        preds_key: key of the predictions in a dict returned by ``validation_step``.
        input_key: where the model inputs are in a batch, for the extra forward pass.
        target_key: where the targets are in a batch; see above for the default.

    Example:
        >>> monitor = TailRecallMonitor(class_counts=[500, 60, 8])   # Trainer(callbacks=[monitor])
        >>> monitor.names
        ['val/recall_head', 'val/recall_medium', 'val/recall_tail', 'val/recall_macro', 'val/recall_worst',
         'val/f1_head', 'val/f1_medium', 'val/f1_tail', 'val/f1_macro', 'val/f1_worst']
    """

    def __init__(
        self,
        class_counts: Optional[CountsLike] = None,
        *,
        many: float = 100,
        few: float = 20,
        split: SplitLike = "absolute",
        tail_fraction: float = 1 / 3,
        head_fraction: float = 1 / 3,
        ignore_index: Optional[int] = None,
        prefix: str = "val/",
        log_per_class: bool = False,
        prog_bar: bool = False,
        preds_key: str = "preds",
        input_key: BatchKey = 0,
        target_key: Optional[BatchKey] = None,
    ) -> None:
        super().__init__()
        _split_arg_validation(many, few, split, tail_fraction, head_fraction, ignore_index)
        if not isinstance(prefix, str):
            raise ValueError(f"Expected argument `prefix` to be a string such as 'val/', but got {prefix!r}.")
        for name, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and (isinstance(key, bool) or not isinstance(key, (int, str))):
                raise ValueError(
                    f"Expected argument `{name}` to be an int (tuple batches) or a str (dict batches), but got {key!r}."
                )
        self._class_counts = None if class_counts is None else _validate_class_counts(class_counts)
        self._metric_kwargs: dict[str, Any] = {
            "many": many,
            "few": few,
            "split": split,
            "tail_fraction": tail_fraction,
            "head_fraction": head_fraction,
            "ignore_index": ignore_index,
        }
        self.prefix = prefix
        self.log_per_class = log_per_class
        self.prog_bar = prog_bar
        self.preds_key = preds_key
        self.input_key = input_key
        self.target_key = target_key
        self.metric: Optional[TailRecall] = None
        self._resolved_target_key: BatchKey = 1 if target_key is None else target_key
        self._told_about_forward = False

    @property
    def names(self) -> list[str]:
        """The names logged every validation epoch (without the per-class ones)."""
        recall = [f"{self.prefix}recall_{name}" for name in (*SPLITS, "macro", "worst")]
        f1 = [f"{self.prefix}f1_{name}" for name in (*SPLITS, "macro", "worst")]
        return recall + f1

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        datamodule = getattr(trainer, "datamodule", None)
        counts = self._class_counts if self._class_counts is not None else self._counts_from(datamodule)
        if self.target_key is None:
            # Counts and targets must index the same thing: take both from the DataModule when it says where.
            self._resolved_target_key = getattr(datamodule, "group_key", 1) if datamodule is not None else 1
        self.metric = TailRecall(counts, **self._metric_kwargs)

    @staticmethod
    def _counts_from(datamodule: Any) -> Tensor:
        # getattr_static: do not run the property yet; only ask whether the DataModule offers one.
        if datamodule is None or inspect.getattr_static(datamodule, "group_counts", _MISSING) is _MISSING:
            found = "no DataModule" if datamodule is None else f"a {type(datamodule).__name__} without `group_counts`"
            raise MisconfigurationException(
                f"TailRecallMonitor needs the training count of every class, but the Trainer has {found}."
                " Pass them as `TailRecallMonitor(class_counts=...)` (e.g. `torch.bincount(train_labels)`), or use a"
                " DataModule that exposes `group_counts`, such as `lightning_balance.BalancedDataModule`."
            )
        try:
            counts = datamodule.group_counts
        except Exception as err:
            raise MisconfigurationException(
                f"TailRecallMonitor could not read `{type(datamodule).__name__}.group_counts` after `setup`: {err}"
                " Pass the training counts as `TailRecallMonitor(class_counts=...)`."
            ) from err
        if counts is None:
            raise MisconfigurationException(
                f"`{type(datamodule).__name__}.group_counts` is None after `setup`. Pass the training counts as"
                " `TailRecallMonitor(class_counts=...)`."
            )
        if getattr(datamodule, "label_groups", True) is False:
            # Groups such as languages or domains are not classes: their sizes would split the classes wrongly.
            raise MisconfigurationException(
                f"`{type(datamodule).__name__}` balances groups that are not the class labels, so its"
                " `group_counts` are not class counts. Pass the training count of every class as"
                " `TailRecallMonitor(class_counts=...)`."
            )
        return counts

    # ------------------------------------------------------------------ validation loop
    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        self.metric.to(pl_module.device)
        self.metric.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        preds, target = self._predictions(pl_module, outputs, batch)
        device = self.metric.device
        self.metric.update(preds.detach().to(device), target.detach().to(device))

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        # Every rank computes: the metric gathers its count states from all processes here.
        values = self.metric.compute()
        logged = {}
        for name in (*SPLITS, "macro", "worst"):
            logged[f"{self.prefix}recall_{name}"] = values[name]
            logged[f"{self.prefix}f1_{name}"] = values[f"f1_{name}"]
        if self.log_per_class:
            for c in range(self.metric.num_classes):
                logged[f"{self.prefix}recall_class_{c}"] = values["per_class"][c]
                logged[f"{self.prefix}f1_class_{c}"] = values["per_class_f1"][c]
        # The values are already identical on every rank. `sync_dist=True` only keeps Lightning from warning
        # that epoch-level values are not synced; with `reduce_fx="max"` that extra reduction of equal values
        # returns them bit for bit (a mean would divide a sum and could round).
        pl_module.log_dict(
            logged,
            prog_bar=self.prog_bar,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
            add_dataloader_idx=False,
            batch_size=1,
        )
        self.metric.reset()

    # ------------------------------------------------------------------ where predictions come from
    def _predictions(self, pl_module: LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(outputs, Mapping) and self.preds_key in outputs:
            preds = outputs[self.preds_key]
            target = outputs["target"] if "target" in outputs else _select(batch, self._resolved_target_key, "target")
            if not isinstance(preds, Tensor):
                raise MisconfigurationException(
                    f"`validation_step` returned {self.preds_key!r} of type {type(preds).__name__}; TailRecallMonitor"
                    " expects a tensor of logits, probabilities or labels there."
                )
            return preds, target

        target = _select(batch, self._resolved_target_key, "target")
        if isinstance(outputs, Tensor) and self._looks_like_preds(outputs, target):
            return outputs, target

        if not self._told_about_forward:
            self._told_about_forward = True
            rank_zero_info(
                f"TailRecallMonitor: `validation_step` returned no predictions, so it calls `pl_module(batch"
                f"[{self.input_key!r}])` for them (one extra forward pass per batch). Return"
                f" `{{{self.preds_key!r}: logits}}` from `validation_step` to avoid it."
            )
        inputs = _select(batch, self.input_key, "input", tensor=False)
        with torch.no_grad():
            preds = pl_module(inputs)
        if not isinstance(preds, Tensor):
            raise MisconfigurationException(
                f"TailRecallMonitor called `pl_module(batch[{self.input_key!r}])` for predictions and got a"
                f" {type(preds).__name__}, not a tensor of logits. Return `{{{self.preds_key!r}: logits}}` from"
                " `validation_step`, or set `input_key=`."
            )
        return preds, target

    def _looks_like_preds(self, outputs: Tensor, target: Tensor) -> bool:
        if not isinstance(target, Tensor) or target.ndim == 0 or outputs.ndim == 0:
            return False
        if outputs.is_floating_point():
            return (
                outputs.ndim == target.ndim + 1
                and outputs.shape[0] == target.shape[0]
                and self.metric is not None
                and outputs.shape[1] == self.metric.num_classes
            )
        return outputs.dtype != torch.bool and outputs.shape == target.shape


def _select(batch: Any, key: BatchKey, what: str, tensor: bool = True) -> Any:
    """``batch[key]`` for tuple, list or dict batches, with an error that says which key to set."""
    try:
        if isinstance(batch, Mapping):
            value = batch[key]
        elif isinstance(batch, Sequence) and isinstance(key, int):
            value = batch[key]
        else:
            raise TypeError(f"cannot index a {type(batch).__name__} with {key!r}")
    except (KeyError, IndexError, TypeError) as err:
        raise MisconfigurationException(
            f"TailRecallMonitor could not find the {what} at `batch[{key!r}]` ({err}). Set"
            f" `TailRecallMonitor({what}_key=...)` to where your validation batches keep it."
        ) from err
    if tensor and not isinstance(value, Tensor):
        raise MisconfigurationException(
            f"TailRecallMonitor expected a tensor at `batch[{key!r}]` for the {what}, but got {type(value).__name__}."
            f" Set `TailRecallMonitor({what}_key=...)`."
        )
    return value
