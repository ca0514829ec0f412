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

import math
import weakref
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Optional, Union

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lightning_balance.sampler import GroupIndex, GroupsLike, TemperatureSampler
from lightning_balance.schedules import is_schedule, resolve_temperature
from lightning_balance.temperature import _validate_temperature, scalarization_weights
from lightning_balance.weighting import Normalization, weighted_mean

__all__ = ["BalancedDataModule", "IndexedBatch", "balanced_loss"]

Strategy = Literal["natural", "upsample", "upweight"]
_STRATEGIES = ("natural", "upsample", "upweight")


class IndexedBatch(NamedTuple):
    """A training batch with the dataset index and the group id of each of its samples.

    The training DataLoader of a :class:`BalancedDataModule` yields these; the DataModule unwraps them after
    the batch reaches the device, so ``training_step`` receives ``batch`` alone.
    """

    indices: torch.Tensor
    batch: Any
    groups: Optional[torch.Tensor] = None


class _IndexedDataset(Dataset):
    """Returns ``(index, sample)`` so batches carry the dataset indices they were drawn from."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IndexedCollate:
    """Collate the samples with the user's ``collate_fn``; the indices and their group ids into LongTensors.

    The group ids are looked up here, on the CPU, so that no per-example table has to live on the device.
    """

    def __init__(self, collate_fn: Optional[Callable[[list[Any]], Any]], group_ids: torch.Tensor) -> None:
        self.collate_fn = collate_fn or default_collate
        self.group_ids = group_ids

    def __call__(self, items: list[tuple[int, Any]]) -> IndexedBatch:
        indices = torch.tensor([index for index, _ in items], dtype=torch.long)
        return IndexedBatch(indices, self.collate_fn([sample for _, sample in items]), self.group_ids[indices])


def _groups_of_kept(kept: torch.Tensor, indices: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Group ids of ``kept``, a selection of ``indices`` whose group ids are ``groups`` (all on one device)."""
    if kept is indices:
        return groups
    order = torch.argsort(indices)
    return groups[order[torch.searchsorted(indices[order], kept)]]


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
        # counter says (see `TemperatureSampler.set_position`).
        position = self.datamodule.trained_samples()
        if position is not None and isinstance(self.sampler, TemperatureSampler):
            self.sampler.set_position(position)
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict().get("sampler", {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict and isinstance(self.sampler, TemperatureSampler):
            self.sampler.load_state_dict(state_dict)


class BalancedDataModule(LightningDataModule):
    r"""A DataModule that balances groups by upsampling, upweighting or a schedule of them.

    Args:
        strategy: ``"natural"`` samples every example equally often (temperature 1, no weights);
            ``"upsample"`` draws groups with :math:`p_i \propto n_i^{1/T}`; ``"upweight"`` samples naturally
            and scales each sample's loss by :math:`p_i(T)/p_i(1)`.
        temperature: ``T`` (a float; ``float("inf")`` is uniform over groups) or a schedule
            ``schedule(progress) -> T`` such as :class:`~lightning_balance.Cooldown`. Cooldown as in the paper is
            ``strategy="upsample", temperature=Cooldown(5.0, 1.0, 0.5)``.
        batch_size: per-process batch size.
        seed: seed of the sampling plan (the same on every rank).
        num_workers: DataLoader worker processes.
        normalize: how :func:`balanced_loss` normalises the weighted sum under ``upweight``: ``"batch"``
            (divide by the batch size: unbiased, the paper's form) or ``"weights"`` (divide by the sum of weights).
        samples_per_epoch: global samples per epoch, over all processes; defaults to the training set's size.
            It is rounded down to a whole number of global batches, so every step is a full batch on every rank.
        total_steps: optimizer steps over the whole run, for schedules. By default it is derived from the
            Trainer's ``max_steps`` or ``max_epochs``; a schedule with neither raises an error that says so.
        val_batch_size: batch size of the validation and test loaders; defaults to ``batch_size``.
        pin_memory: passed to the DataLoaders.
        persistent_workers: passed to the DataLoaders (only with ``num_workers > 0``).

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
    ) -> None:
        super().__init__()
        if strategy not in _STRATEGIES:
            raise ValueError(
                f"Expected argument `strategy` to be one of {_STRATEGIES}, but got {strategy!r}."
                " Use 'upsample' with a schedule for Cooldown."
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
        for name, value in (("batch_size", batch_size), ("samples_per_epoch", samples_per_epoch),
                            ("total_steps", total_steps), ("val_batch_size", val_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"Expected argument `{name}` to be a positive integer, but got {value!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Expected argument `seed` to be a non-negative integer, but got {seed!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected argument `num_workers` to be a non-negative integer, but got {num_workers!r}.")
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

        # Whether the groups are the class labels, so that `group_counts` are class counts too (as tail metrics
        # need). The default `train_groups` sets it; an override that returns labels may set it to True.
        self.label_groups: Optional[bool] = None
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.collate_fn: Optional[Callable[[list[Any]], Any]] = None

        self.sampler: Optional[TemperatureSampler] = None
        self._group_index: Optional[GroupIndex] = None
        self._group_ids: Optional[torch.Tensor] = None
        self._horizon_samples: Optional[int] = None  # global samples over the whole run, for schedules
        # (stream position, Trainer's processed batches) at the restored checkpoint, and the Trainer that restored it:
        # a later fit with another Trainer starts a new stream.
        self._resume_base = (0, 0)
        self._resume_trainer: Optional[weakref.ref] = None
        self._pending_sampler_state: Optional[dict[str, Any]] = None
        self._batch_groups: Optional[torch.Tensor] = None
        self._weights_cache: dict[float, torch.Tensor] = {}

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
            f" with one integer id per example, or override `{type(self).__name__}.train_groups()`."
        )

    @property
    def group_index(self) -> GroupIndex:
        """Training indices grouped by group id (built once, on first use)."""
        if self._group_index is None:
            groups = self.train_groups()
            index = GroupIndex(groups)
            if len(index) != len(self._require_train_dataset()):  # type: ignore[arg-type]
                raise ValueError(
                    f"`train_groups()` returned {len(index)} group ids but the training set has"
                    f" {len(self.train_dataset)} examples; give exactly one group id per example."  # type: ignore
                )
            self._group_index = index
            self._group_ids = torch.as_tensor(groups).long().cpu()
        return self._group_index

    @property
    def group_counts(self) -> torch.Tensor:
        """Training examples per group id (int64)."""
        return self.group_index.counts

    @property
    def num_groups(self) -> int:
        return self.group_index.num_groups

    @property
    def train_group_ids(self) -> torch.Tensor:
        """Group id of every training index (int64, on the CPU)."""
        self.group_index  # noqa: B018 - builds the index and the ids together
        assert self._group_ids is not None
        return self._group_ids

    # ------------------------------------------------------------------ temperature and weights
    def current_progress(self) -> float:
        """Fraction of training done: samples trained on over the run's total (0 before training).

        The sampler measures progress the same way, so a batch's samples are drawn, and its loss weighted, at
        the same temperature.
        """
        position = self.trained_samples()
        if position is None or self._horizon_samples is None:
            return 0.0
        return min(position / self._horizon_samples, 1.0)

    def current_temperature(self) -> float:
        """The temperature in force now (1 under ``natural``)."""
        if self.strategy == "natural":
            return 1.0
        return resolve_temperature(self.temperature, self.current_progress())

    def loss_weights(self) -> torch.Tensor:
        """Per-group loss weights now: scalarization weights under ``upweight``, ones otherwise."""
        if self.strategy != "upweight":
            return torch.ones(self.num_groups, dtype=torch.float64)
        t = self.current_temperature()
        if t not in self._weights_cache:
            self._weights_cache[t] = scalarization_weights(self.group_counts, t)
        return self._weights_cache[t]

    def reduce_loss(self, per_sample_loss: torch.Tensor, groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reduce a per-sample training loss with the weights in force.

        Args:
            per_sample_loss: ``[B]`` losses of the current batch (``reduction="none"``).
            groups: group id of each sample; defaults to the groups of the training batch being processed,
                which the DataModule records when the batch reaches the device.
        """
        if self.strategy != "upweight":
            return per_sample_loss.mean()
        if groups is None:
            if self._batch_groups is None:
                # Outside a training step (validation, a manual call) there are no weights to apply.
                return per_sample_loss.mean()
            groups = self._batch_groups
        weights = self.loss_weights().to(per_sample_loss.device)[groups.to(per_sample_loss.device).long()]
        return weighted_mean(per_sample_loss, weights, self.normalize)

    # ------------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        dataset = self._require_train_dataset()
        group_index = self.group_index  # validates the group ids before anything else
        world, rank = self._world()
        global_batch = self.batch_size * world
        requested = self.samples_per_epoch or len(dataset)  # type: ignore[arg-type]
        num_samples = requested - requested % global_batch
        if num_samples == 0:
            raise ValueError(
                f"An epoch of {requested} samples is smaller than one global batch ({self.batch_size} x {world}"
                " processes). Lower `batch_size` or raise `samples_per_epoch`."
            )
        sampler_temperature = self.temperature if self.strategy == "upsample" else 1.0
        total_samples = None
        if self.strategy != "natural" and is_schedule(self.temperature):
            self._horizon_samples = total_samples = self._resolve_horizon_batches(num_samples) * global_batch
        self.sampler = TemperatureSampler(
            group_index,
            sampler_temperature,
            num_samples=num_samples,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            total_samples=total_samples,
            # The schedule is read once per batch, so no batch mixes two temperatures.
            step_size=global_batch,
        )
        if self._pending_sampler_state is not None:
            self.sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return _ResumableDataLoader(
            _IndexedDataset(dataset),
            datamodule=self,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=_IndexedCollate(self.collate_fn, self.train_group_ids),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=True,
        )

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
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Unwrap training batches; let callbacks with ``transform_train_batch`` select inside them.

        A callback may define ``transform_train_batch(trainer, pl_module, batch, indices) -> (batch, indices)``
        (batch already on the device, ``indices`` the dataset index of each sample); :class:`~lightning_balance.SALN`
        uses it to keep part of every batch. A LightningModule's own ``on_after_batch_transfer`` runs afterwards
        (Lightning warns that the DataModule's hook takes precedence; both run). A module's
        ``on_before_batch_transfer`` sees training batches as :class:`IndexedBatch`.
        """
        trainer = self.trainer
        if isinstance(batch, IndexedBatch):
            indices, groups, batch = batch.indices, batch.groups, batch.batch
            kept = indices
            if trainer is not None and trainer.training:
                for callback in trainer.callbacks:  # type: ignore[attr-defined]
                    transform = getattr(callback, "transform_train_batch", None)
                    if callable(transform):
                        batch, kept = transform(trainer, trainer.lightning_module, batch, kept)
            if groups is None:
                groups = self.train_group_ids[indices.cpu()].to(indices.device)
            self._batch_groups = _groups_of_kept(kept, indices, groups)
        else:
            # Evaluation batches carry no indices: no group weights apply to them.
            self._batch_groups = None
        # Lightning calls only the DataModule's hook when both define it; keep the module's hook working.
        module = trainer.lightning_module if trainer is not None else None
        if module is not None and is_overridden("on_after_batch_transfer", module, LightningModule):
            batch = module.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    def trained_samples(self) -> Optional[int]:
        """Global samples the training steps so far have drawn from the sampler, from the Trainer's progress.

        The count comes from the batches whose training step has run, not from the DataLoader, which runs ahead
        when it prefetches. ``None`` outside a Trainer.
        """
        trainer = self.trainer
        if trainer is None:
            return None
        world, _ = self._world()
        processed = trainer.fit_loop.epoch_loop.batch_progress.total.processed  # type: ignore[attr-defined]
        # Batches since the restored checkpoint count at today's global batch, earlier ones at the saved position,
        # so resuming on another number of processes continues the same stream.
        resumed = self._resume_trainer is not None and self._resume_trainer() is trainer
        position, processed_at_resume = self._resume_base if resumed else (0, 0)
        return position + (processed - processed_at_resume) * self.batch_size * world

    def state_dict(self) -> dict[str, Any]:
        """The sampler's place in the run's stream, from the Trainer's progress (plain values)."""
        if self.sampler is None:
            return {}
        state = self.sampler.state_dict()
        position = self.trained_samples()
        if position is not None:
            # The sampler's own count runs ahead of training when DataLoader workers prefetch; the Trainer's
            # progress counts the batches whose training step has run.
            state["epoch"], state["consumed"] = divmod(position, self.sampler.num_samples)
            state["position"] = position
            state["processed"] = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed  # type: ignore
        state["strategy"] = self.strategy
        return {"sampler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved sampler stream: the next training epoch skips what was already trained on."""
        sampler_state = state_dict.get("sampler")
        if not sampler_state:
            return
        saved_strategy = sampler_state.get("strategy", self.strategy)
        if saved_strategy != self.strategy:
            rank_zero_warn(
                f"Resuming a run trained with strategy={saved_strategy!r} under strategy={self.strategy!r}:"
                " the sampler's position is kept, but the sample stream differs from the original run."
            )
        self._resume_base = (int(sampler_state.get("position", 0)), int(sampler_state.get("processed", 0)))
        self._resume_trainer = weakref.ref(self.trainer) if self.trainer is not None else None
        if self.sampler is not None:
            self.sampler.load_state_dict(sampler_state)
        else:
            self._pending_sampler_state = sampler_state

    # ------------------------------------------------------------------ helpers
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        return 1, 0

    def _require_train_dataset(self) -> Dataset:
        if self.train_dataset is None:
            raise RuntimeError(
                f"`{type(self).__name__}.train_dataset` is not set. Assign it in `setup()` (and call"
                " `setup('fit')` first when using the DataModule outside a Trainer)."
            )
        return self.train_dataset

    def _resolve_horizon_batches(self, num_samples: int) -> int:
        """Training batches in the whole run, from ``total_steps`` or the Trainer's limits."""
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        if self.total_steps is not None:
            return self.total_steps * accumulate
        fix = (
            "A temperature schedule needs the length of training: set `Trainer(max_steps=...)` or"
            " `Trainer(max_epochs=...)`, or pass `total_steps=` to the DataModule."
        )
        if trainer is None:
            raise ValueError(fix)
        world, _ = self._world()
        batches = num_samples // (self.batch_size * world)
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
            candidates.append(max_epochs * batches)
        if max_steps is not None:
            full_epochs, rest = divmod(max_steps, steps_per_epoch)
            candidates.append(full_epochs * batches + min(rest * accumulate, batches))
        total = min(candidates)
        rank_zero_info(f"Temperature schedule runs over {total} training batches ({batches} per epoch).")
        return total


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
