r"""
SALN
^^^^

Spectral batch selection (Sharifi, "SALN: Spectral-Based Joint Batch Selection", MLKD 2024, arXiv 2412.17069):
every training batch is scored from the Fiedler vector of its cosine-similarity graph
(:func:`~lightning_balance.functional.spectral_scores`) and the step trains only on the best-scored
``keep`` fraction of it. Random selection, a top-k of the learner's loss and RHO-LOSS selection (top-k of learner
loss minus a reference model's loss) are the same callback with another ``method``, so they train on the same
number of samples per step. They are equal in samples kept, not in cost: each method pays for its own scoring
(nothing for ``random``; a no-grad forward pass of the whole batch for ``loss`` and ``rho_loss``, plus one
reference forward per dataset index for ``rho_loss``; for ``spectral`` the forward of its features, if any, and a
``B x B`` eigendecomposition).

Why inside the step rather than planned at the start of the epoch
------------------------------------------------------------------
Selection happens after the batch reaches the device, in the ``transform_train_batch`` hook that
:class:`~lightning_balance.BalancedDataModule` calls from ``on_after_batch_transfer``:

* the learner-dependent scores (``embed``, ``loss``, ``rho_loss``) need the current weights; a plan made at
  the start of the epoch would rank with weights that are stale by its end;
* the cut is a property of the batch actually trained on, and the sampler, its distributed split and its
  resumable position stay untouched: no second sampler has to agree across ranks or be checkpointed.

The price is that the dropped samples are still loaded and moved to the device; that is all an epoch-start plan
could save, since it scores the same batches. Measured on the long-tailed digits (``benchmarks/saln_benchmark.py``,
batch 32, keep 0.5, CPU): selection costs 0.64 ms of a 2.08 ms step and loading the whole batch 0.56 ms, so a
plan would save about 0.28 ms per step (13%). With fixed features (raw inputs, a frozen extractor) in a
loader-bound pipeline the saving grows with the loading cost and such a plan would be worth adding; with
DataLoader workers the loading overlaps the step. ``docs/saln.md`` has the numbers.

Selection keeps exactly :func:`~lightning_balance.selection.keep_count` samples, a function of the kept
fraction and the batch size only, so every rank trains on the same number of samples per step. Under DDP each rank
selects within its own batch (``batch_size`` samples, 1/R of the global batch of R ranks): the similarity graph
never spans ranks and each rank keeps ``ceil(keep * batch_size)`` of its own samples.

The scoring forward passes (the learner's ``per_sample_loss`` and ``embed``, a feature extractor, a feature
function, the reference model) run inside the precision plugin's forward context, so under
``precision="bf16-mixed"`` they run under autocast as the training step does; the eigendecomposition itself always
runs in float32 or float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_deprecation, rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from typing_extensions import override

from lightning_balance.datamodule import BalancedDataModule
from lightning_balance.functional.spectral import (
    _LAPLACIANS,
    _NEGATIVES,
    _SCORES,
    LaplacianKind,
    NegativeSimilarity,
    SpectralScore,
    spectral_scores,
)
from lightning_balance.selection import (
    KeepLike,
    _validate_fraction,
    keep_count,
    reducible_loss_scores,
    resolve_keep,
    select_top_k,
)

__all__ = ["SALN"]

Method = Literal["spectral", "random", "loss", "rho_loss", "learnability"]
FeatureSource = Union[Literal["inputs", "embed"], nn.Module, Callable[[LightningModule, Any], torch.Tensor]]
InputSelector = Union[int, str, Callable[[Any], torch.Tensor]]
BatchSelect = Union[Sequence[Union[int, str]], Callable[[Any, torch.Tensor], Any]]

_METHODS = ("spectral", "random", "loss", "rho_loss", "learnability")
# Old spelling of a method -> its name; the old one still runs, with a deprecation warning.
_DEPRECATED_METHODS = {"learnability": "rho_loss"}


def _describe(value: Any) -> str:
    """A description of a configuration value that is the same in every run (no memory addresses)."""
    if isinstance(value, (int, float, str)) or value is None:
        return repr(value)
    cls = type(value)
    if cls.__repr__ is not object.__repr__ and cls.__module__ != "builtins" and not isinstance(value, nn.Module):
        return repr(value)  # e.g. LinearRamp(start=1.0, end=0.5, ...); functions are "builtins" and show an address
    return getattr(value, "__qualname__", type(value).__qualname__)


def _take(batch: Any, positions: torch.Tensor, batch_size: int) -> Any:
    """Index every tensor of the batch whose leading dimension is the batch size."""

    def take(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim == 0 or tensor.shape[0] != batch_size:
            return tensor
        return tensor[positions.to(tensor.device)]

    return apply_to_collection(batch, torch.Tensor, take)


def _tensors(batch: Any, path: str = "batch") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a (nested) tuple, list or dict batch with where it sits, e.g. ``batch['mask']``."""
    if isinstance(batch, torch.Tensor):
        yield path, batch
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            yield from _tensors(value, f"{path}[{key!r}]")
    elif isinstance(batch, (tuple, list)):
        for i, value in enumerate(batch):
            yield from _tensors(value, f"{path}[{i}]")


