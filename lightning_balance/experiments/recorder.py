r"""
Measuring a run
^^^^^^^^^^^^^^^

:class:`Recorder`, the callback every compared run trains with. At every validation it measures, per group and
per head/medium/tail split (groups split by their training counts):

* when the groups are the class labels: recall and F1 of every class
  (:class:`~lightning_balance.TailRecall`), from the logits the DataModule predicts with
  (:meth:`~lightning_balance.BalancedDataModule.prediction_logits`, so that post-hoc logit adjustment is
  measured as it predicts);
* when the groups are not the labels (domains, languages): accuracy within every group, from the group ids of the
  validation set (its ``groups`` attribute). F1 is a per-class notion and is not reported then;
* in both cases the cross-entropy of those logits, averaged within every group, and the group probabilities the
  sampler draws with at that step.

It also counts the training samples, checks on the first training batch that the model reduces its loss through
the DataModule (:func:`~lightning_balance.balanced_loss`, or :func:`~lightning_balance.balanced_cross_entropy`
where the strategy needs the logits), stops a run whose loss became NaN or infinite, and logs the measurements to
the Trainer's loggers under ``compare/``.

Every rank computes the synchronised metrics (their states are summed over processes); rank 0 keeps the curve.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from lightning_balance.experiments.checks import check_validation_labels, validation_groups
from lightning_balance.experiments.settings import CompareSettings, ConfigurationError
from lightning_balance.functional.tail_recall import SPLITS, _split_masks
from lightning_balance.tail_recall import TailRecall

__all__ = ["GroupStats", "Recorder", "logits_and_target"]

#: Strategies whose training loss must come from the logits (``balanced_cross_entropy``).
LOGIT_STRATEGIES = ("logit_adjust",)


class GroupStats(Metric):
    """Per group: summed validation loss, samples, correct predictions; and the count of non-finite losses.

    The states are sums over batches and processes, so the result is exact under DDP.
    """

    full_state_update = False
    loss_sum: Tensor
    count: Tensor
    correct: Tensor
    nonfinite: Tensor

    def __init__(self, num_groups: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.add_state("loss_sum", default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, losses: Tensor, groups: Tensor, correct: Optional[Tensor] = None) -> None:
        finite = torch.isfinite(losses)
        self.loss_sum.index_add_(0, groups, losses.to(torch.float64))
        self.count += torch.bincount(groups, minlength=self.num_groups)
        if correct is not None:
            self.correct += torch.bincount(groups, weights=correct.to(torch.float64), minlength=self.num_groups).long()
        self.nonfinite += (~finite).sum()

    def compute(self) -> dict[str, Tensor]:
        present = self.count > 0
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.count.device)
        count = self.count.clamp_min(1).to(torch.float64)
        return {"loss": torch.where(present, self.loss_sum / count, nan),
                "accuracy": torch.where(present, self.correct.to(torch.float64) / count, nan),
                "nonfinite": self.nonfinite.clone()}


class _CallCounter:
    """Wraps a method of one DataModule instance to count how often the model calls it."""

    def __init__(self, method: Callable[..., Tensor]) -> None:
        self.method = method
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.method(*args, **kwargs)


class _View:
    """One way of predicting from the model's logits, with its own metrics and curve."""

    def __init__(self, name: str, transform: Callable[[Any, Tensor], Tensor]) -> None:
        self.name = name
        self.transform = transform
        self.recall: Optional[TailRecall] = None
        self.stats: Optional[GroupStats] = None
        self.curve: list[dict[str, Any]] = []


