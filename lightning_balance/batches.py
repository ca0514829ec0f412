r"""
Training batches
^^^^^^^^^^^^^^^^

What a :class:`~lightning_balance.BalancedDataModule`'s training DataLoader yields: every batch carries the
dataset index and the group id of each of its samples (:class:`IndexedBatch`), so that upweighting and batch
selection apply to the right samples whatever the collate does. A ``collate_fn`` that reorders its samples says
so by returning :class:`Reordered`; when the groups are the labels, an undeclared reordering is detected and
refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional

import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["IndexedBatch", "Reordered"]

_UNWRAP_HINT = (
    "This is a training batch of a BalancedDataModule, which only its DataModule can unwrap. Pass the DataModule to"
    " the Trainer: `trainer.fit(model, datamodule=dm)`, not `train_dataloaders=dm.train_dataloader()`."
)


class IndexedBatch:
    """A training batch with the dataset index and the group id of each of its samples.

    The training DataLoader of a :class:`BalancedDataModule` yields these; the DataModule unwraps them after
    the batch reaches the device, so ``training_step`` receives ``batch`` alone. It is deliberately not a tuple:
    a ``training_step`` that receives one (because the DataLoader was passed to the Trainer without its DataModule)
    fails with a message that says so instead of unpacking the wrong fields.
    """

    __slots__ = ("indices", "batch", "groups")

    def __init__(self, indices: torch.Tensor, batch: Any, groups: Optional[torch.Tensor] = None) -> None:
        self.indices, self.batch, self.groups = indices, batch, groups

    def __iter__(self) -> Any:
        raise TypeError(_UNWRAP_HINT)

    def __getitem__(self, item: Any) -> Any:
        raise TypeError(_UNWRAP_HINT)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"IndexedBatch(indices={self.indices!r}, batch=..., groups={self.groups!r})"


class Reordered(NamedTuple):
    """What a ``collate_fn`` that reorders its samples returns: the batch and, for each of its rows, the position
    of the sample in the list the collate was given.

    Upweighting looks up each sample's weight by its dataset index, so the DataModule has to know where every
    sample ended up. A collate that sorts by length for ``pack_padded_sequence`` returns
    ``Reordered(batch, order)`` with ``order = sorted(range(len(samples)), key=...)``.
    """

    batch: Any
    order: Any


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

    The group ids are looked up here, on the CPU, so that no per-example table has to live on the device. When the
    groups are the labels, the labels of the collated batch are checked against them, so a collate that reorders
    its samples without saying so (see :class:`Reordered`) fails loudly instead of weighting the wrong samples.
    """

    def __init__(
        self,
        collate_fn: Optional[Callable[[list[Any]], Any]],
        lookup: Callable[[torch.Tensor], torch.Tensor],
        check_labels: bool,
    ) -> None:
        self.collate_fn = collate_fn or default_collate
        self.lookup = lookup
        self.check_labels = check_labels

    def __call__(self, items: list[tuple[int, Any]]) -> IndexedBatch:
        indices = torch.tensor([index for index, _ in items], dtype=torch.long)
        batch = self.collate_fn([sample for _, sample in items])
        if isinstance(batch, Reordered):
            order = torch.as_tensor(batch.order, dtype=torch.long)
            if sorted(order.tolist()) != list(range(len(items))):
                raise ValueError(
                    f"`Reordered.order` must be a permutation of range({len(items)}) (the position of every row's"
                    f" sample in the collate's input), but got {order.tolist()}."
                )
            indices, batch = indices[order], batch.batch
        groups = self.lookup(indices)
        if self.check_labels:
            _check_label_order(batch, groups, "the DataLoader's `collate_fn`")
        return IndexedBatch(indices, batch, groups)


def _labels_of(batch: Any) -> Optional[torch.Tensor]:
    """The label tensor of an ``(x, y, ...)`` or ``{"y"|"label"|"labels"|"target"|"targets": ...}`` batch."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        labels = batch[1]
    elif isinstance(batch, Mapping):
        labels = next((batch[k] for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
    else:
        return None
    if isinstance(labels, torch.Tensor) and labels.ndim == 1 and not labels.is_floating_point():
        return labels
    return None


def _check_label_order(batch: Any, groups: torch.Tensor, where: str) -> None:
    labels = _labels_of(batch)
    if labels is None or labels.shape != groups.shape:
        return
    if not torch.equal(labels.cpu(), groups.cpu()):
        if torch.equal(torch.sort(labels.cpu()).values, torch.sort(groups.cpu()).values):
            raise RuntimeError(
                f"{where} reordered the samples of a training batch: their labels no longer line up with the dataset"
                " indices the batch was drawn from, so upweighting and selection would apply to the wrong samples."
                " Return `lightning_balance.Reordered(batch, order)` from the collate, with `order[i]` the position"
                " of row i's sample in the collate's input, or keep the sampler's order."
            )


def _groups_of_kept(kept: torch.Tensor, indices: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Group ids of ``kept``, a selection of ``indices`` whose group ids are ``groups`` (all on one device)."""
    if kept is indices:
        return groups
    order = torch.argsort(indices)
    return groups[order[torch.searchsorted(indices[order], kept)]]
