r"""
BalancedDataModule
^^^^^^^^^^^^^^^^^^

A ``LightningDataModule`` to subclass: it swaps natural sampling, upsampling (temperature sampling) and
upweighting (scalarization) in by configuration alone, keeps the sampler's place in checkpoints, and tells
the loss which weights are in force.

The contract with a subclass is small: assign ``self.train_dataset`` (and optionally ``self.val_dataset`` /
``self.test_dataset``) in ``setup``, and make the group id of every training example findable, either as a
``groups`` or ``targets`` attribute of the dataset, the second tensor of a ``TensorDataset``, or by
overriding :meth:`BalancedDataModule.train_groups`.

The LightningModule computes a per-sample loss and reduces it with :func:`balanced_loss`; that call is a
plain mean under ``natural`` and ``upsample`` and applies the current scalarization weights under
``upweight``, so the module never changes between strategies.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_balance.batches import (
    IndexedBatch,
    Reordered,
    _check_label_order,
    _groups_of_kept,
    _IndexedCollate,
    _IndexedDataset,
    _labels_of,
)
from lightning_balance.mixture import Mixture, Order
from lightning_balance.sampler import GroupIndex, GroupsLike, MixtureSampler, TemperatureSampler, _check_resume
from lightning_balance.schedules import constant_runs, is_schedule, resolve_temperature
from lightning_balance.sources import _GroupSampler, _SourcesDataset, _StreamDataset
from lightning_balance.temperature import _validate_temperature, scalarization_weights, unimax_probs
from lightning_balance.weighting import Normalization, weighted_mean

__all__ = ["BalancedDataModule", "IndexedBatch", "Reordered", "balanced_cross_entropy", "balanced_loss"]

Strategy = Literal[
    "natural", "upsample", "upweight", "unimax", "class_balanced", "drw", "logit_adjust", "logit_adjust_posthoc"
]
_STRATEGIES = (
    "natural", "upsample", "upweight", "unimax", "class_balanced", "drw", "logit_adjust", "logit_adjust_posthoc"
)
# Strategies whose weights or logit shifts come from per-class counts: the groups must be the labels.
_CLASS_STRATEGIES = ("class_balanced", "drw", "logit_adjust", "logit_adjust_posthoc")


class _ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning recognises as resumable mid-epoch.

    Its state is the sampler's position, computed by the DataModule from the Trainer's progress; restoring
    it is idempotent with the DataModule's own ``load_state_dict``, so either path resumes the stream.
    """

    def __init__(self, *args: Any, datamodule: BalancedDataModule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule

    def __iter__(self) -> Any:
        # Every epoch starts where training stopped in the run's sample stream, whatever the Trainer's epoch
        # counter says, with the schedule anchored on the Trainer's optimizer step.
        self.datamodule._start_epoch_stream()
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict().get("sampler", {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.datamodule._load_sampler_state(state_dict)


class BalancedDataModule(LightningDataModule):
    r"""A DataModule that balances groups by upsampling, upweighting or a schedule of them.

    Args:
        strategy: ``"natural"`` samples every example equally often (temperature 1, no weights);
            ``"upsample"`` draws groups with :math:`p_i \propto n_i^{1/T}`; ``"upweight"`` samples naturally
            and scales each sample's loss by :math:`p_i(T)/p_i(1)`; ``"unimax"`` spreads the run's samples uniformly
            over groups, capping each at ``max_group_epochs`` passes over its data (Chung et al., 2023). The loss-side
            baselines sample naturally: ``"class_balanced"`` weights the loss by Cui et al.'s class-balanced weights
            (``beta``); ``"drw"`` switches those weights on for the last ``1 - drw_start`` of training (deferred
            re-weighting); ``"logit_adjust"`` trains on Menon et al.'s logit-adjusted loss and
            ``"logit_adjust_posthoc"`` trains plainly and adjusts the logits at prediction (``tau``), both through
            :func:`balanced_cross_entropy` and :meth:`prediction_logits`. These need the groups to be the labels.
        temperature: ``T`` (a float; ``float("inf")`` is uniform over groups) or a schedule
            ``schedule(progress) -> T`` such as :class:`~lightning_balance.Cooldown`, evaluated at every optimizer
            step with progress = step / the run's optimizer steps. Cooldown as in the paper is
            ``strategy="upsample", temperature=Cooldown(5.0, 1.0, 0.5)``.
        batch_size: per-process batch size.
        seed: seed of the sample stream (the same on every rank).
        num_workers: DataLoader worker processes.
        normalize: how :func:`balanced_loss` normalises the weighted sum under ``upweight``: ``"batch"``
            (divide by the batch size: unbiased, the paper's form) or ``"weights"`` (divide by the sum of the
            weights of the global batch, over all processes).
        samples_per_epoch: global samples per epoch, over all processes; defaults to the training set's size.
            It is rounded down to a whole number of global batches, so every step is a full batch on every rank.
        total_steps: optimizer steps over the whole run, for schedules. By default it is derived from the
            Trainer's ``max_steps`` or ``max_epochs``; a schedule with neither raises an error that says so.
        val_batch_size: batch size of the validation and test loaders; defaults to ``batch_size``.
        pin_memory: passed to the DataLoaders.
        persistent_workers: passed to the DataLoaders (only with ``num_workers > 0``).
        order: the sample order of the stream (see :class:`~lightning_balance.Mixture`). ``"epoch"``, the default
            of ``natural`` and ``upweight``, is a fresh permutation of the training set every epoch, as
            ``shuffle=True``; ``"stratified"``, the default of ``upsample``, keeps every prefix of the stream within
            a few draws of each group's quota; ``"iid"`` draws every sample's group independently, the setting of
            the paper's analysis.
        max_group_epochs: UniMax's cap, in passes over a group's data (only with ``strategy="unimax"``).
        beta: the class-balanced loss's :math:`\beta` (``"class_balanced"`` and ``"drw"``).
        tau: the logit adjustment's :math:`\tau` (``"logit_adjust"`` and ``"logit_adjust_posthoc"``).
        drw_start: the fraction of training after which ``"drw"`` turns the class-balanced weights on.

    The training data is either ``self.train_dataset`` with a group id per example (see :meth:`train_groups`), or
    ``self.train_sources``, a mapping from group name to one map-style dataset per group (a torch ``Dataset``, a
    Hugging Face ``datasets.Dataset``, a LitData ``StreamingDataset``): then nothing is kept per example.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> class ToyData(BalancedDataModule):
        ...     def setup(self, stage=None):
        ...         y = torch.tensor([0] * 90 + [1] * 10)
        ...         self.train_dataset = TensorDataset(torch.randn(100, 3), y)
        >>> dm = ToyData(strategy="upweight", temperature=float("inf"), batch_size=10)
        >>> dm.setup("fit")
        >>> dm.group_counts.tolist()
        [90, 10]
        >>> dm.loss_weights()
        tensor([0.5556, 5.0000], dtype=torch.float64)
        >>> batch = next(iter(dm.train_dataloader()))  # an IndexedBatch; the Trainer sees only batch.batch
        >>> batch.batch[0].shape, batch.indices.shape, batch.groups.shape
        (torch.Size([10, 3]), torch.Size([10]), torch.Size([10]))
    """

    def __init__(
        self,
        strategy: Strategy = "natural",
        temperature: Union[float, Callable[[float], float]] = 1.0,
        batch_size: int = 32,
        *,
        seed: int = 0,
        num_workers: int = 0,
        normalize: Normalization = "batch",
        samples_per_epoch: Optional[int] = None,
        total_steps: Optional[int] = None,
        val_batch_size: Optional[int] = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        order: Optional[Order] = None,
        max_group_epochs: float = 1.0,
        beta: float = 0.9999,
        tau: float = 1.0,
        drw_start: float = 0.8,
    ) -> None:
        super().__init__()
        if strategy not in _STRATEGIES:
            raise ValueError(
                f"Expected argument `strategy` to be one of {_STRATEGIES}, but got {strategy!r}."
                " Use 'upsample' with a schedule for Cooldown."
            )
        if isinstance(temperature, type):
            raise TypeError(
                f"Expected argument `temperature` to be a number or a schedule instance, but got the class"
                f" {temperature.__name__}. Instantiate it, e.g. `temperature={temperature.__name__}()`."
            )
        if is_schedule(temperature):
            # Probe both ends now so that a broken schedule fails at configuration, not hours into training.
            resolve_temperature(temperature, 0.0)
            resolve_temperature(temperature, 1.0)
        else:
            temperature = _validate_temperature(temperature)  # type: ignore[arg-type]
            if strategy == "natural" and temperature != 1.0:
                rank_zero_warn(
                    f"`strategy='natural'` ignores `temperature={temperature}`: natural sampling is temperature 1."
                    " Use strategy='upsample' or 'upweight' to balance the groups."
                )
        if normalize not in ("batch", "weights"):
            raise ValueError(f"Expected argument `normalize` to be 'batch' or 'weights', but got {normalize!r}.")
        if batch_size is None:
            raise ValueError(
                "Expected argument `batch_size` to be a positive integer (the per-process batch size), but got None."
            )
        batch_size = _optional_int(batch_size, "batch_size", minimum=1)  # type: ignore[assignment]
        samples_per_epoch = _optional_int(samples_per_epoch, "samples_per_epoch", minimum=1)
        total_steps = _optional_int(total_steps, "total_steps", minimum=1)
        val_batch_size = _optional_int(val_batch_size, "val_batch_size", minimum=1)
        seed = _optional_int(seed, "seed", minimum=0)  # type: ignore[assignment]
        num_workers = _optional_int(num_workers, "num_workers", minimum=0)  # type: ignore[assignment]
        if order is not None and order not in ("stratified", "iid", "epoch"):
            raise ValueError(
                f"Expected argument `order` to be 'stratified', 'iid', 'epoch' or None, but got {order!r}."
            )
        if order == "epoch" and strategy == "upsample":
            raise ValueError(
                "`order='epoch'` is natural sampling and cannot upsample. Use order='stratified' (the default of"
                " strategy='upsample'), or strategy='upweight' to keep natural sampling."
            )
        self.strategy: Strategy = strategy
        self.temperature = temperature
        self.batch_size = batch_size
        self.seed = int(seed)
        self.num_workers = num_workers
        self.normalize: Normalization = normalize
        self.samples_per_epoch = samples_per_epoch
        self.total_steps = total_steps
        self.val_batch_size = val_batch_size or batch_size
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        if strategy == "unimax" and order == "epoch":
            raise ValueError("`order='epoch'` is natural sampling and cannot apply UniMax; use 'stratified' or 'iid'.")
        if isinstance(max_group_epochs, bool) or not isinstance(max_group_epochs, (int, float, np.integer,
                                                                                     np.floating)) or not (
            math.isfinite(float(max_group_epochs)) and max_group_epochs > 0
        ):
            raise ValueError(
                f"Expected argument `max_group_epochs` to be a positive number of passes, but got {max_group_epochs!r}."
            )
        self.max_group_epochs = float(max_group_epochs)
        from lightning_balance.losses import _check_beta, _check_tau
        from lightning_balance.schedules import _fraction

        self.beta = _check_beta(beta)
        self.tau = _check_tau(tau)
        self.drw_start = _fraction(
            drw_start, "drw_start", "the fraction of training in [0, 1] after which to re-weight"
        )
        self.order: Order = order or ("stratified" if strategy in ("upsample", "unimax") else "epoch")

        # Whether the groups are the class labels, so that `group_counts` are class counts too (as tail metrics
        # need). The default `train_groups` sets it; an override that returns labels may set it to True.
        self.label_groups: Optional[bool] = None
        self.train_dataset: Optional[Dataset] = None
        self.train_sources: Optional[Mapping[str, Any]] = None
        # Sizes of the `train_sources` streams that have no length (the mixture needs every group's size).
        self.train_source_sizes: Optional[Mapping[str, int]] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.collate_fn: Optional[Callable[[list[Any]], Any]] = None

        self.sampler: Optional[MixtureSampler] = None
        self._groups_key: Optional[tuple[Any, ...]] = None  # what the group index below was built from
        self._group_index: Optional[GroupIndex] = None
        self._group_ids: Optional[torch.Tensor] = None
        self._groups_digest: Optional[str] = None
        self._sources_dataset: Optional[_SourcesDataset] = None
        self._streams: Optional[Any] = None  # StreamSources, when every source can only be iterated
        self._total_steps: Optional[int] = None  # optimizer steps over the run, for schedules
        self._num_samples: Optional[int] = None  # global samples per epoch
        self._temperature_runs: Optional[tuple[np.ndarray, list[float]]] = None
        # (stream position, Trainer's processed batches) at the restored checkpoint, and the Trainer that restored it:
        # a later fit with another Trainer starts a new stream.
        self._resume_base = (0, 0)
        self._resume_trainer: Optional[weakref.ref] = None
        self._pending_sampler_state: Optional[dict[str, Any]] = None
        self._batch_groups: Optional[torch.Tensor] = None
        self._eval_groups: Optional[torch.Tensor] = None
        self._weights_cache: dict[tuple[float, str], torch.Tensor] = {}
        # Per-group loss sums and counts for training-time policies (see `AdaptiveMixing`); off unless asked for.
        self._track_losses = False
        self._loss_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Loss weights a policy multiplies into every strategy's reduction (None: none).
        self.policy_loss_weights: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ groups
    def train_groups(self) -> GroupsLike:
        """Integer group id of every training example, in dataset order.

        Override it when the groups are not the dataset's ``groups`` or ``targets`` attribute or the second
        tensor of a ``TensorDataset`` (for example, a language id kept in a separate array).
        """
        dataset = self._require_train_dataset()
        if (found := getattr(dataset, "groups", None)) is not None:
            self.label_groups = False
            return found
        if (found := getattr(dataset, "targets", None)) is not None:
            self.label_groups = True
            return found
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
            self.label_groups = True
            return dataset.tensors[1]
        raise AttributeError(
            f"Cannot find the group ids of {type(dataset).__name__}: give it a `groups` (or `targets`) attribute"
            f" with one integer id per example, or override `{type(self).__name__}.train_groups()`, or assign"
            " `train_sources` (one dataset per group) instead of `train_dataset`."
        )

    @property
    def group_names(self) -> list[str]:
        """A name per group: the keys of ``train_sources``, else the group ids as strings."""
        self._refresh_groups()
        if self._sources_dataset is not None:
            return list(self._sources_dataset.names)
        return [str(g) for g in range(self.num_groups)]

    @property
    def group_index(self) -> GroupIndex:
        """Training indices grouped by group id, rebuilt whenever the training data changes."""
        self._refresh_groups()
        if self._group_index is None:
            # Only per-example group ids need an index; sources are contiguous by construction.
            assert self._sources_dataset is not None
            sizes = torch.from_numpy(self._sources_dataset.sizes)
            self._group_index = GroupIndex(torch.repeat_interleave(torch.arange(len(sizes)), sizes))
        return self._group_index

    @property
    def group_counts(self) -> torch.Tensor:
        """Training examples per group id (int64)."""
        self._refresh_groups()
        if self._sources_dataset is not None:
            return torch.from_numpy(self._sources_dataset.sizes.copy())
        assert self._group_index is not None
        return self._group_index.counts

    @property
    def num_groups(self) -> int:
        return len(self.group_counts)

    @property
    def train_group_ids(self) -> torch.Tensor:
        """Group id of every training index (int64, on the CPU). With ``train_sources`` it is built on demand."""
        self._refresh_groups()
        if self._group_ids is None:
            counts = self.group_counts
            self._group_ids = torch.repeat_interleave(torch.arange(len(counts)), counts)
        return self._group_ids

    def _refresh_groups(self) -> None:
        """(Re)build the group index when the training data is new: a second `setup()` may rebuild or reshuffle it."""
        sources = self.train_sources
        if sources is not None:
            key: tuple[Any, ...] = ("sources", id(sources), tuple(id(v) for v in sources.values()))
            if key != self._groups_key:
                from lightning_balance.sources import StreamSources, is_stream

                streams = [is_stream(source) for source in sources.values()]
                if any(streams) and not all(streams):
                    names = [name for name, stream in zip(sources, streams, strict=True) if stream]
                    raise ValueError(
                        f"`train_sources` mixes streams ({names}) with datasets read by index. Give every group as a"
                        " map-style dataset, or every group as a stream."
                    )
                if all(streams):
                    self._streams = StreamSources(sources, self.train_source_sizes)
                    dataset = _SourcesDataset.of_sizes(self._streams.names, self._streams.sizes)
                else:
                    self._streams = None
                    dataset = _SourcesDataset(sources)
                if len(dataset) == 0:
                    raise ValueError("Every dataset in `train_sources` is empty; give at least one example.")
                self._sources_dataset = dataset
                self._group_index, self._group_ids = None, None
                self._groups_digest = hashlib.sha1(dataset.sizes.tobytes()).hexdigest()[:16]
                self.label_groups = False
                self._groups_key = key
            return
        train_set = self._require_train_dataset()
        groups = self.train_groups()
        ids = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups)
        # The same object may have been reshuffled in place, so the ids themselves are compared too.
        key = ("dataset", id(train_set), len(ids))
        if key == self._groups_key and self._group_ids is not None and torch.equal(ids.long().cpu(), self._group_ids):
            return
        index = GroupIndex(groups)
        if len(index) != len(train_set):  # type: ignore[arg-type]
            raise ValueError(
                f"`train_groups()` returned {len(index)} group ids but the training set has"
                f" {len(train_set)} examples; give exactly one group id per example."  # type: ignore[arg-type]
            )
        changed = self._groups_key is not None
        self._sources_dataset = None
        self._group_index = index
        # A copy: a setup() that reshuffles the dataset's tensors in place must not change the ids compared against.
        self._group_ids = ids.long().cpu().clone()
        self._groups_digest = hashlib.sha1(self._group_ids.numpy().tobytes()).hexdigest()[:16]
        self._groups_key = key
        self._weights_cache.clear()
        if changed and self.sampler is not None:
            rank_zero_info("The training data changed since the sampler was built; its groups were re-read.")

    # ------------------------------------------------------------------ temperature and weights
    def current_step(self) -> int:
        """The optimizer step being trained (the Trainer's ``global_step``; 0 outside a Trainer)."""
        trainer = self._trainer_or_none()
        return int(trainer.global_step) if trainer is not None else 0

    def current_progress(self) -> float:
        """Fraction of training done: optimizer steps done over the run's optimizer steps (0 before training)."""
        if self._total_steps is None:
            return 0.0
        return min(self.current_step() / self._total_steps, 1.0)

    def temperature_at(self, step: int) -> float:
        """The temperature of optimizer step ``step`` (1 under ``natural``)."""
        if self.strategy == "natural":
            return 1.0
        if not is_schedule(self.temperature):
            return float(self.temperature)  # type: ignore[arg-type]
        if self._temperature_runs is None:
            return resolve_temperature(self.temperature, 0.0)
        starts, temps = self._temperature_runs
        return temps[int(np.searchsorted(starts, step, side="right")) - 1]

    def current_temperature(self) -> float:
        """The temperature in force now: the one the sampler draws this step's samples at, and the weights use."""
        return self.temperature_at(self.current_step())

    def loss_weights(self, device: Optional[torch.device] = None) -> torch.Tensor:
        """Per-group loss weights now: scalarization weights under ``upweight``, ones otherwise.

        A copy is kept per temperature and device, so a training step copies nothing to the accelerator.
        """
        t = self.current_temperature() if self.strategy == "upweight" else 1.0
        reweight = self.strategy == "class_balanced" or (
            self.strategy == "drw" and self.current_progress() >= self.drw_start
        )
        key = (t if not reweight else -1.0, str(device) if device is not None else "cpu")
        weights = self._weights_cache.get(key)
        if weights is None:
            if reweight:
                from lightning_balance.losses import class_balanced_weights

                weights = class_balanced_weights(self.group_counts, self.beta)
            elif self.strategy == "upweight":
                weights = scalarization_weights(self.group_counts, t)
            else:
                weights = torch.ones(self.num_groups, dtype=torch.float64)
            weights = weights.to(device) if device is not None else weights
            self._weights_cache[key] = weights
        return weights

    def reduce_loss(self, per_sample_loss: torch.Tensor, groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reduce a per-sample training loss with the weights in force.

        Args:
            per_sample_loss: ``[B]`` losses of the current batch (``reduction="none"``).
            groups: group id of each sample; defaults to the groups of the training batch being processed,
                which the DataModule records when the batch reaches the device.
        """
        if not isinstance(per_sample_loss, torch.Tensor) or per_sample_loss.ndim != 1:
            shape = tuple(per_sample_loss.shape) if isinstance(per_sample_loss, torch.Tensor) else per_sample_loss
            raise RuntimeError(
                f"Expected a per-sample loss of shape [B], but got {shape}. Compute the loss with"
                " `reduction='none'`; for a sequence loss of shape [B, T], average over the tokens of each sample"
                " first (e.g. `loss.mean(dim=1)`)."
            )
        if groups is not None:
            groups = self._validate_groups(groups, per_sample_loss)
        training = self._batch_groups is not None and self._is_training()
        if self._track_losses:
            seen = groups if groups is not None else (self._batch_groups if training else self._eval_groups)
            if seen is not None and len(seen) == len(per_sample_loss):
                self._record_losses("train" if training else "val", per_sample_loss, seen)
        if not training and groups is None:
            # Outside a training step (validation, a manual call) there are no weights to apply.
            return per_sample_loss.mean()
        if self.strategy not in ("upweight", "class_balanced", "drw") and self.policy_loss_weights is None:
            return per_sample_loss.mean()
        if groups is None:
            groups = self._batch_groups
            assert groups is not None
        if len(groups) != len(per_sample_loss):
            raise RuntimeError(
                f"The training batch has {len(groups)} samples but the loss has {len(per_sample_loss)} values."
                " Return one loss per sample of the batch, in the batch's order."
            )
        device = per_sample_loss.device
        table = self.loss_weights(device)
        if self.policy_loss_weights is not None:
            table = table * self.policy_loss_weights.to(device=device, dtype=table.dtype)
        weights = table[groups.to(device, non_blocking=True)]
        if self.normalize == "weights":
            world = self._world()[0]
            # Divide by the weight sum of the global batch: DDP averages the ranks' gradients, so each rank's loss
            # is scaled by the world size over the global sum, which makes the result equal to one process's.
            local = weights.sum().to(per_sample_loss.dtype)
            total = _all_reduce_sum(local.detach().clone()) if world > 1 else local.detach()
            scale = world / total.clamp_min(torch.finfo(per_sample_loss.dtype).tiny)
            return (per_sample_loss * weights.to(per_sample_loss.dtype)).sum() * scale
        return weighted_mean(per_sample_loss, weights, self.normalize)

    def prediction_logits(self, logits: torch.Tensor) -> torch.Tensor:
        r"""The logits to predict with: adjusted by :math:`-\tau \log \pi` under ``logit_adjust_posthoc``."""
        if self.strategy != "logit_adjust_posthoc":
            return logits
        from lightning_balance.losses import class_priors, posthoc_logit_adjustment

        return posthoc_logit_adjustment(logits, class_priors(self.group_counts), self.tau)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy under the strategy (logit-adjusted under ``logit_adjust``), reduced."""
        if self.strategy == "logit_adjust" and self._is_training():
            from lightning_balance.losses import class_priors, logit_adjusted_cross_entropy

            losses = logit_adjusted_cross_entropy(logits, target, class_priors(self.group_counts), self.tau)
        else:
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        return self.reduce_loss(losses)

    def _is_training(self) -> bool:
        trainer = self._trainer_or_none()
        return trainer is None or bool(trainer.training)

    def _record_losses(self, split: str, per_sample_loss: torch.Tensor, groups: torch.Tensor) -> None:
        # Sums and counts stay on the device (no sync per step); a policy reduces them across ranks when it reads them.
        device = per_sample_loss.device
        sums, counts = self._loss_sums.get(split, (None, None))
        if sums is None or sums.device != device:
            sums = torch.zeros(self.num_groups, dtype=torch.float64, device=device)
            counts = torch.zeros(self.num_groups, dtype=torch.float64, device=device)
        index = groups.to(device, non_blocking=True).long()
        sums = sums.index_add(0, index, per_sample_loss.detach().to(torch.float64))
        counts = counts.index_add(0, index, torch.ones_like(index, dtype=torch.float64))  # type: ignore[union-attr]
        self._loss_sums[split] = (sums, counts)

    def track_group_losses(self, enabled: bool = True) -> None:
        """Keep per-group sums of the losses :func:`balanced_loss` reduces (training, and validation when the
        groups are known: the labels, or ``groups=`` passed to :func:`balanced_loss`).
        """
        self._track_losses = bool(enabled)

    def pop_group_losses(self, split: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The per-group loss sums and counts of ``split`` (``"train"`` or ``"val"``) since the last call."""
        return self._loss_sums.pop(split, None)

    def apply_mixture_probs(self, position: int, probs: torch.Tensor) -> None:
        """Sample with group probabilities ``probs`` from global sample ``position`` on.

        The samples before ``position`` are unchanged, so ``position`` must lie ahead of everything the sampler
        has handed out (the DataLoader's prefetched batches included).
        """
        sampler = self.sampler
        if sampler is None:
            raise RuntimeError("The training DataLoader has not been built yet: there is no stream to change.")
        if sampler.position > position:
            raise RuntimeError(
                f"Cannot change the mixture at sample {position}: the sampler has already handed out samples up to"
                f" {sampler.position}. Change it further ahead (more than the DataLoader prefetches)."
            )
        sampler.mixture = sampler.mixture.with_probs(position, probs.detach().cpu().double().tolist())

    def _validate_groups(self, groups: torch.Tensor, per_sample_loss: torch.Tensor) -> torch.Tensor:
        groups = torch.as_tensor(groups)
        if groups.is_floating_point() or groups.dtype == torch.bool:
            raise TypeError(
                f"Expected argument `groups` to hold integer group ids, but got dtype {groups.dtype}."
                " Pass the group id of every sample as a LongTensor."
            )
        if groups.shape != per_sample_loss.shape:
            raise RuntimeError(
                f"Expected one group id per sample: the loss has shape {tuple(per_sample_loss.shape)} but `groups`"
                f" has shape {tuple(groups.shape)}."
            )
        if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= self.num_groups):
            raise ValueError(
                f"Expected argument `groups` to hold ids in [0, {self.num_groups}), but got values from"
                f" {int(groups.min())} to {int(groups.max())}."
            )
        return groups.long()

    # ------------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        self._refresh_groups()
        dataset: Dataset = self._sources_dataset if self._sources_dataset is not None else self._require_train_dataset()
        world, rank = self._world()
        global_batch = self.batch_size * world
        requested = self.samples_per_epoch or len(dataset)  # type: ignore[arg-type]
        num_samples = requested - requested % global_batch
        if num_samples == 0:
            raise ValueError(
                f"An epoch of {requested} samples is smaller than one global batch ({self.batch_size} x {world}"
                " processes). Lower `batch_size` or raise `samples_per_epoch`."
            )
        self._num_samples = num_samples
        self._total_steps = None
        self._temperature_runs = None
        if self.strategy != "natural" and is_schedule(self.temperature):
            self._total_steps = self._resolve_total_steps(num_samples // global_batch)
            self._temperature_runs = constant_runs(self.temperature, self._total_steps)
        elif self.strategy in ("unimax", "drw"):
            # UniMax spreads the run's budget and DRW switches late: both need the run's length, as a schedule does.
            self._total_steps = self._resolve_total_steps(num_samples // global_batch)
        if self.strategy in _CLASS_STRATEGIES and not self.label_groups:
            raise ValueError(
                f"`strategy={self.strategy!r}` weights or shifts the loss per class, so the groups must be the class"
                " labels, but this DataModule's groups are not (a `groups` attribute, `train_sources` or an overridden"
                " `train_groups()`). Use 'upsample', 'upweight' or 'unimax' for groups that are not labels, or set"
                " `self.label_groups = True` in `train_groups()` if they are the labels."
            )
        mixture = self._build_mixture()
        if self._streams is not None:
            return self._stream_dataloader(mixture, num_samples, world, rank)
        if self._sources_dataset is not None:
            self.sampler = MixtureSampler(mixture, num_samples=num_samples, num_replicas=world, rank=rank)
            sources = self._sources_dataset
            lookup: Callable[[torch.Tensor], torch.Tensor] = sources.groups_of
        else:
            self.sampler = _IndexSampler(self.group_index, mixture, num_samples=num_samples, world=world, rank=rank)
            ids = self.train_group_ids

            def lookup(indices: torch.Tensor) -> torch.Tensor:
                return ids[indices]

        if self._pending_sampler_state is not None:
            self._load_sampler_state(self._pending_sampler_state)
            self._pending_sampler_state = None
        return _ResumableDataLoader(
            _IndexedDataset(dataset),
            datamodule=self,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=_IndexedCollate(self.collate_fn, lookup, check_labels=bool(self.label_groups)),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=True,
        )

    def _stream_dataloader(self, mixture: Mixture, num_samples: int, world: int, rank: int) -> DataLoader:
        if self.num_workers:
            raise ValueError(
                f"Streams in `train_sources` are read in the main process, in the order the mixture draws them, but"
                f" got num_workers={self.num_workers}. Use num_workers=0 (the streams may load in background threads"
                " of their own), or give map-style datasets."
            )
        self.sampler = _GroupSampler(mixture, num_samples=num_samples, num_replicas=world, rank=rank)
        if self._pending_sampler_state is not None:
            self._load_sampler_state(self._pending_sampler_state)
            self._pending_sampler_state = None
        assert self._sources_dataset is not None
        return _ResumableDataLoader(
            _StreamDataset(self),
            datamodule=self,
            batch_size=self.batch_size,
            collate_fn=_IndexedCollate(self.collate_fn, self._sources_dataset.groups_of, check_labels=False),
            pin_memory=self.pin_memory,
            drop_last=True,
        )

    def _stream_counts_before(self, start: int) -> list[int]:
        """Samples of every group this rank took before global position ``start`` (same world size)."""
        assert self.sampler is not None
        world, rank = self._world()
        counts = np.zeros(self.num_groups, dtype=np.int64)
        chunk = (1 << 20) * world
        phase = (start + rank) % world
        for lo in range(0, start, chunk):
            hi = min(lo + chunk, start)
            groups = self.sampler.mixture.groups(lo, hi).numpy()
            counts += np.bincount(groups[(phase - lo) % world :: world], minlength=self.num_groups)
        return counts.tolist()

    def _build_mixture(self) -> Mixture:
        sizes = self.group_counts
        trainer = self._trainer_or_none()
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        step_size = self.batch_size * self._world()[0] * accumulate
        upsample = self.strategy == "upsample"
        probs = None
        if self.strategy == "unimax":
            assert self._total_steps is not None
            probs = unimax_probs(
                sizes, budget=self._total_steps * step_size, max_epochs=self.max_group_epochs
            ).tolist()
        return Mixture(
            sizes,
            self.temperature if upsample else 1.0,
            seed=self.seed,
            step_size=step_size,
            total_steps=self._total_steps if upsample else None,
            order=self.order,
            probs=probs,
            epoch_length=self._num_samples if self.order == "epoch" else None,
        )

    def mixture(self) -> Optional[Mixture]:
        """The sample stream the training DataLoader draws from (``None`` before ``train_dataloader()``)."""
        return self.sampler.mixture if self.sampler is not None else None

    def _start_epoch_stream(self) -> None:
        """Position the sampler at the samples trained so far, its schedule anchored on the optimizer step."""
        sampler = self.sampler
        trainer = self._trainer_or_none()
        if sampler is None or trainer is None:
            return
        position = self.trained_samples()
        assert position is not None
        accumulate = trainer.accumulate_grad_batches
        step_size = self.batch_size * self._world()[0] * accumulate
        # A resume onto another global batch, or an accumulation window that Lightning closed at an epoch end,
        # leaves the stream at a position whose step differs from the Trainer's: re-anchor the schedule there.
        sampler.mixture = sampler.mixture.rebased(position, self.current_step(), step_size)
        sampler.set_position(position)

    def val_dataloader(self) -> Union[DataLoader, list]:
        return self._eval_dataloader(self.val_dataset)

    def test_dataloader(self) -> Union[DataLoader, list]:
        return self._eval_dataloader(self.test_dataset)

    def _eval_dataloader(self, dataset: Optional[Dataset]) -> Union[DataLoader, list]:
        if dataset is None:
            return []
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    # ------------------------------------------------------------------ hooks
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, IndexedBatch):
            # The indices and group ids stay on the CPU, where they are looked up; only the batch moves.
            return IndexedBatch(batch.indices, super().transfer_batch_to_device(batch.batch, device, dataloader_idx),
                                batch.groups)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Unwrap training batches; let callbacks with ``transform_train_batch`` select inside them.

        A callback may define ``transform_train_batch(trainer, pl_module, batch, indices) -> (batch, indices)``
        (batch already on the device, ``indices`` the dataset index of each sample); :class:`~lightning_balance.SALN`
        uses it to keep part of every batch. A LightningModule's own ``on_after_batch_transfer`` runs afterwards
        (Lightning warns that the DataModule's hook takes precedence; both run); when the groups are the labels,
        a module hook that reorders the batch is detected and refused. A module's ``on_before_batch_transfer``
        sees training batches as :class:`IndexedBatch`.
        """
        trainer = self._trainer_or_none()
        training = isinstance(batch, IndexedBatch)
        if training:
            indices, groups, batch = batch.indices, batch.groups, batch.batch
            kept = indices
            if trainer is not None and trainer.training:
                for callback in trainer.callbacks:
                    transform = getattr(callback, "transform_train_batch", None)
                    if callable(transform):
                        batch, kept = transform(trainer, trainer.lightning_module, batch, kept)
            if groups is None:
                groups = self.train_group_ids[indices.cpu()]
            if kept is indices:
                self._batch_groups = groups
            else:
                # A selection made on the device stays there: moving it to the host would sync every step.
                device = kept.device
                self._batch_groups = _groups_of_kept(
                    kept, indices.to(device, non_blocking=True), groups.to(device, non_blocking=True)
                )
        else:
            # Evaluation batches carry no indices: no group weights apply to them. Their labels are their groups
            # when the groups are the labels, which is what per-group validation signals need.
            self._batch_groups = None
            self._eval_groups = _labels_of(batch) if self.label_groups else None
        # Lightning calls only the DataModule's hook when both define it; keep the module's hook working.
        module = trainer.lightning_module if trainer is not None else None
        if module is not None and is_overridden("on_after_batch_transfer", module, LightningModule):
            batch = module.on_after_batch_transfer(batch, dataloader_idx)
            if training and self.label_groups and self._batch_groups is not None:
                _check_label_order(batch, self._batch_groups, f"`{type(module).__name__}.on_after_batch_transfer`")
        return batch

    def trained_samples(self) -> Optional[int]:
        """Global samples the training steps so far have drawn from the sampler, from the Trainer's progress.

        The count comes from the batches whose training step has run, not from the DataLoader, which runs ahead
        when it prefetches. ``None`` outside a Trainer.
        """
        trainer = self._trainer_or_none()
        if trainer is None:
            return None
        world, _ = self._world()
        processed = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        # Batches since the restored checkpoint count at today's global batch, earlier ones at the saved position,
        # so resuming on another number of processes continues the same stream.
        resumed = self._resume_trainer is not None and self._resume_trainer() is trainer
        position, processed_at_resume = self._resume_base if resumed else (0, 0)
        return position + (processed - processed_at_resume) * self.batch_size * world

    def epochs_per_group(self) -> Optional[torch.Tensor]:
        """How many times each group's training data has been gone through so far (``None`` before training)."""
        position = self.trained_samples()
        mixture = self.mixture()
        if position is None or mixture is None:
            return None
        return mixture.epochs(position)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's place in the run's stream, from the Trainer's progress, and what defines the stream."""
        if self.sampler is None:
            return {}
        state = self.sampler.state_dict()
        position = self.trained_samples()
        if position is not None:
            # The sampler's own count runs ahead of training when DataLoader workers prefetch; the Trainer's
            # progress counts the batches whose training step has run.
            state["position"] = position
            state["processed"] = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed  # type: ignore
            state["step"] = self.current_step()
        state["strategy"] = self.strategy
        state["temperature"] = repr(self.temperature)
        state["groups_digest"] = self._groups_digest
        if self.policy_loss_weights is not None:
            state["policy_loss_weights"] = self.policy_loss_weights.detach().cpu().double().tolist()
        return {"sampler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved sample stream: the next training epoch starts where the checkpoint stopped."""
        sampler_state = state_dict.get("sampler")
        if not sampler_state:
            return
        changes = []
        for key, mine in (("strategy", self.strategy), ("temperature", repr(self.temperature))):
            saved = sampler_state.get(key, mine)
            if saved != mine:
                changes.append(f"{key} {saved} -> {mine}")
        if self._groups_digest is None and (self.train_dataset is not None or self.train_sources is not None):
            # Lightning restores the DataModule before it asks for the training DataLoader: read the groups now.
            self._refresh_groups()
        saved_digest = sampler_state.get("groups_digest")
        if saved_digest is not None and self._groups_digest is not None and saved_digest != self._groups_digest:
            changes.append("the training examples' group ids (same dataset size, other labels or order)")
        if changes:
            rank_zero_warn(
                "Resuming a run whose configuration changed: " + "; ".join(changes) + ". The position in the sample"
                " stream is kept, but what follows differs from the original run."
            )
        weights = sampler_state.get("policy_loss_weights")
        self.policy_loss_weights = torch.tensor(weights, dtype=torch.float64) if weights is not None else None
        self._resume_base = (int(sampler_state.get("position", 0)), int(sampler_state.get("processed", 0)))
        self._resume_trainer = weakref.ref(self.trainer) if self._trainer_or_none() is not None else None
        if self.sampler is not None:
            self._load_sampler_state(sampler_state)
        else:
            self._pending_sampler_state = sampler_state

    def _load_sampler_state(self, state: dict[str, Any]) -> None:
        assert self.sampler is not None
        saved = state.get("mixture")
        if saved is not None:
            # Keep the stretches of the saved stream, so that positions before the resume mean what they meant.
            history = [list(p) for p in saved.get("history", [])]
            adaptations = [(int(p), list(v)) for p, v in saved.get("adaptations", [])]
            if history or adaptations or saved.get("step_size") != self.sampler.mixture.step_size:
                first = [0, 0, int(saved.get("step_size", self.sampler.mixture.step_size))]
                mixture = self.sampler.mixture
                self.sampler.mixture = Mixture(
                    mixture.sizes, mixture.temperature, seed=mixture.seed, step_size=first[2],
                    total_steps=mixture.total_steps, order=mixture.order, history=history,
                    probs=None if mixture.fixed_probs is None else mixture.fixed_probs.tolist(),
                    adaptations=adaptations,
                    epoch_length=mixture.epoch_length if mixture.order == "epoch" else None,
                )
        self.sampler.set_position(_check_resume(state, self.sampler.mixture))

    # ------------------------------------------------------------------ helpers
    def _trainer_or_none(self) -> Optional[Any]:
        return getattr(self, "trainer", None)

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        return 1, 0

    def _require_train_dataset(self) -> Dataset:
        if self.train_dataset is None:
            raise RuntimeError(
                f"`{type(self).__name__}.train_dataset` is not set. Assign it (or `train_sources`) in `setup()`, and"
                " call `setup('fit')` first when using the DataModule outside a Trainer."
            )
        return self.train_dataset

    def _resolve_total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps in the whole run, from ``total_steps`` or the Trainer's limits."""
        if self.total_steps is not None:
            return self.total_steps
        fix = (
            "A temperature schedule needs the length of training: set `Trainer(max_steps=...)` or"
            " `Trainer(max_epochs=...)`, or pass `total_steps=` to the DataModule."
        )
        trainer = self._trainer_or_none()
        if trainer is None:
            raise ValueError(fix)
        accumulate = trainer.accumulate_grad_batches
        batches = batches_per_epoch
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = int(batches * float(limit))
        batches = max(batches, 1)
        # Lightning closes an accumulation window at the end of every epoch.
        steps_per_epoch = math.ceil(batches / accumulate)
        max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        if max_epochs is None and max_steps is None:
            raise ValueError(fix + f" Got max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs}.")
        if max_steps is None and max_epochs == 1000:
            rank_zero_warn(
                "The temperature schedule spans 1000 epochs, Lightning's default when neither `max_epochs` nor"
                " `max_steps` is set. Set one of them (or `total_steps=` on the DataModule) so the schedule runs"
                " over the training you intend."
            )
        candidates = []
        if max_epochs is not None:
            candidates.append(max_epochs * steps_per_epoch)
        if max_steps is not None:
            candidates.append(max_steps)
        total = min(candidates)
        rank_zero_info(f"Temperature schedule runs over {total} optimizer steps ({steps_per_epoch} per epoch).")
        return total


class _IndexSampler(TemperatureSampler):
    """A :class:`TemperatureSampler` over a DataModule's group index, with the mixture it was given."""

    def __init__(self, index: GroupIndex, mixture: Mixture, *, num_samples: int, world: int, rank: int) -> None:
        self.index = index
        self.temperature = mixture.temperature
        MixtureSampler.__init__(self, mixture, num_samples=num_samples, num_replicas=world, rank=rank)


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _optional_int(value: Any, name: str, *, minimum: int) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"Expected argument `{name}` to be {kind}, but got {value!r}.")
    return int(value)


def balanced_cross_entropy(module: LightningModule, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a batch under the DataModule's strategy, for the baselines that need the logits.

    It is :func:`balanced_loss` of the per-sample cross-entropy, except under ``strategy="logit_adjust"``, where
    the training loss is Menon et al.'s logit-adjusted cross-entropy. Without a :class:`BalancedDataModule` it is
    the plain mean cross-entropy.

    Example:
        >>> class Classifier(LightningModule):  # doctest: +SKIP
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return balanced_cross_entropy(self, self(x), y)
    """
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    if isinstance(datamodule, BalancedDataModule):
        return datamodule.cross_entropy(logits, target)
    return torch.nn.functional.cross_entropy(logits, target)


def balanced_loss(
    module: LightningModule, per_sample_loss: torch.Tensor, groups: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The training loss of a batch under the DataModule's strategy.

    Call it in ``training_step`` on a per-sample loss. With a :class:`BalancedDataModule` in ``upweight``
    mode it applies the current scalarization weights; otherwise it is the plain mean, so the same module
    trains under every strategy.

    Example:
        >>> import torch.nn.functional as F
        >>> class Classifier(LightningModule):  # doctest: +SKIP
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         losses = F.cross_entropy(self(x), y, reduction="none")
        ...         return balanced_loss(self, losses)
    """
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    if isinstance(datamodule, BalancedDataModule):
        return datamodule.reduce_loss(per_sample_loss, groups)
    if per_sample_loss.ndim != 1:
        raise RuntimeError(
            f"Expected a per-sample loss of shape [B], but got shape {tuple(per_sample_loss.shape)}."
            " Compute the loss with `reduction='none'`."
        )
    return per_sample_loss.mean()
