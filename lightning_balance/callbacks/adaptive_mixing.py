r"""
Adaptive mixing
^^^^^^^^^^^^^^^

Let a policy (:mod:`lightning_balance.policies`) change the group sampling probabilities and loss weights during
training, exactly under DDP and across resumes.

Every ``every_n_steps`` optimizer steps (or after every validation, with ``on="validation"``) the callback
reduces the per-group loss sums and counts across processes, hands the same numbers to the policy on every rank,
and applies its decision:

* new **sampling probabilities** take effect at a global sample position a fixed number of batches ahead of
  training (more than the DataLoader prefetches), through :meth:`~lightning_balance.Mixture.with_probs`: every
  earlier sample is unchanged, each group keeps walking its passes, and the list of changes is part of the
  DataModule's checkpoint, so a resume replays the same stream;
* new **loss weights** multiply the DataModule's weights from the next batch on.

The probabilities, loss weights, validation losses and epochs of every group go to the Trainer's loggers as
``mixing/p_<group>``, ``mixing/w_<group>``, ``mixing/val_loss_<group>`` and ``mixing/epochs_<group>``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_balance.policies import GroupSignals, MixingDecision, MixingPolicy

__all__ = ["AdaptiveMixing"]


class AdaptiveMixing(Callback):
    r"""Apply a mixing policy during training, through a :class:`~lightning_balance.BalancedDataModule`.

    Args:
        policy: a :class:`~lightning_balance.policies.MixingPolicy`, e.g. ``GroupDRO()``, ``OnlineMixing()`` or
            ``OverfitGuard()``.
        every_n_steps: update period in optimizer steps (with ``on="train"``).
        on: ``"train"`` updates from training losses every ``every_n_steps``; ``"validation"`` after every
            validation run, with the validation losses per group as well.
        lookahead_batches: how many global batches ahead of training a probability change takes effect. It must
            exceed what the DataLoader prefetches; by default ``num_workers * prefetch_factor + 2``.

    Example:
        >>> from lightning_balance import AdaptiveMixing
        >>> from lightning_balance.policies import OnlineMixing
        >>> callback = AdaptiveMixing(OnlineMixing(), every_n_steps=50)
    """

    def __init__(
        self,
        policy: MixingPolicy,
        every_n_steps: int = 100,
        on: Literal["train", "validation"] = "train",
        lookahead_batches: Optional[int] = None,
    ) -> None:
        if not callable(policy) or not hasattr(policy, "state_dict"):
            raise TypeError(
                f"Expected argument `policy` to be a mixing policy (callable, with state_dict/load_state_dict), but"
                f" got {policy!r}. See lightning_balance.policies."
            )
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps <= 0:
            raise ValueError(f"Expected argument `every_n_steps` to be a positive integer, but got {every_n_steps!r}.")
        if on not in ("train", "validation"):
            raise ValueError(f"Expected argument `on` to be 'train' or 'validation', but got {on!r}.")
        if lookahead_batches is not None and (not isinstance(lookahead_batches, int) or lookahead_batches < 1):
            raise ValueError(
                f"Expected argument `lookahead_batches` to be a positive integer, but got {lookahead_batches!r}."
            )
        self.policy = policy
        self.every_n_steps = every_n_steps
        self.on = on
        self.lookahead_batches = lookahead_batches
        self.history: list[dict[str, Any]] = []
        self._val_loss: Optional[torch.Tensor] = None
        self._last_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(policy=type(self.policy).__name__, on=self.on, every=self.every_n_steps)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning_balance.datamodule import BalancedDataModule

        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, BalancedDataModule):
            raise RuntimeError(
                "`AdaptiveMixing` changes the mixture of a BalancedDataModule; pass one: `trainer.fit(model,"
                " datamodule=dm)`."
            )
        if datamodule.order == "epoch" and _changes_probs(self.policy):
            raise ValueError(
                f"`{type(self.policy).__name__}` changes sampling probabilities, but the DataModule samples with"
                " order='epoch' (a permutation per epoch). Build it with order='stratified' or 'iid'."
            )
        datamodule.track_group_losses(True)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on == "validation" and not _has_validation(trainer):
            raise ValueError(
                "`AdaptiveMixing(on='validation')` needs a validation loop, but the Trainer runs none. Give the"
                " DataModule a `val_dataset` (and keep `limit_val_batches` > 0), or use on='train'."
            )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.on != "train" or step == self._last_step or step == 0 or step % self.every_n_steps:
            return
        self._last_step = step
        self._update(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        datamodule: Any = getattr(trainer, "datamodule", None)
        popped = datamodule.pop_group_losses("val")
        if popped is not None:
            sums, counts = (_reduce_sum(trainer, t) for t in popped)
            self._val_loss = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        if self.on == "validation" and trainer.state.fn == "fit":
            self._update(trainer, pl_module)

    # ------------------------------------------------------------------ the update
    def _update(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule: Any = getattr(trainer, "datamodule", None)
        mixture = datamodule.mixture()
        position = datamodule.trained_samples()
        if mixture is None or position is None:
            return
        popped = datamodule.pop_group_losses("train")
        k = mixture.num_groups
        if popped is None:
            sums = counts = torch.zeros(k, dtype=torch.float64)
        else:
            sums, counts = (_reduce_sum(trainer, t) for t in popped)
        train_loss = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        sizes = torch.from_numpy(mixture.sizes).double()
        weights = datamodule.policy_loss_weights
        signals = GroupSignals(
            step=trainer.global_step,
            train_loss=train_loss,
            train_count=counts,
            val_loss=None if self._val_loss is None else self._val_loss.clone(),
            draws=mixture.counts(position).double(),
            epochs=mixture.epochs(position),
            probs=mixture.probs_at_position(position).double(),
            natural=sizes / sizes.sum(),
            loss_weights=torch.ones(k, dtype=torch.float64) if weights is None else weights.double().cpu(),
        )
        decision = self.policy(signals)
        if not isinstance(decision, MixingDecision):
            raise TypeError(
                f"`{type(self.policy).__name__}` returned {decision!r}; a policy returns a"
                " lightning_balance.policies.MixingDecision."
            )
        record: dict[str, Any] = {"step": trainer.global_step}
        if decision.probs is not None:
            probs = _check_vector(decision.probs, k, "probabilities", self.policy, allow_zero_sum=False)
            probs = probs / probs.sum()
            lookahead = self._lookahead(trainer)
            at = position + lookahead * datamodule.batch_size * trainer.world_size
            datamodule.apply_mixture_probs(at, probs)
            record.update(position=at, probs=probs.tolist())
        if decision.loss_weights is not None:
            weights = _check_vector(decision.loss_weights, k, "loss weights", self.policy, allow_zero_sum=True)
            datamodule.policy_loss_weights = weights
            record["loss_weights"] = weights.tolist()
        self.history.append(record)
        self._log(pl_module, datamodule, signals)

    def _lookahead(self, trainer: pl.Trainer) -> int:
        if self.lookahead_batches is not None:
            return self.lookahead_batches
        loader = trainer.train_dataloader
        workers = getattr(loader, "num_workers", 0) or 0
        prefetch = getattr(loader, "prefetch_factor", None) or 2
        return workers * prefetch + 2

    def _log(self, pl_module: pl.LightningModule, datamodule: Any, signals: GroupSignals) -> None:
        names = datamodule.group_names
        mixture = datamodule.mixture()
        position = datamodule.trained_samples()
        probs = mixture.probs_at_position(position)
        weights = datamodule.policy_loss_weights
        values: dict[str, float] = {}
        for g, name in enumerate(names):
            values[f"mixing/p_{name}"] = float(probs[g])
            values[f"mixing/epochs_{name}"] = float(signals.epochs[g])
            if weights is not None:
                values[f"mixing/w_{name}"] = float(weights[g])
            if signals.val_loss is not None and not torch.isnan(signals.val_loss[g]):
                values[f"mixing/val_loss_{name}"] = float(signals.val_loss[g])
        # Straight to the loggers, as LearningRateMonitor does: on the steps asked for, whatever
        # `Trainer(log_every_n_steps)` is; the values are the same on every rank and loggers write on rank 0 only.
        trainer = pl_module.trainer
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": type(self.policy).__name__,
            "policy_state": self.policy.state_dict(),
            "history": list(self.history),
            "val_loss": None if self._val_loss is None else self._val_loss.tolist(),
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("policy")
        if saved is not None and saved != type(self.policy).__name__:
            rank_zero_warn(
                f"Resuming `AdaptiveMixing` from a checkpoint of policy {saved!r} with policy"
                f" {type(self.policy).__name__!r}: the new policy starts from scratch."
            )
            return
        self.policy.load_state_dict(state_dict.get("policy_state", {}))
        self.history = list(state_dict.get("history", []))
        val = state_dict.get("val_loss")
        self._val_loss = None if val is None else torch.tensor(val, dtype=torch.float64)
        self._last_step = int(state_dict.get("last_step", -1))


def _changes_probs(policy: Any) -> bool:
    from lightning_balance.policies import GroupDRO

    return not isinstance(policy, GroupDRO)


def _has_validation(trainer: pl.Trainer) -> bool:
    limit = trainer.limit_val_batches
    if limit == 0:
        return False
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "val_dataset", None) is not None


def _reduce_sum(trainer: pl.Trainer, value: torch.Tensor) -> torch.Tensor:
    """Sum over processes, so that every rank decides from the same numbers; returned float64 on the CPU."""
    if trainer.world_size > 1:
        value = trainer.strategy.reduce(value.clone(), reduce_op="sum")
    return value.detach().double().cpu()


def _check_vector(value: Any, k: int, what: str, policy: Any, *, allow_zero_sum: bool) -> torch.Tensor:
    vector = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    name = type(policy).__name__
    if vector.shape != (k,):
        raise ValueError(
            f"`{name}` returned {what} of shape {tuple(vector.shape)}, but the DataModule has {k} groups. A policy"
            " returns one value per group of the DataModule."
        )
    if not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()) or (
        not allow_zero_sum and float(vector.sum()) <= 0
    ):
        raise ValueError(
            f"`{name}` returned {what} {vector.tolist()}: they must be finite, non-negative"
            + (" and not all zero." if not allow_zero_sum else ".")
        )
    return vector