class Recorder(Callback):
    """Per-group validation measurements at every validation, training samples, and the loss-hook check.

    Args:
        settings: the comparison's settings (split, tail target, preferred metric).
        model_name: the model's import path, for messages.
        on_step: called with the optimizer step after every training batch (the progress bar).
        feed_policy: hand the per-group validation losses to the DataModule's loss tracking, for a mixing policy
            that decides from them (``AdaptiveMixing(..., on="validation")``).
        twins: other ways of predicting from the same training, by name: ``transform(datamodule, logits)`` gives
            the logits to predict with. A run whose training is the same as another's up to prediction (post-hoc
            logit adjustment trains exactly like natural sampling) is measured from that run, at no extra training.
        check_logits: on the first training batch, require the loss to come from
            :func:`~lightning_balance.balanced_cross_entropy` (the logit-adjusted loss needs the logits).
    """

    def __init__(
        self,
        settings: CompareSettings,
        model_name: str,
        on_step: Optional[Callable[[int], None]] = None,
        feed_policy: bool = False,
        twins: Optional[Mapping[str, Callable[[Any, Tensor], Tensor]]] = None,
        check_logits: bool = False,
    ) -> None:
        self.settings = settings
        self.model_name = model_name
        self.on_step = on_step
        self.feed_policy = feed_policy
        self.check_logits = check_logits
        self.views = [_View("", lambda datamodule, logits: datamodule.prediction_logits(logits))]
        self.views += [_View(name, transform) for name, transform in (twins or {}).items()]
        self.samples_seen = 0
        #: Passes over every group's training data when training ended (``None`` if unknown).
        self.epochs_per_group: Optional[list[float]] = None
        #: Step of the validation that found a non-finite training or validation loss (the run then stops).
        self.diverged_at: Optional[int] = None
        #: Whether training stopped on Ctrl-C (Lightning turns it into ``SystemExit``).
        self.interrupted = False
        self._checked = False
        self._counters: dict[str, _CallCounter] = {}
        self._label_groups = True
        self._num_groups = 0
        self._val_groups: Optional[Tensor] = None
        self._val_batches: Optional[list[list[int]]] = None
        self._masks: dict[str, Tensor] = {}
        self._train_nonfinite: Optional[Tensor] = None  # on the device: no synchronisation per step

    @property
    def curve(self) -> list[dict[str, Any]]:
        """One point per validation, measured with the DataModule's own prediction."""
        return self.views[0].curve

    def twin_curve(self, name: str) -> list[dict[str, Any]]:
        """The curve of the twin ``name``."""
        return next(view.curve for view in self.views if view.name == name)

    # ------------------------------------------------------------------ set-up and training
    @override
    def setup(self, trainer: pl.Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if not self._masks:
            counts = datamodule.group_counts
            s = self.settings
            self._num_groups = len(counts)
            self._label_groups = datamodule.label_groups is not False
            self._masks = _split_masks(counts.double(), s.many, s.few, s.split)
            if not self._label_groups:
                self._val_groups = validation_groups(datamodule)
            for view in self.views:
                if self._label_groups:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # an empty split is reported by the runner instead
                        view.recall = TailRecall(counts, many=s.many, few=s.few, split=s.split,  # type: ignore[arg-type]
                                                 validate_args=False)
                view.stats = GroupStats(len(counts))
        if stage == "fit" and not self._counters:
            # An instance attribute shadows the method, so `balanced_loss` and `balanced_cross_entropy` reach it.
            for method in ("reduce_loss", "cross_entropy"):
                self._counters[method] = _CallCounter(getattr(datamodule, method))
                setattr(datamodule, method, self._counters[method])

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._checked:
            self._checked = True
            strategy = trainer.datamodule.strategy  # type: ignore[attr-defined]
            self._check_loss_hook(strategy if not self.check_logits else LOGIT_STRATEGIES[0])
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            bad = ~torch.isfinite(loss.detach()).all()
            self._train_nonfinite = bad if self._train_nonfinite is None else self._train_nonfinite | bad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.samples_seen += extract_batch_size(batch) * trainer.world_size
        if self.on_step is not None and trainer.is_global_zero:
            self.on_step(trainer.global_step)  # optimizer steps, not batches: right with gradient accumulation too

    def _check_loss_hook(self, strategy: str) -> None:
        reduce_calls = self._counters["reduce_loss"].calls if "reduce_loss" in self._counters else 1
        logit_calls = self._counters["cross_entropy"].calls if "cross_entropy" in self._counters else 1
        if strategy in LOGIT_STRATEGIES and logit_calls == 0:
            raise ConfigurationError(
                f"`--model` {self.model_name}: `training_step` did not compute its loss with"
                f" `lightning_balance.balanced_cross_entropy(self, logits, target)`, so strategy={strategy!r}, which"
                " shifts the logits inside the loss, would silently train like 'natural'. Return"
                " `balanced_cross_entropy(self, logits, target)`, or leave the strategy out of --strategies."
            )
        if reduce_calls == 0:
            raise ConfigurationError(
                f"`--model` {self.model_name}: `training_step` did not reduce its loss with"
                " `lightning_balance.balanced_loss`, so strategy='upweight' would silently train without its"
                " weights. Compute the per-sample loss (reduction='none') and return"
                " `balanced_loss(self, per_sample_loss)`."
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: LightningModule) -> None:
        epochs = trainer.datamodule.epochs_per_group()  # type: ignore[attr-defined]
        self.epochs_per_group = None if epochs is None else [round(float(e), 4) for e in epochs]

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: LightningModule) -> None:
        for view in self.views:
            for metric in (view.recall, view.stats):
                if metric is not None:
                    metric.to(pl_module.device)
                    metric.reset()
        if not self._label_groups:
            # The validation loader does not shuffle: its batch sampler says which examples every batch holds (on
            # this rank, under a distributed sampler too).
            loader = trainer.val_dataloaders
            loader = loader[0] if isinstance(loader, Sequence) else loader
            batch_sampler = getattr(loader, "batch_sampler", None)
            if batch_sampler is None:
                raise ConfigurationError(
                    f"`--datamodule` {type(trainer.datamodule).__name__}: the groups are not the labels, so the"  # type: ignore[attr-defined]
                    " comparison reads the group of every validation example from `val_dataset.groups` by position,"
                    " which needs a map-style validation set with a batch size. Give `val_dataset` as a map-style"
                    " dataset."
                )
            self._val_batches = [list(indices) for indices in batch_sampler]

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        raw, target = logits_and_target(pl_module, outputs, batch, self.model_name)
        target = target.long().to(pl_module.device)
        where = f"`--datamodule` {type(datamodule).__name__}"
        if self._label_groups:
            check_validation_labels(target, self._num_groups, where)
            groups = target
        else:
            assert self._val_groups is not None and self._val_batches is not None
            indices = self._val_batches[batch_idx]
            if len(indices) != len(target):
                raise ConfigurationError(
                    f"{where}: validation batch {batch_idx} has {len(target)} examples but its loader drew"
                    f" {len(indices)}; the groups of its examples cannot be read from `val_dataset.groups`. Keep the"
                    " validation DataLoader's batches as the DataModule builds them."
                )
            groups = self._val_groups[torch.as_tensor(indices, dtype=torch.long)].to(pl_module.device)
        for i, view in enumerate(self.views):
            losses = self._update(view, view.transform(datamodule, raw.detach()), target, groups)
            if i == 0 and self.feed_policy:
                # AdaptiveMixing reads per-group validation losses from the DataModule's loss tracking.
                datamodule.reduce_loss(losses.detach(), groups)

    def _update(self, view: _View, logits: Tensor, target: Tensor, groups: Tensor) -> Tensor:
        assert view.stats is not None
        if logits.is_floating_point() and logits.ndim == 2:
            losses = F.cross_entropy(logits.float(), target, reduction="none")
        else:
            losses = torch.full(target.shape, math.nan, device=target.device)
        correct = None
        if view.recall is not None:
            view.recall.update(logits, target)
        else:
            predicted = logits.argmax(dim=1) if logits.is_floating_point() else logits
            finite = torch.isfinite(logits).all(dim=1) if logits.is_floating_point() else torch.ones_like(target)
            correct = (predicted == target) & finite.bool()
        view.stats.update(losses, groups, correct)
        return losses

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Every rank computes: the metrics sum their states over processes here.
        computed = [(view, view.stats.compute(), view.recall.compute() if view.recall is not None else None)  # type: ignore[union-attr]
                    for view in self.views]
        nonfinite = int(computed[0][1]["nonfinite"])
        train_bad = bool(self._train_nonfinite) if self._train_nonfinite is not None else False
        # Every rank takes the same decision, so that all of them stop at this validation.
        train_bad = bool(trainer.strategy.reduce_boolean_decision(train_bad, all=False))
        if (train_bad or nonfinite > 0) and self.diverged_at is None:
            self.diverged_at = int(trainer.global_step)
        if self.diverged_at is not None:
            trainer.should_stop = True  # a diverged run measures nothing more
        for view, stats, values in computed:
            point = self._point(trainer, stats, values, int(stats["nonfinite"]), train_bad)
            prefix = "compare/" + (f"{view.name}/" if view.name else "")
            # The same values on every rank: logged without a reduction.
            pl_module.log_dict({prefix + k: float(point[k]) for k in _LOGGED if math.isfinite(point[k])})
            if not trainer.is_global_zero:
                continue
            if view.curve and view.curve[-1]["step"] == point["step"]:
                view.curve[-1] = point
            else:
                view.curve.append(point)

    def _point(self, trainer: pl.Trainer, stats: dict[str, Tensor], values: Optional[dict[str, Tensor]],
               nonfinite: int, train_bad: bool) -> dict[str, Any]:
        point: dict[str, Any] = {"step": int(trainer.global_step), "val_nonfinite": nonfinite,
                                 "train_nonfinite": train_bad}
        per_group_loss = stats["loss"].cpu()
        if values is not None:
            for name in (*SPLITS, "macro", "worst"):
                point[f"recall_{name}"] = float(values[name])
                point[f"f1_{name}"] = float(values[f"f1_{name}"])
            per_group_recall = values["per_class"].double().cpu()
        else:
            per_group_recall = stats["accuracy"].cpu()
            present = ~torch.isnan(per_group_recall)
            for name in SPLITS:
                point[f"recall_{name}"] = _nanmean(per_group_recall[self._masks[name]])
            point["recall_macro"] = _nanmean(per_group_recall)
            point["recall_worst"] = float(per_group_recall[present].min()) if bool(present.any()) else math.nan
            for name in (*SPLITS, "macro", "worst"):
                point[f"f1_{name}"] = math.nan  # F1 is per class; these groups are not the classes
        for name in SPLITS:
            point[f"loss_{name}"] = _nanmean(per_group_loss[self._masks[name]])
        point["loss_all"] = _nanmean(per_group_loss)
        point["per_group_recall"] = [float(v) for v in per_group_recall]
        point["per_group_loss"] = [float(v) for v in per_group_loss]
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        mixture, position = datamodule.mixture(), datamodule.trained_samples()
        if mixture is not None and position is not None:
            point["probs"] = [round(float(p), 6) for p in mixture.probs_at_position(position)]
        weights = getattr(datamodule, "policy_loss_weights", None)
        if weights is not None:
            point["loss_weights"] = [round(float(w), 6) for w in weights]
        return point

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True


#: Measurements logged to the Trainer's loggers at every validation.
_LOGGED = ("recall_head", "recall_medium", "recall_tail", "recall_worst", "f1_tail", "loss_head", "loss_tail")


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


def logits_and_target(
    pl_module: LightningModule, outputs: Any, batch: Any, model_name: str = "model"
) -> tuple[Tensor, Tensor]:
    """The logits ``[B, C]`` and labels ``[B]`` of a validation batch: from ``validation_step``'s outputs, else the
    batch (the logits as ``pl_module(inputs)``); a batch that cannot be read raises :class:`ConfigurationError`.
    """
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