def _take_entries(batch: Any, entries: Sequence[Union[int, str]], positions: torch.Tensor, batch_size: int) -> Any:
    """Index the listed entries of a tuple, list or dict batch along their first dimension; keep the rest."""
    if isinstance(batch, Mapping):
        keys = list(batch.keys())
    elif isinstance(batch, (tuple, list)):
        keys = list(range(len(batch)))
    else:
        raise ValueError(
            f"Expected a tuple, list or dict batch for `select={list(entries)!r}` (the positions or keys of its"
            f" per-sample entries), but got a {type(batch).__name__}. Pass `select=` a callable"
            " `select(batch, keep_index) -> batch` instead."
        )
    missing = [entry for entry in entries if entry not in keys]
    if missing:
        raise ValueError(
            f"Expected argument `select` to name entries of the batch, but {missing!r} are not among its"
            f" {'keys' if isinstance(batch, Mapping) else 'positions'} {keys!r}."
        )

    def take(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def rows(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.ndim == 0 or tensor.shape[0] != batch_size:
                raise ValueError(
                    f"`select` lists {path} as per-sample, so its first dimension must be the batch size"
                    f" {batch_size}, but it has shape {tuple(tensor.shape)}. List only entries with one row per"
                    " sample, or pass `select=` a callable `select(batch, keep_index) -> batch`."
                )
            return tensor[positions.to(tensor.device)]

        return rows

    chosen = {key: apply_to_collection(batch[key], torch.Tensor, take(f"batch[{key!r}]")) for key in entries}
    if isinstance(batch, Mapping):
        out = {key: chosen.get(key, value) for key, value in batch.items()}
        try:
            return type(batch)(out)
        except TypeError:
            return out
    items = [chosen.get(i, value) for i, value in enumerate(batch)]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*items)  # a namedtuple
    return type(batch)(items)


class _IndexCache:
    """Values computed once per dataset index: a lazily allocated ``[N, ...]`` buffer and a filled-mask."""

    def __init__(self) -> None:
        self.size = 0
        self.reset()

    def reset(self) -> None:
        self.values: Optional[torch.Tensor] = None
        self.filled: Optional[torch.Tensor] = None
        self.complete = False

    def lookup(self, indices: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Values at ``indices``; ``compute(positions)`` gives them for those positions of the batch."""
        if self.values is not None and self.values.device != indices.device:
            self.values, self.filled = self.values.to(indices.device), self.filled.to(indices.device)  # type: ignore
        if self.complete:
            # Once every index is filled, a lookup is one gather: no host-device synchronisation.
            return self.values[indices]  # type: ignore[index]
        if self.filled is None:
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=indices.device)
        positions = torch.nonzero(~self.filled[indices]).flatten()
        if positions.numel():
            # An index drawn twice in one batch is computed once: keep the first position of every index.
            missing, inverse = torch.unique(indices[positions], return_inverse=True)
            first = torch.full_like(missing, len(positions)).scatter_reduce(
                0, inverse, torch.arange(len(positions), device=positions.device), "amin"
            )
            fresh = compute(positions[first])
            if self.values is None:
                self.values = fresh.new_zeros((self.size, *fresh.shape[1:]))
            self.values[missing] = fresh.to(self.values.dtype)
            self.filled[missing] = True
        self.complete = bool(self.filled.all())
        assert self.values is not None  # filled on the first lookup: every index of a batch is computed
        return self.values[indices]

    def state_dict(self) -> dict[str, Any]:
        if self.values is None:
            return {}
        return {"values": self.values.detach().cpu(), "filled": self.filled.cpu()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values, filled = state.get("values"), state.get("filled")
        if values is None or filled is None:
            return
        self.values, self.filled = values.clone(), filled.clone().bool()
        self.size = len(self.filled)
        self.complete = bool(self.filled.all())


class SALN(Callback):
    r"""Train each step on the best-scored ``keep`` fraction of its batch.

    Needs a :class:`~lightning_balance.BalancedDataModule` (it calls the callback with the batch on the device
    and the dataset index of every sample).

    Args:
        keep: fraction of each batch trained on, in ``(0, 1]``, or a schedule ``keep(progress) -> fraction``
            (``progress`` is the fraction of optimizer steps done; e.g. ``LinearRamp(start=1.0, end=0.5)``).
            While it is 1 nothing is scored. Under DDP it applies to each rank's own batch.
        method: ``"spectral"`` (SALN), ``"random"`` (uniform subset), ``"loss"`` (the ``k`` highest learner
            losses: a deterministic top-k, not Selective Backprop's draw with a probability from the loss's
            percentile) or ``"rho_loss"`` (RHO-LOSS: the ``k`` highest learner loss minus ``reference`` loss).
            ``"learnability"`` is the deprecated name of ``"rho_loss"``. The methods keep the same number of
            samples, not the same cost: ``loss`` and ``rho_loss`` add a no-grad forward pass of the whole batch,
            ``spectral`` an eigendecomposition (and the forward of its features).
        features: where ``"spectral"`` takes the features from:

            * ``"inputs"``: the batch's inputs flattened to ``[B, D]``;
            * ``"embed"``: the learner's own ``embed(batch) -> [B, D]`` method, at its current weights;
            * an ``nn.Module``: a frozen feature extractor applied to the inputs (eval mode, no gradient). Its
              ``[B, D]`` output is computed once per dataset index and cached (and checkpointed);
            * a callable ``feature_fn(pl_module, batch) -> [B, D]``.
        inputs: how to find the inputs in a batch: an index (tuple/list batch), a key (dict batch) or a
            callable ``batch -> Tensor``. A batch that is a tensor is its own input.
        laplacian: see :func:`~lightning_balance.functional.spectral_scores`. The default ``"random_walk"`` was
            chosen by the benchmark; the paper's Laplacian, :math:`L = D - S`, is ``"plain"``.
        negative: see :func:`~lightning_balance.functional.spectral_scores`.
        score: see :func:`~lightning_balance.functional.spectral_scores`; ``"labels"`` uses the DataModule's
            group ids as labels.
        protect_groups_below: samples whose group has fewer training examples than this are always kept
            (still exactly ``keep_count`` per batch: if a batch holds more protected samples than that, the
            best-scored of them are kept).
        reference: for ``"rho_loss"``, a trained model with a ``per_sample_loss(batch) -> [B]`` method. Its
            losses are computed once per dataset index (eval mode) and cached.
        seed: seed of the random choices (the ``"random"`` subset, ties between equal scores).
        select: which entries of a batch hold one row per sample, i.e. what to cut:

            * ``None`` (default): every tensor whose first dimension is the batch size ``B``. This guess is
              refused where it is ambiguous: a tensor other than the inputs that is ``[B, B, ...]`` (a pairwise
              mask, or ``B`` rows of ``B`` values?) or ``[T, B, ...]`` (time-first) raises, and a batch that also
              holds tensors whose first dimension is not ``B`` (a table, a vocabulary) warns once, since such a
              tensor would be cut in a batch whose size happens to equal its length;
            * the positions (tuple or list batch) or keys (dict batch) of the per-sample entries, e.g.
              ``select=(0, 1)`` or ``select=["image", "label"]``: the tensors in those entries are indexed along
              their first dimension, every other entry is passed on unchanged;
            * a callable ``select(batch, keep_index) -> batch`` that returns the kept part, with ``keep_index``
              the sorted int64 positions to keep, on the batch's device, e.g.
              ``lambda b, i: (b[0][i], b[1][i], b[2][i][:, i])`` to cut a ``[B, B]`` mask on both dimensions.

    The LightningModule provides, when the configuration needs them: ``per_sample_loss(batch) -> [B]`` (for
    ``"loss"`` and ``"rho_loss"``; computed under ``no_grad`` in the module's current mode) and
    ``embed(batch) -> [B, D]`` (for ``features="embed"``). These, the frozen extractor, a feature function and
    the reference model run inside the precision plugin's forward context (autocast under ``"bf16-mixed"``).

    Memory: a frozen extractor's features (``[N, D]``) and the reference losses (``[N]``) are cached for every
    one of the ``N`` training samples on the training device, next to ``[N]`` tables of the protected samples
    and of the group ids when ``protect_groups_below`` or ``score="labels"`` is set; the caches are also saved in
    checkpoints.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_balance.datasets import LongTailDigits
        >>> from lightning_balance.models import MLPClassifier
        >>> saln = SALN(keep=0.5, protect_groups_below=20)
        >>> saln.method, saln.score, saln.laplacian, saln.features
        ('spectral', 'boundary', 'random_walk', 'inputs')
        >>> trainer = pl.Trainer(max_epochs=1, callbacks=[saln], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(MLPClassifier(), datamodule=LongTailDigits(batch_size=32))  # doctest: +SKIP
        >>> saln.samples_kept, saln.samples_seen  # doctest: +SKIP
        (144, 288)
    """

    def __init__(
        self,
        keep: KeepLike = 0.5,
        *,
        method: Method = "spectral",
        features: FeatureSource = "inputs",
        inputs: InputSelector = 0,
        laplacian: LaplacianKind = "random_walk",
        negative: NegativeSimilarity = "clamp",
        score: SpectralScore = "boundary",
        protect_groups_below: Optional[int] = None,
        reference: Optional[nn.Module] = None,
        seed: int = 0,
        select: Optional[BatchSelect] = None,
    ) -> None:
        if callable(keep):
            resolve_keep(keep, 0.0)  # a broken schedule fails now, not at the first step
            resolve_keep(keep, 1.0)
        else:
            keep = _validate_fraction(keep)
        if method not in _METHODS:
            raise ValueError(f"Expected argument `method` to be one of {_METHODS}, but got {method!r}.")
        configured_method = method
        if method in _DEPRECATED_METHODS:
            method = _DEPRECATED_METHODS[method]  # type: ignore[assignment]
            rank_zero_deprecation(
                f"`SALN(method={configured_method!r})` is deprecated: a top-k of learner loss minus reference loss"
                f" is RHO-LOSS selection, not JEST's joint sampling. Use `method={method!r}`; the old name selects"
                " exactly the same samples."
            )
        if not (isinstance(features, (str, nn.Module)) or callable(features)) or (
            isinstance(features, str) and features not in ("inputs", "embed")
        ):
            raise ValueError(
                "Expected argument `features` to be 'inputs', 'embed', a frozen feature extractor (nn.Module) or a"
                f" callable `feature_fn(pl_module, batch) -> [B, D]`, but got {features!r}."
            )
        if not (isinstance(inputs, (int, str)) or callable(inputs)) or isinstance(inputs, bool):
            raise ValueError(
                "Expected argument `inputs` to be a batch index, a dict key or a callable `batch -> Tensor`, but got"
                f" {inputs!r}."
            )
        for name, value, allowed in (("laplacian", laplacian, _LAPLACIANS), ("negative", negative, _NEGATIVES),
                                     ("score", score, _SCORES)):
            if value not in allowed:
                raise ValueError(f"Expected argument `{name}` to be one of {allowed}, but got {value!r}.")
        if protect_groups_below is not None and (
            isinstance(protect_groups_below, bool) or not isinstance(protect_groups_below, numbers.Integral)
            or protect_groups_below < 1
        ):
            raise ValueError(
                "Expected argument `protect_groups_below` to be a positive training count (groups with fewer"
                f" examples are always kept) or None, but got {protect_groups_below!r}."
            )
        if select is not None and not callable(select) and (
            isinstance(select, (str, bytes)) or not isinstance(select, Sequence) or not select
            or any(isinstance(e, bool) or not isinstance(e, (numbers.Integral, str)) for e in select)
        ):
            raise ValueError(
                "Expected argument `select` to be None, a callable `select(batch, keep_index) -> batch`, or a"
                " non-empty list of the positions (tuple batches) or keys (dict batches) of the per-sample entries,"
                f" but got {select!r}."
            )
        if method == "rho_loss":
            if reference is None:
                raise ValueError(
                    f"`method={configured_method!r}` scores learner loss minus a reference model's loss, but"
                    " `reference` is None. Pass `reference=` a model trained on held-out or balanced data that defines"
                    " `per_sample_loss(batch) -> [B]`, or use method='loss'."
                )
            if not callable(getattr(reference, "per_sample_loss", None)):
                raise ValueError(
                    f"Expected argument `reference` to define `per_sample_loss(batch) -> [B]`, but"
                    f" {type(reference).__name__} has no such method. Add it (the learner uses the same hook)."
                )
        self.keep = keep
        self.method: Method = method
        self._configured_method = configured_method  # the spelling the state key was built from
        self.select: Optional[BatchSelect] = (
            select if select is None or callable(select) else tuple(int(e) if isinstance(e, numbers.Integral) else e
                                                                    for e in select)
        )
        self.features = features
        self.inputs = inputs
        self.laplacian: LaplacianKind = laplacian
        self.negative: NegativeSimilarity = negative
        self.score: SpectralScore = score
        self.protect_groups_below = None if protect_groups_below is None else int(protect_groups_below)
        self.reference = reference
        self.seed = int(seed)

        self.samples_seen = 0
        self.samples_kept = 0
        self._batches = 0
        self._total_steps: Optional[float] = None
        self._feature_cache = _IndexCache()
        self._reference_cache = _IndexCache()
        self._protected: Optional[torch.Tensor] = None  # [N] bool
        self._group_ids: Optional[torch.Tensor] = None  # [N] int64
        self._generators: dict[torch.device, torch.Generator] = {}
        self._moved: dict[int, torch.device] = {}
        self._dataset_size = 0
        self._warned_mixed_batch = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            keep=_describe(self.keep), method=self._configured_method, features=_describe(self.features),
            score=self.score, laplacian=self.laplacian, negative=self.negative,
            protect_groups_below=self.protect_groups_below,
        )

    @property
    def kept_fraction(self) -> float:
        """Fraction of the samples seen so far that were trained on (1.0 before training)."""
        return self.samples_kept / self.samples_seen if self.samples_seen else 1.0

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, BalancedDataModule):
            raise MisconfigurationException(
                "SALN selects inside each training batch through `BalancedDataModule.on_after_batch_transfer`, but"
                f" the Trainer's datamodule is {type(datamodule).__name__}. Subclass"
                " `lightning_balance.BalancedDataModule` (assign `self.train_dataset` in `setup`) and call"
                " `trainer.fit(model, datamodule=dm)`."
            )
        needs = []
        if self.method in ("loss", "rho_loss"):
            needs.append(("per_sample_loss", "per_sample_loss(batch) -> [B]", f"method={self.method!r}"))
        if self.method == "spectral" and self.features == "embed":
            needs.append(("embed", "embed(batch) -> [B, D]", "features='embed'"))
        for name, signature, reason in needs:
            if not callable(getattr(pl_module, name, None)):
                raise MisconfigurationException(
                    f"SALN with {reason} calls `{type(pl_module).__name__}.{signature}`, which is not defined."
                    f" Define it on the LightningModule (see `lightning_balance.models.MLPClassifier`)."
                )
        self._dataset_size = len(datamodule.train_dataset)  # type: ignore[arg-type]
        if self.protect_groups_below is not None:
            counts = datamodule.group_counts
            self._protected = counts[datamodule.train_group_ids] < self.protect_groups_below
        if self.score == "labels":
            self._group_ids = datamodule.train_group_ids

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here rather than in `setup`: a checkpoint's caches are loaded between the two.
        for cache in (self._feature_cache, self._reference_cache):
            if cache.filled is not None and cache.size != self._dataset_size:
                rank_zero_warn(
                    f"SALN's cached features or reference losses cover {cache.size} samples but the training set has"
                    f" {self._dataset_size}; they are recomputed."
                )
                cache.reset()
            cache.size = self._dataset_size
        if callable(self.keep):
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise MisconfigurationException(
                    f"A keep schedule needs the length of training, but got keep={_describe(self.keep)} with"
                    " unbounded training. Set `Trainer(max_steps=...)` or `Trainer(max_epochs=...)`."
                )
            self._total_steps = max(float(total), 1.0)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.samples_seen == 0 and trainer.global_step > 0:
            rank_zero_warn(
                "SALN has not seen any training batch: the DataModule's `on_after_batch_transfer` does not reach"
                " `BalancedDataModule.on_after_batch_transfer`. If you override it, call `super()` in it."
            )

    def transform_train_batch(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, indices: torch.Tensor
    ) -> tuple[Any, torch.Tensor]:
        """Keep the best-scored part of a training batch (called by the DataModule with the batch on the device).

        Returns:
            The kept part of ``batch`` (its per-sample entries indexed, see ``select``) and its ``indices``.
        """
        b = int(indices.shape[0])
        if b == 0:
            return batch, indices
        progress = trainer.global_step / self._total_steps if self._total_steps else 0.0
        k = keep_count(resolve_keep(self.keep, progress), b)
        self._batches += 1
        self.samples_seen += b
        self.samples_kept += k
        if k >= b:
            return batch, indices
        generator = self._generator(indices.device, trainer.global_rank)
        # Lightning enters the precision plugin's autocast only around `training_step`; this hook runs before it, so
        # the scoring forwards enter it here to run at the precision of the step they select for.
        scores = self._scores(pl_module, batch, indices, generator, trainer.precision_plugin.forward_context)
        protected = None if self._protected is None else self._on(indices.device, "_protected")[indices]
        positions = select_top_k(scores, k, protected=protected, generator=generator)
        return self._take_batch(batch, positions, b), indices[positions]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self._batches,
            "samples_seen": self.samples_seen,
            "samples_kept": self.samples_kept,
            "features": self._feature_cache.state_dict(),
            "reference_loss": self._reference_cache.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._batches = int(state_dict.get("batches", 0))
        self.samples_seen = int(state_dict.get("samples_seen", 0))
        self.samples_kept = int(state_dict.get("samples_kept", 0))
        self._feature_cache.load_state_dict(state_dict.get("features", {}))
        self._reference_cache.load_state_dict(state_dict.get("reference_loss", {}))

    # ------------------------------------------------------------------ scoring
    def _scores(
        self,
        pl_module: LightningModule,
        batch: Any,
        indices: torch.Tensor,
        generator: torch.Generator,
        forward_context: Callable[[], Any],
    ) -> torch.Tensor:
        b = int(indices.shape[0])
        if self.method == "random":
            return torch.rand(b, generator=generator, device=indices.device)
        if self.method in ("loss", "rho_loss"):
            with torch.no_grad(), forward_context():
                loss = self._check_loss(pl_module.per_sample_loss(batch), b, "the LightningModule")  # type: ignore
            if self.method == "loss":
                return loss
            reference = self.reference
            assert reference is not None  # checked in the constructor for method="rho_loss"

            def reference_loss(pos: torch.Tensor) -> torch.Tensor:
                part = self._take_batch(batch, pos, b)
                out = self._call_frozen(reference, "per_sample_loss", indices.device, forward_context, part)
                return self._check_loss(out, len(pos), "`reference`")

            ref = self._reference_cache.lookup(indices, reference_loss)
            return reducible_loss_scores(loss, ref)
        labels = None if self._group_ids is None else self._on(indices.device, "_group_ids")[indices]
        features = self._features(pl_module, batch, indices, forward_context)
        # Outside the forward context: the similarity graph and its eigenvectors need float32 or better.
        return spectral_scores(features, laplacian=self.laplacian, negative=self.negative, score=self.score,
                               labels=labels)

    def _features(
        self, pl_module: LightningModule, batch: Any, indices: torch.Tensor, forward_context: Callable[[], Any]
    ) -> torch.Tensor:
        b = int(indices.shape[0])
        if self.features == "inputs":
            return self._select_inputs(batch).reshape(b, -1)
        if isinstance(self.features, nn.Module):
            extractor, inputs = self.features, self._select_inputs(batch)

            def extract(pos: torch.Tensor) -> torch.Tensor:
                out = self._call_frozen(extractor, None, indices.device, forward_context, inputs[pos])
                return self._check_features(out, len(pos), type(extractor).__name__)

            return self._feature_cache.lookup(indices, extract)
        with torch.no_grad(), forward_context():
            if self.features == "embed":
                out, source = pl_module.embed(batch), f"{type(pl_module).__name__}.embed"  # type: ignore[operator]
            else:
                out, source = self.features(pl_module, batch), _describe(self.features)
        return self._check_features(out, b, source)

    def _select_inputs(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch
        if callable(self.inputs):
            return self.inputs(batch)
        try:
            found = batch[self.inputs]
        except (KeyError, IndexError, TypeError):
            found = None
        if not isinstance(found, torch.Tensor):
            raise ValueError(
                f"SALN looks for the inputs at `inputs={self.inputs!r}` in a batch of type {type(batch).__name__},"
                " but found no tensor there. Pass `inputs=` the index or key of the inputs, or a callable"
                " `batch -> Tensor`."
            )
        return found

    @staticmethod
    def _check_features(features: Any, batch_size: int, source: str) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != batch_size:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"Expected the features from `features` ({source}) to have shape [B, D] = [{batch_size}, D], but"
                f" got {shape}. Make it return one flat vector per sample, e.g. wrap an extractor as"
                " `nn.Sequential(extractor, nn.Flatten())`."
            )
        return features

    @staticmethod
    def _check_loss(loss: Any, batch_size: int, source: str) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor) or loss.shape != (batch_size,):
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"Expected `per_sample_loss(batch)` of {source} to return one loss per sample, shape [{batch_size}],"
                f" but got {shape}. Compute it with `reduction='none'`."
            )
        return loss.float()

    # ------------------------------------------------------------------ cutting the batch
    def _take_batch(self, batch: Any, positions: torch.Tensor, batch_size: int) -> Any:
        """The part of ``batch`` at ``positions``, cut as ``select`` says."""
        if callable(self.select):
            return self.select(batch, positions)
        if self.select is not None:
            return _take_entries(batch, self.select, positions, batch_size)
        self._check_unambiguous(batch, batch_size)
        return _take(batch, positions, batch_size)

    def _check_unambiguous(self, batch: Any, batch_size: int) -> None:
        """Refuse (or warn about) batches where "first dimension == B" does not tell which tensors are per-sample."""
        if isinstance(batch, torch.Tensor):
            return  # a tensor batch is its own input: one row per sample
        try:
            inputs: Optional[torch.Tensor] = self._select_inputs(batch)
        except ValueError:
            inputs = None
        fix = (
            " Pass `SALN(select=...)`: the positions or keys of the per-sample entries (e.g. `select=(0, 1)`), or a"
            " callable `select(batch, keep_index) -> batch` that cuts the batch itself."
        )
        for path, tensor in _tensors(batch):
            if tensor is inputs or tensor.ndim == 0:
                continue  # the inputs are per-sample by definition, whatever their shape
            if tensor.ndim >= 2 and tensor.shape[1] == batch_size:
                what = (
                    "is [B, B, ...]: SALN cannot tell a matrix over the batch (a pairwise mask, to cut on both"
                    " dimensions) from B rows of B values (to cut on the first)"
                    if tensor.shape[0] == batch_size
                    else "has the batch size as its second dimension (time-first?), which SALN does not cut"
                )
                raise ValueError(
                    f"SALN is cutting a batch of {batch_size} samples, but {path} of shape {tuple(tensor.shape)}"
                    f" {what}." + fix
                )
            if tensor.shape[0] != batch_size and not self._warned_mixed_batch:
                self._warned_mixed_batch = True
                rank_zero_warn(
                    f"SALN cuts every tensor of the batch whose first dimension is the batch size, but {path} of"
                    f" shape {tuple(tensor.shape)} is not per-sample: a tensor like it would be cut in a batch whose"
                    " size happens to equal its length." + fix
                )

    # ------------------------------------------------------------------ helpers
    def _call_frozen(
        self,
        module: nn.Module,
        method: Optional[str],
        device: torch.device,
        forward_context: Callable[[], Any],
        *args: Any,
    ) -> Any:
        """Call ``module`` (or its ``method``) on the module's device in eval mode without gradients.

        A frozen model must neither update BatchNorm statistics nor apply dropout; its mode is restored after, in
        case it is also a submodule of the learner.
        """
        if self._moved.get(id(module)) != device:
            module.to(device)
            self._moved[id(module)] = device
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), forward_context():
                return (module if method is None else getattr(module, method))(*args)
        finally:
            module.train(was_training)

    def _on(self, device: torch.device, name: str) -> torch.Tensor:
        tensor = getattr(self, name)
        if tensor.device != device:
            tensor = tensor.to(device)
            setattr(self, name, tensor)
        return tensor

    def _generator(self, device: torch.device, rank: int) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        # Keyed on the batch counter, so a resumed run continues the same random stream.
        key = np.random.SeedSequence([self.seed, self._batches, rank]).generate_state(1, np.uint64)[0]
        return generator.manual_seed(int(key >> np.uint64(1)))
