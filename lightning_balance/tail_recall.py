r"""
Tail recall metric
^^^^^^^^^^^^^^^^^^

:class:`TailRecall` accumulates per-class counts over batches (and processes) and reports recall and F1 for
the head, medium and tail classes of a long-tailed problem. The maths lives in
:mod:`lightning_balance.functional.tail_recall`; this class only keeps the counts.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_balance.functional.tail_recall import (
    CountsLike,
    SplitLike,
    _describe_split,
    _split_masks,
    _tail_recall_arg_validation,
    _tail_recall_compute,
    _tail_recall_format,
    _tail_recall_non_finite,
    _tail_recall_tensor_validation,
    _tail_recall_update,
    _warn_empty_splits,
    _warn_non_finite,
)

__all__ = ["TailRecall"]


class TailRecall(Metric):
    r"""Recall and F1 over the head, medium and tail classes, exact under DDP and honest about absent classes.

    Classes are split by their **training** counts ``class_counts``:

    * ``split="absolute"`` (default, Kang et al. 2020): **head** ``count > many`` (default 100), **medium**
      ``few <= count <= many`` (both inclusive), **tail** ``count < few`` (default 20). Use it to compare with
      published many/medium/few-shot numbers.
    * ``split="quantile"``: the rarest ``tail_fraction`` of the classes (default a third) are the tail, the most
      frequent ``head_fraction`` the head, the rest medium; equal counts always share a split. Use it when the
      absolute thresholds leave a split empty, e.g. every class has at most 100 training examples.

    When the chosen split leaves head, medium or tail without classes, the metric warns once at construction
    and reports ``NaN`` for that split.

    A class without any target in the evaluated data has recall and F1 ``NaN`` and is left out of every
    average; a split none of whose classes has a target reports ``NaN`` and warns, at most once per split and
    metric instance. F1 uses the same rule as recall, so both average over the same classes; predictions of
    an absent class still count as false negatives of the classes the samples belong to. (scikit-learn gives
    such a class F1 = 0 instead.)

    A prediction row with a NaN or inf value (a diverged model) is a wrong prediction for every class: a false
    negative of its target that predicts no class, never the arg-max of its NaN. ``compute`` warns once per
    metric instance with the number of such rows.

    As input to ``update`` the metric accepts:

    - ``preds``: logits or probabilities, a float tensor of shape ``(N, C, ...)``, or labels, an integer
      tensor of shape ``(N, ...)``;
    - ``target``: integer labels of shape ``(N, ...)`` in ``[0, C)`` (or ``ignore_index``).

    ``compute`` returns a dict of float tensors: ``head``, ``medium``, ``tail``, ``macro``, ``worst`` (lowest
    per-class recall), ``per_class`` (shape ``(C,)``), and ``f1_head``, ``f1_medium``, ``f1_tail``,
    ``f1_macro``, ``f1_worst``, ``per_class_f1``.

    The states are three int64 counters per class (true positives, false positives, false negatives) and one
    count of non-finite prediction rows, summed across processes, so the result under DDP equals the
    single-process result on the same samples. (If a distributed sampler repeats samples to even out the shards,
    those repeats are counted too.)

    Args:
        class_counts: number of **training** examples of every class; its length is the number of classes.
        many: head threshold of the absolute split (head: ``count > many``).
        few: tail threshold of the absolute split (tail: ``count < few``).
        split: ``"absolute"`` or ``"quantile"``.
        tail_fraction: fraction of the classes in the tail when ``split="quantile"``.
        head_fraction: fraction of the classes in the head when ``split="quantile"``.
        ignore_index: target value to skip, e.g. padding.
        validate_args: check the inputs of every ``update``.
        kwargs: passed to :class:`torchmetrics.Metric` (``dist_sync_on_step``, ``process_group``, ...).

    Raises:
        ValueError: if an argument is invalid; the message names it and its value.

    Example:
        >>> import torch
        >>> metric = TailRecall([300, 50, 10, 5])
        >>> metric.splits
        {'head': tensor([0]), 'medium': tensor([1]), 'tail': tensor([2, 3])}
        >>> metric.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
        >>> logits = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.0, 0.0, 0.2, 0.8], [0.0, 0.0, 0.7, 0.3]])
        >>> metric.update(logits, torch.tensor([1, 2, 2]))
        >>> out = metric.compute()
        >>> out["per_class"]
        tensor([1.0000, 1.0000, 0.5000,    nan])
        >>> out["head"], out["medium"], out["tail"], out["worst"]
        (tensor(1.), tensor(1.), tensor(0.5000), tensor(0.5000))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    tp: Tensor
    fp: Tensor
    fn: Tensor
    non_finite: Tensor

    def __init__(
        self,
        class_counts: CountsLike,
        *,
        many: float = 100,
        few: float = 20,
        split: SplitLike = "absolute",
        tail_fraction: float = 1 / 3,
        head_fraction: float = 1 / 3,
        ignore_index: Optional[int] = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        counts = _tail_recall_arg_validation(class_counts, many, few, split, tail_fraction, head_fraction, ignore_index)
        self.num_classes = counts.numel()
        self.many, self.few, self.split = many, few, split
        self.tail_fraction, self.head_fraction = tail_fraction, head_fraction
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.class_counts = counts
        # Masks are plain CPU tensors, not states: they are configuration, never synced, moved when used.
        self._masks = _split_masks(counts, many, few, split, tail_fraction, head_fraction)
        self._describe = _describe_split(split, many, few)
        # Splits already warned about; each warns at most once per instance, however often compute() runs.
        self._warned: set[str] = set()
        self._batch_value = False
        _warn_empty_splits(self._masks, None, self._warned, self._describe)

        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum")
        # A counter, not a per-update warning: reading it on the host every batch would synchronise the device.
        self.add_state("non_finite", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def splits(self) -> dict[str, Tensor]:
        """Class indices of the ``head``, ``medium`` and ``tail`` splits."""
        return {name: torch.nonzero(mask).flatten() for name, mask in self._masks.items()}

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the per-class counts of a batch."""
        if self.validate_args:
            _tail_recall_tensor_validation(preds, target, self.num_classes, self.ignore_index)
        preds, target = _tail_recall_format(preds, target, self.ignore_index)
        tp, fp, fn = _tail_recall_update(preds, target, self.num_classes)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.non_finite += _tail_recall_non_finite(preds)

    def forward(self, preds: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Add the batch to the counts and return the values of this batch alone."""
        # A single batch often holds no tail sample at all; that is no reason to warn (and use up the one
        # warning this instance gives) about the evaluated data as a whole.
        self._batch_value = True
        try:
            return super().forward(preds, target)
        finally:
            self._batch_value = False

    def compute(self) -> dict[str, Tensor]:
        """Recall and F1 per split, macro, worst and per class from the accumulated (and synced) counts."""
        if not self._batch_value:
            _warn_empty_splits(self._masks, self.tp + self.fn, self._warned, self._describe)
            if "non_finite" not in self._warned and int(self.non_finite):
                self._warned.add("non_finite")
                _warn_non_finite(int(self.non_finite), int((self.tp + self.fn).sum()))
        return _tail_recall_compute(self.tp, self.fp, self.fn, self._masks)
