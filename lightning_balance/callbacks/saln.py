r"""
SALN
^^^^

Spectral batch selection (Sharifi, "SALN: Spectral-Based Joint Batch Selection", MLKD 2024, arXiv 2412.17069):
every training batch is scored from the Fiedler vector of its cosine-similarity graph
(:func:`~lightning_balance.functional.spectral_scores`) and the step trains only on the best-scored part of it.
The baselines it is compared with are the same callback with another ``method``, so they train on the same
number of samples per step:

* ``"random"``: a uniform subset; ``"loss"``: a top-k of the learner's loss;
* ``"selective_backprop"``: Selective Backprop's draw, with probability from the loss percentile (Composer's
  ``select_using_loss``, :func:`~lightning_balance.selection.selective_backprop_select`);
* ``"rho_loss"``: RHO-LOSS, a top-k of learner loss minus a reference model's loss;
* ``"jest"``: JEST's chunked sampling of the same learnability score
  (:func:`~lightning_balance.selection.jest_select`).

They are equal in samples kept, not in cost: each method pays for its own scoring (nothing for ``random``; a
no-grad forward pass of the whole batch for the loss-based ones, plus one reference forward per dataset index for
``rho_loss`` and ``jest``; for ``spectral`` the forward of its features, if any, and the Fiedler solve).

How many samples are kept: ``keep`` (a fraction of each batch, or a schedule), or, for super-batch selection as
JEST does it, ``batch_size=b`` (train on ``b`` of each DataModule batch, which is then the super-batch ``B``) or
``filter_ratio=f`` (train on :math:`\lceil (1 - f) B \rceil`). Both count per rank: under DDP each rank selects
within its own batch (its super-batch), the similarity graph never spans ranks, and every rank trains on the same
number of samples, so no rank waits for another.

Selection happens after the batch reaches the device, in the ``transform_train_batch`` hook that
:class:`~lightning_balance.BalancedDataModule` calls from ``on_after_batch_transfer``: the learner-dependent
scores need the current weights, and the sampler, its distributed split and its resumable position stay
untouched. ``docs/saln.md`` has the measurements behind these choices.

Nothing on the per-step path reads a device tensor on the host once the caches are filled: the random draws come
from a generator seeded from ``(seed, batch index, rank)``, the caches (frozen features, reference losses) and the
per-example tables live in CPU memory (pinned when CUDA is available, or a numpy memmap) and are gathered with
the CPU indices and copied to the device with ``non_blocking=True``; new cache rows go back to the host
asynchronously. The scoring forward passes run inside the precision plugin's forward context (autocast under
``precision="bf16-mixed"``); the Fiedler solve always runs in float32 or float64.
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
from lightning_balance.functional.fiedler import _FIEDLER_METHODS, FiedlerMethod
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
    _validate_filter_ratio,
    _validate_fraction,
    filter_ratio_count,
    jest_select,
    keep_count,
    reducible_loss_scores,
    resolve_keep,
    select_top_k,
    selective_backprop_select,
    super_batch_size,
)

__all__ = ["SALN"]

Method = Literal["spectral", "random", "loss", "selective_backprop", "rho_loss", "jest", "learnability"]
FeatureSource = Union[Literal["inputs", "embed"], nn.Module, Callable[[LightningModule, Any], torch.Tensor]]
InputSelector = Union[int, str, Callable[[Any], torch.Tensor]]
BatchSelect = Union[Sequence[Union[int, str]], Callable[[Any, torch.Tensor], Any]]

_METHODS = ("spectral", "random", "loss", "selective_backprop", "rho_loss", "jest", "learnability")
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
            return type(batch)(out)  # type: ignore[call-arg]
        except TypeError:
            return out
    items = [chosen.get(i, value) for i, value in enumerate(batch)]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*items)  # a namedtuple
    return type(batch)(items)


class _IndexCache:
    """Values computed once per dataset index, kept in host memory: an ``[N, ...]`` table and a filled-mask.

    The table lives on the CPU (pinned when CUDA is available, so that gathered rows can be copied to the device
    without waiting) or in a numpy memmap under ``directory``. Lookups take the batch's indices on the CPU, gather
    there, and copy the rows to the device with ``non_blocking=True``. Rows computed on a GPU are copied back
    asynchronously into pinned buffers and written into the table once their copy has finished (checked with
    ``Event.query``, which never blocks); until then their indices count as missing.
    """

    def __init__(self, name: str, directory: Optional[str] = None) -> None:
        self.name = name
        self.directory = directory
        self.size = 0
        self.reset()

    def reset(self) -> None:
        self.values: Optional[torch.Tensor] = None
        self.filled: Optional[torch.Tensor] = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor, Any]] = []

    @property
    def complete(self) -> bool:
        return self.filled is not None and bool(self.filled.all())

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        if self.directory is not None:
            self.values = _memmap_table(self.directory, self.name, (self.size, *shape), dtype)
        else:
            self.values = torch.zeros((self.size, *shape), dtype=dtype, pin_memory=torch.cuda.is_available())
        self.filled = torch.zeros(self.size, dtype=torch.bool)

    def _apply_pending(self, wait: bool = False) -> None:
        still = []
        for rows, buffer, event in self._pending:
            if event is not None and not wait and not event.query():
                still.append((rows, buffer, event))
                continue
            if event is not None:
                event.synchronize()
            assert self.values is not None and self.filled is not None  # allocated before anything is pending
            self.values[rows] = buffer.to(self.values.dtype)
            self.filled[rows] = True
        self._pending = still

    def _store(self, rows: torch.Tensor, fresh: torch.Tensor) -> None:
        if self.values is None:
            self._allocate(tuple(fresh.shape[1:]), fresh.dtype)
        fresh = fresh.detach()
        if fresh.device.type == "cuda":
            buffer = torch.empty(fresh.shape, dtype=fresh.dtype, pin_memory=True)
            buffer.copy_(fresh, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((rows, buffer, event))
        else:
            self._pending.append((rows, fresh, None))
            self._apply_pending()

    def lookup(
        self, indices: torch.Tensor, device: torch.device, compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Values at ``indices`` (CPU int64) on ``device``; ``compute(positions)`` gives them for those positions
        of the batch (``positions`` on ``device``).
        """
        self._apply_pending()
        missing_at = None
        if self.filled is None:
            missing_at = torch.arange(len(indices))
        else:
            # A host decision on host tensors: no device is involved.
            need = ~self.filled[indices]
            if bool(need.any()):
                missing_at = torch.nonzero(need).flatten()
        if missing_at is None:
            return _to_device(self.values.index_select(0, indices), device)  # type: ignore[union-attr]
        # An index drawn twice in one batch is computed once: keep the first position of every index.
        missing, inverse = torch.unique(indices[missing_at], return_inverse=True)
        first = torch.full_like(missing, len(missing_at)).scatter_reduce(
            0, inverse, torch.arange(len(missing_at)), "amin"
        )
        fresh = compute(_to_device(missing_at[first], device))
        self._store(missing, fresh)
        assert self.values is not None  # allocated by the store
        out = _to_device(self.values.index_select(0, indices), device).to(fresh.dtype)
        # Rows whose copy to the host is still in flight are read from the fresh values on the device.
        out[_to_device(missing_at, device)] = fresh[_to_device(inverse, device)].to(out.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        self._apply_pending(wait=True)
        if self.values is None:
            return {}
        return {"values": self.values.detach().clone(), "filled": self.filled.clone()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values, filled = state.get("values"), state.get("filled")
        if values is None or filled is None:
            return
        self.reset()
        self.size = len(filled)
        self._allocate(tuple(values.shape[1:]), values.dtype)
        self.values.copy_(values)  # type: ignore[union-attr]
        self.filled.copy_(filled.bool())  # type: ignore[union-attr]

    def merge_across_ranks(self, strategy: Any) -> None:
        """Make every rank's table the union of all ranks' (DDP): sums of filled rows and of the filled flags."""
        import torch.distributed as dist

        self._apply_pending(wait=True)
        shape_dtype = [None if self.values is None else (tuple(self.values.shape[1:]), self.values.dtype)]
        known = [shape_dtype]
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, shape_dtype)
            known = gathered
        spec = next((k[0] for k in known if k[0] is not None), None)
        if spec is None:
            return  # no rank has filled anything
        if self.values is None:
            self._allocate(*spec)
        assert self.values is not None and self.filled is not None
        device = strategy.root_device
        rows = max(1, (64 * 2**20) // max(1, math.prod(spec[0]) * 4))  # ~64 MB per chunk on the device
        for start in range(0, self.size, rows):
            part = slice(start, min(self.size, start + rows))
            flag = self.filled[part].to(device)
            value = self.values[part].to(device, torch.float32)
            value = value * flag.view(-1, *([1] * (value.ndim - 1)))
            count = strategy.reduce(flag.float(), reduce_op="sum")
            total = strategy.reduce(value, reduce_op="sum")
            merged = total / count.clamp_min(1.0).view(-1, *([1] * (value.ndim - 1)))
            self.values[part] = merged.to(self.values.dtype).cpu()
            self.filled[part] = (count > 0).cpu()


def _memmap_table(directory: str, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled table in a numpy memmap file under ``directory``, seen as a tensor (no copy)."""
    import os

    os.makedirs(directory, exist_ok=True)
    # numpy has no bfloat16: such tables are stored as their 16-bit patterns and viewed back.
    storage = {torch.bfloat16: np.uint16, torch.float16: np.float16}.get(dtype)
    np_dtype = storage if storage is not None else torch.empty(0, dtype=dtype).numpy().dtype
    array = np.lib.format.open_memmap(os.path.join(directory, f"{name}.npy"), mode="w+", dtype=np_dtype, shape=shape)
    table = torch.from_numpy(array)
    return table.view(dtype) if storage is np.uint16 else table


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``, without waiting for the copy (from pinned memory on CUDA)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class SALN(Callback):
    r"""Train each step on the best-scored part of its batch.

    Needs a :class:`~lightning_balance.BalancedDataModule` (it calls the callback with the batch on the device
    and the dataset index of every sample).

    Args:
        keep: fraction of each batch trained on, in ``(0, 1]``, or a schedule ``keep(progress) -> fraction``
            (``progress`` is the fraction of optimizer steps done; e.g. ``LinearRamp(start=1.0, end=0.5)``).
            While it is 1 nothing is scored. Default 0.5, unless ``batch_size`` or ``filter_ratio`` is given.
        method: ``"spectral"`` (SALN), ``"random"`` (uniform subset), ``"loss"`` (the ``k`` highest learner
            losses, a deterministic top-k), ``"selective_backprop"`` (``k`` drawn with probability
            :math:`\propto` loss percentile :math:`^\beta`, Composer's ``select_using_loss``), ``"rho_loss"``
            (RHO-LOSS: the ``k`` highest learner loss minus ``reference`` loss) or ``"jest"`` (JEST: the same
            learnability drawn in ``n_chunks`` chunks from a softmax conditioned on the earlier chunks).
            ``"learnability"`` is the deprecated name of ``"rho_loss"``. The methods keep the same number of
            samples, not the same cost: the loss-based ones add a no-grad forward pass of the whole batch,
            ``spectral`` a Fiedler solve (and the forward of its features).
        batch_size: super-batch selection: train on ``batch_size`` samples of every DataModule batch, which is the
            super-batch (``B``, per rank). ``BalancedDataModule(batch_size=B)`` must be at least this.
        filter_ratio: super-batch selection by JEST's filter ratio :math:`f = 1 - b / B`, in ``[0, 1)``: train on
            :math:`\lceil (1 - f) B \rceil` of each super-batch. With ``batch_size`` too, the DataModule's batch
            must be the super-batch they imply (``ceil((1 - f) B) = b``).
        features: where ``"spectral"`` takes the features from:

            * ``"inputs"``: the batch's inputs flattened to ``[B, D]``;
            * ``"embed"``: the learner's own ``embed(batch) -> [B, D]`` method, at its current weights;
            * an ``nn.Module``: a frozen feature extractor applied to the inputs (eval mode, no gradient). Its
              ``[B, D]`` output is computed once per dataset index and cached in host memory;
            * a callable ``feature_fn(pl_module, batch) -> [B, D]``.
        inputs: how to find the inputs in a batch: an index (tuple/list batch), a key (dict batch) or a
            callable ``batch -> Tensor``. A batch that is a tensor is its own input.
        laplacian: see :func:`~lightning_balance.functional.spectral_scores`. The default ``"random_walk"`` was
            chosen by the benchmark; the paper's Laplacian, :math:`L = D - S`, is ``"plain"``.
        negative: see :func:`~lightning_balance.functional.spectral_scores`.
        score: see :func:`~lightning_balance.functional.spectral_scores`; ``"labels"`` uses the DataModule's
            group ids as labels.
        solver: the Fiedler solver, ``"auto"``, ``"eigh"``, ``"subspace"`` or ``"lobpcg"``; see
            :func:`~lightning_balance.functional.fiedler.fiedler_vectors`.
        protect_groups_below: samples whose group has fewer training examples than this are always kept
            (still exactly the same number per batch: if a batch holds more protected samples than that, the
            method chooses among them).
        reference: for ``"rho_loss"`` and ``"jest"``, a trained model with a ``per_sample_loss(batch) -> [B]``
            method that accepts the learner's batches. Its losses are computed once per dataset index (eval
            mode) and cached.
        n_chunks: for ``"jest"``, the chunks the kept samples are drawn in, ``1 <= n_chunks <= k`` (JEST: 16).
            With a keep schedule, a step that keeps fewer than ``n_chunks`` samples draws one per chunk.
        beta: for ``"selective_backprop"``, the exponent of the loss percentile; default ``1 / keep - 1``
            (Composer's), with ``keep`` the kept fraction of that step.
        seed: seed of the random choices (the ``"random"`` subset, the draws of ``"jest"`` and
            ``"selective_backprop"``, ties between equal scores). The draw of a step depends on
            ``(seed, batch index, rank)`` only, so a resumed run makes the same draws as an uninterrupted one.
        save_cache: save the cached frozen features and reference losses in checkpoints (off by default: they
            can be recomputed, and under DDP saving them gathers every rank's part, an all-reduce of the tables).
            Without it a resumed run recomputes them as it meets their indices.
        cache_dir: keep the caches in numpy memmap files in this folder (one per cache and rank) instead of in
            host memory.
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

    The LightningModule provides, when the configuration needs them: ``per_sample_loss(batch) -> [B]`` (for the
    loss-based methods; computed under ``no_grad`` in the module's current mode) and ``embed(batch) -> [B, D]``
    (for ``features="embed"``). These, the frozen extractor, a feature function and the reference model run inside
    the precision plugin's forward context (autocast under ``"bf16-mixed"``).

    Memory: a frozen extractor's features (``[N, D]``) and the reference losses (``[N]``) are cached for every
    one of the ``N`` training samples in host memory (or ``cache_dir``), as are ``[N]`` tables of the protected
    samples and of the group ids when ``protect_groups_below`` or ``score="labels"`` is set. Nothing of size ``N``
    lives on the device.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_balance.datasets import LongTailDigits
        >>> from lightning_balance.models import MLPClassifier
        >>> saln = SALN(keep=0.5, protect_groups_below=20)
        >>> saln.method, saln.score, saln.laplacian, saln.features
        ('spectral', 'boundary', 'random_walk', 'inputs')
        >>> SALN(batch_size=32, method="jest", reference=MLPClassifier()).method  # 32 of every super-batch
        'jest'
        >>> trainer = pl.Trainer(max_epochs=1, callbacks=[saln], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(MLPClassifier(), datamodule=LongTailDigits(batch_size=32))  # doctest: +SKIP
        >>> saln.samples_kept, saln.samples_seen  # doctest: +SKIP
        (144, 288)
    """

    def __init__(
        self,
        keep: Optional[KeepLike] = None,
        *,
        method: Method = "spectral",
        batch_size: Optional[int] = None,
        filter_ratio: Optional[float] = None,
        features: FeatureSource = "inputs",
        inputs: InputSelector = 0,
        laplacian: LaplacianKind = "random_walk",
        negative: NegativeSimilarity = "clamp",
        score: SpectralScore = "boundary",
        solver: FiedlerMethod = "auto",
        protect_groups_below: Optional[int] = None,
        reference: Optional[nn.Module] = None,
        n_chunks: int = 16,
        beta: Optional[float] = None,
        seed: int = 0,
        save_cache: bool = False,
        cache_dir: Optional[str] = None,
        select: Optional[BatchSelect] = None,
    ) -> None:
        if keep is not None and (batch_size is not None or filter_ratio is not None):
            raise ValueError(
                f"Expected one way to say how many samples to keep, but got keep={_describe(keep)} together with"
                f" batch_size={batch_size!r} / filter_ratio={filter_ratio!r}. Pass `keep` (a fraction of each batch)"
                " or `batch_size` / `filter_ratio` (super-batch selection), not both."
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
        ):
            raise ValueError(
                "Expected argument `batch_size` to be a positive integer (the samples trained on per super-batch and"
                f" rank), but got {batch_size!r}."
            )
        if filter_ratio is not None:
            filter_ratio = _validate_filter_ratio(filter_ratio)
        if keep is None:
            keep = 1.0 if (batch_size is not None or filter_ratio is not None) else 0.5
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
                                     ("score", score, _SCORES), ("solver", solver, _FIEDLER_METHODS)):
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
        if isinstance(n_chunks, bool) or not isinstance(n_chunks, numbers.Integral) or n_chunks < 1:
            raise ValueError(
                f"Expected argument `n_chunks` to be a positive integer (JEST draws the kept samples in that many"
                f" chunks), but got {n_chunks!r}. JEST uses 16."
            )
        # With `batch_size` the kept count is known now; otherwise it waits for the DataModule's batch (`setup`).
        if method == "jest" and batch_size is not None and n_chunks > batch_size:
            raise ValueError(
                f"Expected argument `n_chunks` to be at most the {batch_size} samples kept per step, but got"
                f" n_chunks={n_chunks!r}. Use `n_chunks={min(16, int(batch_size))}` or keep more samples."
            )
        if beta is not None and (
            isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < math.inf
        ):
            raise ValueError(
                f"Expected argument `beta` to be a finite number >= 0 (Selective Backprop's exponent of the loss"
                f" percentile), but got {beta!r}. Leave it None for Composer's 1 / keep - 1."
            )
        if method in ("rho_loss", "jest"):
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
        self.keep: KeepLike = keep
        self.method: Method = method
        self._configured_method: str = configured_method  # the spelling the state key was built from
        self.batch_size: Optional[int] = None if batch_size is None else int(batch_size)
        self.filter_ratio: Optional[float] = filter_ratio
        self.select: Optional[BatchSelect] = (
            select if select is None or callable(select) else tuple(int(e) if isinstance(e, numbers.Integral) else e
                                                                    for e in select)
        )
        self.features: FeatureSource = features
        self.inputs: InputSelector = inputs
        self.laplacian: LaplacianKind = laplacian
        self.negative: NegativeSimilarity = negative
        self.score: SpectralScore = score
        self.solver: FiedlerMethod = solver
        self.protect_groups_below: Optional[int] = None if protect_groups_below is None else int(protect_groups_below)
        self.reference: Optional[nn.Module] = reference
        self.n_chunks: int = int(n_chunks)
        self.beta: Optional[float] = None if beta is None else float(beta)
        self.seed: int = int(seed)
        self.save_cache: bool = bool(save_cache)
        self.cache_dir: Optional[str] = cache_dir

        self.samples_seen: int = 0
        self.samples_kept: int = 0
        self._batches: int = 0
        self._total_steps: Optional[float] = None
        self._feature_cache: _IndexCache = _IndexCache("features", cache_dir)
        self._reference_cache: _IndexCache = _IndexCache("reference_loss", cache_dir)
        self._protected: Optional[torch.Tensor] = None  # [N] bool, on the CPU
        self._group_ids: Optional[torch.Tensor] = None  # [N] int64, on the CPU
        self._generators: dict[torch.device, torch.Generator] = {}
        self._moved: dict[int, torch.device] = {}
        self._dataset_size: int = 0
        self._warned_mixed_batch: bool = False
        self._checked_reference: bool = False
        self._strategy: Any = None

    @property
    @override
    def state_key(self) -> str:
        extra: dict[str, Any] = {}
        # Options added later enter the key only when set, so checkpoints written before them still load.
        if self.batch_size is not None:
            extra["batch_size"] = self.batch_size
        if self.filter_ratio is not None:
            extra["filter_ratio"] = self.filter_ratio
        if self.method == "jest":
            extra["n_chunks"] = self.n_chunks
        if self.beta is not None:
            extra["beta"] = self.beta
        return self._generate_state_key(
            keep=_describe(self.keep), method=self._configured_method, features=_describe(self.features),
            score=self.score, laplacian=self.laplacian, negative=self.negative,
            protect_groups_below=self.protect_groups_below, **extra,
        )

    @property
    def kept_fraction(self) -> float:
        """Fraction of the samples seen so far that were trained on (1.0 before training)."""
        return self.samples_kept / self.samples_seen if self.samples_seen else 1.0

    def kept_count(self, batch_size: int, progress: float = 0.0) -> int:
        """Samples trained on out of a batch (super-batch) of ``batch_size`` at ``progress``.

        Example:
            >>> SALN(keep=0.25).kept_count(64), SALN(batch_size=48).kept_count(64)
            (16, 48)
            >>> SALN(filter_ratio=0.8).kept_count(320)
            64
        """
        if self.batch_size is not None:
            if batch_size < self.batch_size:
                raise ValueError(
                    f"SALN(batch_size={self.batch_size}) trains on {self.batch_size} samples of each super-batch, but"
                    f" got a batch of {batch_size}. The DataModule's batch is the super-batch: set"
                    f" `BalancedDataModule(batch_size=B)` with B >= {self.batch_size} (e.g."
                    f" {super_batch_size(self.batch_size, self.filter_ratio or 0.5)} for a filter ratio of"
                    f" {self.filter_ratio or 0.5}), and keep `drop_last` so that no batch is smaller."
                )
            return self.batch_size
        if self.filter_ratio is not None:
            return filter_ratio_count(self.filter_ratio, batch_size)
        return keep_count(resolve_keep(self.keep, progress), batch_size)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, BalancedDataModule):
            mode = (" Super-batch selection (`batch_size` / `filter_ratio`) takes the DataModule's batch as the"
                    " super-batch.") if self.batch_size is not None or self.filter_ratio is not None else ""
            raise MisconfigurationException(
                "SALN selects inside each training batch through `BalancedDataModule.on_after_batch_transfer`, but"
                f" the Trainer's datamodule is {type(datamodule).__name__}.{mode} Subclass"
                " `lightning_balance.BalancedDataModule` (assign `self.train_dataset` in `setup`) and call"
                " `trainer.fit(model, datamodule=dm)`."
            )
        self._check_super_batch(datamodule)
        needs = []
        if self.method in ("loss", "rho_loss", "jest", "selective_backprop"):
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
        self._strategy = trainer.strategy
        if self.cache_dir is not None and trainer.world_size > 1:
            # One file per rank: ranks fill their tables independently.
            for cache in (self._feature_cache, self._reference_cache):
                cache.name = f"{cache.name.split('.rank')[0]}.rank{trainer.global_rank}"
        if self.protect_groups_below is not None:
            counts = datamodule.group_counts
            self._protected = (counts[datamodule.train_group_ids] < self.protect_groups_below).cpu()
        if self.score == "labels":
            self._group_ids = datamodule.train_group_ids.cpu()

    def _check_super_batch(self, datamodule: BalancedDataModule) -> None:
        if self.batch_size is None and self.filter_ratio is None:
            size = getattr(datamodule, "batch_size", None)
            if self.method == "jest" and not callable(self.keep) and isinstance(size, int) and size > 0:
                kept = self.kept_count(size)
                if self.n_chunks > kept:
                    raise MisconfigurationException(
                        f"Expected argument `n_chunks` to be at most the {kept} samples kept per batch (keep="
                        f"{self.keep} of {size}), but got n_chunks={self.n_chunks}. Use `n_chunks={min(16, kept)}`."
                    )
            return
        super_batch = getattr(datamodule, "batch_size", None)
        if isinstance(super_batch, bool) or not isinstance(super_batch, numbers.Integral) or super_batch < 1:
            raise MisconfigurationException(
                f"Super-batch selection takes the DataModule's `batch_size` as the super-batch, but"
                f" {type(datamodule).__name__}.batch_size is {super_batch!r}. Give the DataModule a fixed per-process"
                " batch size."
            )
        if self.batch_size is not None and super_batch < self.batch_size:
            raise MisconfigurationException(
                f"SALN(batch_size={self.batch_size}) trains on {self.batch_size} samples of every super-batch, but the"
                f" DataModule's batch (the super-batch B) is {super_batch}: B < b. Set"
                f" `{type(datamodule).__name__}(batch_size=...)` to at least {self.batch_size}, e.g."
                f" {super_batch_size(self.batch_size, self.filter_ratio or 0.5)} for a filter ratio of"
                f" {self.filter_ratio or 0.5}."
            )
        if self.batch_size is not None and self.filter_ratio is not None:
            implied = filter_ratio_count(self.filter_ratio, int(super_batch))
            if implied != self.batch_size:
                raise MisconfigurationException(
                    f"SALN(batch_size={self.batch_size}, filter_ratio={self.filter_ratio}) needs a super-batch of"
                    f" {super_batch_size(self.batch_size, self.filter_ratio)}, but the DataModule's batch is"
                    f" {super_batch} (which keeps {implied} at that filter ratio). Set"
                    f" `{type(datamodule).__name__}(batch_size={super_batch_size(self.batch_size, self.filter_ratio)})`"
                    " or pass only one of `batch_size` and `filter_ratio`."
                )
        kept = self.kept_count(int(super_batch))
        if self.method == "jest" and self.n_chunks > kept:
            raise MisconfigurationException(
                f"Expected argument `n_chunks` to be at most the {kept} samples kept per super-batch, but got"
                f" n_chunks={self.n_chunks}. Use `n_chunks={min(16, kept)}`."
            )

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
            The kept part of ``batch`` (its per-sample entries indexed, see ``select``) and its ``indices``, on the
            batch's device.
        """
        b = int(indices.shape[0])
        if b == 0:
            return batch, indices
        progress = trainer.global_step / self._total_steps if self._total_steps else 0.0
        k = self.kept_count(b, progress)
        step = self._batches
        self._batches += 1
        self.samples_seen += b
        self.samples_kept += k
        if k >= b:
            return batch, indices
        device = self._batch_device(batch, indices)
        # The caches and tables are read with the indices on the host; the DataModule hands them over there.
        host_indices = indices if indices.device.type == "cpu" else indices.cpu()
        generator = self._generator(device, step, trainer.global_rank)
        # Lightning enters the precision plugin's autocast only around `training_step`; this hook runs before it, so
        # the scoring forwards enter it here to run at the precision of the step they select for.
        positions = self._positions(pl_module, batch, host_indices, device, k, generator,
                                    trainer.precision_plugin.forward_context)
        return self._take_batch(batch, positions, b), _to_device(host_indices, device)[positions]

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "batches": self._batches,
            "samples_seen": self.samples_seen,
            "samples_kept": self.samples_kept,
        }
        if self.save_cache:
            for key, cache in (("features", self._feature_cache), ("reference_loss", self._reference_cache)):
                # Every rank runs this (Lightning dumps the state on all ranks, rank 0 writes it): under DDP the
                # table becomes the union of all ranks' parts before it is saved.
                if self._strategy is not None and getattr(self._strategy, "world_size", 1) > 1:
                    cache.merge_across_ranks(self._strategy)
                state[key] = cache.state_dict()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._batches = int(state_dict.get("batches", 0))
        self.samples_seen = int(state_dict.get("samples_seen", 0))
        self.samples_kept = int(state_dict.get("samples_kept", 0))
        # Older checkpoints always held the caches; load whatever a checkpoint has.
        self._feature_cache.load_state_dict(state_dict.get("features", {}))
        self._reference_cache.load_state_dict(state_dict.get("reference_loss", {}))

    # ------------------------------------------------------------------ scoring
    def _positions(
        self,
        pl_module: LightningModule,
        batch: Any,
        indices: torch.Tensor,
        device: torch.device,
        k: int,
        generator: torch.Generator,
        forward_context: Callable[[], Any],
    ) -> torch.Tensor:
        """The sorted positions of the ``k`` samples of the batch to train on, on ``device``."""
        b = int(indices.shape[0])
        protected = None if self._protected is None else _to_device(self._protected[indices], device)
        if self.method == "random":
            scores = torch.rand(b, generator=generator, device=device)
            return select_top_k(scores, k, protected=protected, generator=generator)
        if self.method == "spectral":
            labels = None if self._group_ids is None else _to_device(self._group_ids[indices], device)
            features = self._features(pl_module, batch, indices, device, forward_context)
            # Outside the forward context: the similarity graph and its eigenvectors need float32 or better.
            scores = spectral_scores(features, laplacian=self.laplacian, negative=self.negative, score=self.score,
                                     labels=labels, solver=self.solver)
            return select_top_k(scores, k, protected=protected, generator=generator)
        with torch.no_grad(), forward_context():
            loss = self._check_loss(pl_module.per_sample_loss(batch), b, "the LightningModule")  # type: ignore
        if self.method == "loss":
            return select_top_k(loss, k, protected=protected, generator=generator)
        if self.method == "selective_backprop":
            return selective_backprop_select(loss, k, beta=self.beta, generator=generator, protected=protected)
        reference = self.reference
        assert reference is not None  # checked in the constructor for rho_loss and jest

        def reference_loss(pos: torch.Tensor) -> torch.Tensor:
            part = self._take_batch(batch, pos, b)
            try:
                out = self._call_frozen(reference, "per_sample_loss", device, forward_context, part)
            except Exception as err:
                if self._checked_reference:
                    raise
                raise ValueError(
                    f"The `reference` model ({type(reference).__name__}) failed on the learner's batch: {err!r}."
                    " It must accept the learner's batches and return one loss per sample; a reference with other"
                    " outputs (say, another number of classes) does not match the learner."
                ) from err
            return self._check_loss(out, len(pos), "`reference`")

        ref = self._reference_cache.lookup(indices, device, reference_loss)
        self._checked_reference = True
        learnability = reducible_loss_scores(loss, ref)
        if self.method == "rho_loss":
            return select_top_k(learnability, k, protected=protected, generator=generator)
        return jest_select(learnability, k, n_chunks=min(self.n_chunks, k), generator=generator, protected=protected)

    def _features(
        self,
        pl_module: LightningModule,
        batch: Any,
        indices: torch.Tensor,
        device: torch.device,
        forward_context: Callable[[], Any],
    ) -> torch.Tensor:
        b = int(indices.shape[0])
        if self.features == "inputs":
            return self._select_inputs(batch).reshape(b, -1)
        if isinstance(self.features, nn.Module):
            extractor, inputs = self.features, self._select_inputs(batch)

            def extract(pos: torch.Tensor) -> torch.Tensor:
                out = self._call_frozen(extractor, None, device, forward_context, inputs[pos])
                return self._check_features(out, len(pos), type(extractor).__name__)

            return self._feature_cache.lookup(indices, device, extract)
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

    @staticmethod
    def _batch_device(batch: Any, indices: torch.Tensor) -> torch.device:
        """The device the batch was moved to: that of its first tensor (the indices' for a batch without any)."""
        for _, tensor in _tensors(batch):
            return tensor.device
        return indices.device

    def _generator(self, device: torch.device, step: int, rank: int) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        # Keyed on the batch index (restored from checkpoints), so a resumed run continues the same random stream.
        key = np.random.SeedSequence([self.seed, step, rank]).generate_state(1, np.uint64)[0]
        return generator.manual_seed(int(key >> np.uint64(1)))
