r"""
Tail-class recall
^^^^^^^^^^^^^^^^^

Recall and F1 averaged over the head, medium and tail of a long-tailed label distribution.

Classes are split by their **training** count :math:`n_c` (not by how often they occur in the evaluated data):

* ``split="absolute"`` (default) uses the many/medium/few-shot thresholds of Kang et al. ("Decoupling
  representation and classifier for long-tailed recognition", ICLR 2020):

  - **head**: :math:`n_c > \text{many}` (default ``many=100``),
  - **medium**: :math:`\text{few} \le n_c \le \text{many}` (both ends inclusive),
  - **tail**: :math:`n_c < \text{few}` (default ``few=20``).

  These numbers are comparable across papers. OLTR's convention (:math:`\ge 100` / :math:`\le 20`) is
  ``many=99, few=21`` for integer counts.
* ``split="quantile"`` ranks the classes by training count: the ``round(tail_fraction * C)`` rarest classes
  are the tail, the ``round(head_fraction * C)`` most frequent the head (at least one class each), the rest
  medium. Classes with equal counts always share a split: a tie at the tail boundary joins the tail, a tie at
  the head boundary joins the head (unless it is already tail). Use it when the absolute thresholds leave a
  split empty, e.g. when every class has at most 100 training examples (no head) or at least 20 (no tail).

Classes absent from the evaluated data
--------------------------------------
A class with no target in the evaluated data has no recall: its per-class value is ``NaN`` and it is left
out of every average (``head``, ``medium``, ``tail``, ``macro``, ``worst``). Counting it as 0, as
``torchmetrics``' macro recall does, drags the average down for a reason that has nothing to do with the
model. A split none of whose classes has a target reports ``NaN``.

F1 follows the same rule, so that F1 and recall are averaged over the same classes: the F1 of a class with
no target is ``NaN``, whether or not it was predicted. Such spurious predictions are not lost: each one is a
false negative of the class the sample really belongs to, and lowers that class's recall and F1.
scikit-learn instead reports F1 = 0 for a class that is predicted but never a target; that 0 depends only on
whether the model happened to predict the class, and would enter the averages for that reason alone.

Non-finite predictions
----------------------
A row of logits or probabilities that holds a NaN or an infinite value (a diverged model) has no meaningful
arg-max: ``torch.argmax`` would return the position of the first NaN, so a model whose every output is NaN would
score perfect recall on class 0. Such a row counts as a wrong prediction for every class instead: a false
negative of its target class and a prediction of no class (no false positive anywhere). Every evaluation that
meets such rows warns with their number.

The statistics are per-class counts of true positives, false positives and false negatives, which add up
across batches and processes, so the result is exact however the data is split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

__all__ = ["long_tail_split", "tail_recall"]

CountsLike = Union[Sequence[int], Sequence[float], np.ndarray, Tensor]
SplitLike = Literal["absolute", "quantile"]

SPLITS = ("head", "medium", "tail")
_ALLOWED_SPLITS = ("absolute", "quantile")
# The label given to a prediction row with NaN or inf values: it matches no target and predicts no class.
_NO_PREDICTION = -1


# ----------------------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------------------
def _is_real_number(value: object) -> bool:
    # bool is an int subclass: `many=True` is a bug, not a threshold of 1.
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _is_int(tensor: Tensor) -> bool:
    # Integer dtypes only: bool and complex are not labels or counts.
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def _validate_class_counts(class_counts: CountsLike) -> Tensor:
    """Return ``class_counts`` as a 1-D float64 CPU tensor of finite, non-negative values (at least 2)."""
    if isinstance(class_counts, Tensor):
        tensor = class_counts.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(class_counts))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                "Expected argument `class_counts` to be a 1-D sequence with the training count of every class,"
                f" but got {class_counts!r}."
            ) from err
    if tensor.dtype == torch.bool or tensor.is_complex() or not (tensor.is_floating_point() or _is_int(tensor)):
        raise ValueError(
            f"Expected argument `class_counts` to hold real numbers (training counts), but got dtype {tensor.dtype}."
        )
    if tensor.ndim != 1 or tensor.numel() < 2:
        raise ValueError(
            "Expected argument `class_counts` to be a 1-D sequence with one training count per class (at least 2"
            f" classes), but got shape {tuple(tensor.shape)}."
        )
    tensor = tensor.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"Expected argument `class_counts` to be finite, but got {tensor.tolist()!r}.")
    if (tensor < 0).any():
        bad = torch.nonzero(tensor < 0).flatten().tolist()
        raise ValueError(
            f"Expected argument `class_counts` to be non-negative training counts, but classes {bad} have counts"
            f" {tensor[tensor < 0].tolist()}. Pass the number of training examples of each class."
        )
    return tensor


def _split_arg_validation(
    many: float = 100,
    few: float = 20,
    split: str = "absolute",
    tail_fraction: float = 1 / 3,
    head_fraction: float = 1 / 3,
    ignore_index: Optional[int] = None,
) -> None:
    """Validate the arguments that define the splits, and ``ignore_index``."""
    if split not in _ALLOWED_SPLITS:
        raise ValueError(f"Expected argument `split` to be one of {_ALLOWED_SPLITS}, but got {split!r}.")
    for name, value in (("many", many), ("few", few)):
        if not _is_real_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Expected argument `{name}` to be a finite, non-negative training count, but got {value!r}."
            )
    if few > many:
        raise ValueError(
            f"Expected argument `few` to be <= `many` (tail: count < few, head: count > many), but got few={few!r}"
            f" and many={many!r}."
        )
    for name, value in (("tail_fraction", tail_fraction), ("head_fraction", head_fraction)):
        if not _is_real_number(value) or not 0 < value < 1:
            raise ValueError(
                f"Expected argument `{name}` to be a fraction of the classes in (0, 1), but got {value!r}."
            )
    if tail_fraction + head_fraction > 1:
        raise ValueError(
            "Expected arguments `tail_fraction` + `head_fraction` to be <= 1, but got"
            f" {tail_fraction!r} + {head_fraction!r} = {tail_fraction + head_fraction!r}."
        )
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"Expected argument `ignore_index` to be `None` or an integer, but got {ignore_index!r}.")


def _tail_recall_arg_validation(
    class_counts: CountsLike,
    many: float = 100,
    few: float = 20,
    split: str = "absolute",
    tail_fraction: float = 1 / 3,
    head_fraction: float = 1 / 3,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Validate the non-tensor arguments and return ``class_counts`` as a float64 CPU tensor."""
    counts = _validate_class_counts(class_counts)
    _split_arg_validation(many, few, split, tail_fraction, head_fraction, ignore_index)
    return counts


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------
def _split_masks(
    counts: Tensor,
    many: float = 100,
    few: float = 20,
    split: str = "absolute",
    tail_fraction: float = 1 / 3,
    head_fraction: float = 1 / 3,
) -> dict[str, Tensor]:
    """Boolean masks over the classes for ``head``, ``medium`` and ``tail``; they partition the classes."""
    if split == "absolute":
        head = counts > many
        tail = counts < few
    else:
        num_classes = counts.numel()
        ordered = torch.sort(counts).values
        # round half up, and never an empty tail or head: a quantile split exists to fill both.
        k_tail = max(1, math.floor(tail_fraction * num_classes + 0.5))
        k_head = max(1, math.floor(head_fraction * num_classes + 0.5))
        tail = counts <= ordered[k_tail - 1]
        head = (counts >= ordered[num_classes - k_head]) & ~tail
    return {"head": head, "medium": ~head & ~tail, "tail": tail}


def long_tail_split(
    class_counts: CountsLike,
    *,
    many: float = 100,
    few: float = 20,
    split: SplitLike = "absolute",
    tail_fraction: float = 1 / 3,
    head_fraction: float = 1 / 3,
) -> dict[str, Tensor]:
    """Which classes are head, medium and tail, from their training counts.

    Args:
        class_counts: number of training examples of every class.
        many: with ``split="absolute"``, classes with more than ``many`` training examples are the head.
        few: with ``split="absolute"``, classes with fewer than ``few`` training examples are the tail;
            the others (``few <= count <= many``) are medium.
        split: ``"absolute"`` (thresholds ``many``/``few``) or ``"quantile"`` (rank-based fractions); see the
            module documentation for the exact rules and when to use which.
        tail_fraction: with ``split="quantile"``, the fraction of classes, rarest first, that form the tail.
        head_fraction: with ``split="quantile"``, the fraction of classes, most frequent first, that form the head.

    Returns:
        A dict ``{"head": ..., "medium": ..., "tail": ...}`` of sorted int64 tensors of class indices.
        Every class is in exactly one of them; a split may be empty.

    Example:
        >>> long_tail_split([500, 101, 100, 20, 19, 0])
        {'head': tensor([0, 1]), 'medium': tensor([2, 3]), 'tail': tensor([4, 5])}
        >>> long_tail_split([50, 40, 30, 30, 10, 5], split="quantile")
        {'head': tensor([0, 1]), 'medium': tensor([2, 3]), 'tail': tensor([4, 5])}
    """
    counts = _tail_recall_arg_validation(class_counts, many, few, split, tail_fraction, head_fraction)
    masks = _split_masks(counts, many, few, split, tail_fraction, head_fraction)
    return {name: torch.nonzero(mask).flatten() for name, mask in masks.items()}


# ----------------------------------------------------------------------------------------------------------
# Tensor validation, formatting and update
# ----------------------------------------------------------------------------------------------------------
def _tail_recall_tensor_validation(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = None
) -> None:
    """Check shapes, dtypes and label ranges of one batch.

    ``preds`` is ``(N, C, ...)`` floating point (logits or probabilities) or ``(N, ...)`` integer labels;
    ``target`` is ``(N, ...)`` integer labels in ``[0, C)`` or equal to ``ignore_index``.
    """
    for name, value in (("preds", preds), ("target", target)):
        if not isinstance(value, Tensor):
            raise ValueError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(value).__name__}.")
    if not _is_int(target):
        raise RuntimeError(
            f"Expected `target` to be an integer tensor of class indices, but got dtype {target.dtype}."
            " Pass labels, e.g. `target.long()`, not one-hot vectors or probabilities."
        )
    if target.ndim == 0:
        raise RuntimeError("Expected `target` to have shape (N, ...), but got a 0-d tensor. Use `target.view(1)`.")
    if preds.is_floating_point():
        if preds.ndim != target.ndim + 1 or preds.shape[0] != target.shape[0] or preds.shape[2:] != target.shape[1:]:
            raise RuntimeError(
                "Expected floating point `preds` (logits or probabilities) of shape (N, C, ...) for `target` of shape"
                f" (N, ...), but got `preds` of shape {tuple(preds.shape)} and `target` of shape"
                f" {tuple(target.shape)}."
            )
        if preds.shape[1] != num_classes:
            raise RuntimeError(
                f"Expected `preds.shape[1]` to be the number of classes, {num_classes} (the length of"
                f" `class_counts`), but got {preds.shape[1]}. Pass one training count per model output."
            )
    elif _is_int(preds):
        if preds.shape != target.shape:
            raise RuntimeError(
                "Expected integer `preds` (labels) to have the same shape as `target`, but got `preds` of shape"
                f" {tuple(preds.shape)} and `target` of shape {tuple(target.shape)}. Pass logits as a float tensor"
                " of shape (N, C, ...)."
            )
    else:
        raise RuntimeError(
            f"Expected `preds` to be a float tensor of logits/probabilities or an integer tensor of labels, but got"
            f" dtype {preds.dtype}."
        )

    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    bad = (target < 0) | (target >= num_classes)
    if (bad & keep).any():
        values = torch.unique(target[bad & keep]).tolist()
        hint = "" if ignore_index is None else f" other than `ignore_index`={ignore_index}"
        raise RuntimeError(
            f"Expected `target` to hold class indices in [0, {num_classes}){hint}, one per entry of `class_counts`,"
            f" but got {values}. Check that `class_counts` has one count per class, or set `ignore_index` to skip"
            " padding labels."
        )
    if _is_int(preds):
        bad = ((preds < 0) | (preds >= num_classes)) & keep
        if bad.any():
            raise RuntimeError(
                f"Expected `preds` to hold class indices in [0, {num_classes}), one per entry of `class_counts`,"
                f" but got {torch.unique(preds[bad]).tolist()}."
            )


def _tail_recall_format(preds: Tensor, target: Tensor, ignore_index: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Turn logits/probabilities into labels, flatten, and drop the entries whose target is ``ignore_index``.

    A row of ``preds`` with a NaN or inf value becomes ``_NO_PREDICTION``: argmax would pick its first NaN.
    """
    if preds.is_floating_point():
        finite = torch.isfinite(preds).all(dim=1)
        preds = torch.where(finite, preds.argmax(dim=1), _NO_PREDICTION)
    preds = preds.reshape(-1).long()
    target = target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        preds, target = preds[keep], target[keep]
    return preds, target


#: Up to this many classes the counts come from torchmetrics' multiclass stat scores (a ``C x C`` confusion
#: matrix); above it, from three bincounts, whose memory stays O(C) for tens of thousands of classes.
STAT_SCORES_MAX_CLASSES = 1024


def _tail_recall_update(preds: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class true positives, false positives and false negatives (int64 tensors of length ``num_classes``).

    Rows that predict a class are counted by torchmetrics' ``_multiclass_stat_scores_update`` (the counting that
    ``MulticlassStatScores`` uses) for up to :data:`STAT_SCORES_MAX_CLASSES` classes, by three bincounts above; a
    ``_NO_PREDICTION`` row (NaN or inf logits) is a false negative of its target and predicts no class.
    """
    if num_classes > STAT_SCORES_MAX_CLASSES:
        return _bincount_update(preds, target, num_classes)
    from torchmetrics.functional.classification.stat_scores import _multiclass_stat_scores_update

    predicted = preds != _NO_PREDICTION
    tp, fp, _, fn = _multiclass_stat_scores_update(preds[predicted], target[predicted], num_classes, average="none")
    missed = torch.bincount(target[~predicted], minlength=num_classes)
    return tp.long(), fp.long(), fn.long() + missed


def _bincount_update(preds: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_tail_recall_update` with three bincounts instead of a ``C x C`` confusion matrix."""
    support = torch.bincount(target, minlength=num_classes)
    # Shifted by one so that `_NO_PREDICTION` rows fall in bin 0 and predict no class, without a masking sync.
    predicted = torch.bincount(preds - _NO_PREDICTION, minlength=num_classes + 1)[1:]
    tp = torch.bincount(target[preds == target], minlength=num_classes)
    return tp, predicted - tp, support - tp


def _tail_recall_non_finite(preds: Tensor) -> Tensor:
    """How many of the formatted predictions came from rows with NaN or inf values (an int64 scalar tensor)."""
    return (preds == _NO_PREDICTION).sum()


def _warn_non_finite(count: int, total: Optional[int] = None) -> None:
    if count:
        of = "" if total is None else f" of {total}"
        rank_zero_warn(
            f"{count}{of} prediction rows held NaN or inf values (has the model diverged?). Each counts as a wrong"
            " prediction: a false negative of its target class that predicts no class.",
            UserWarning,
        )


# ----------------------------------------------------------------------------------------------------------
# Compute
# ----------------------------------------------------------------------------------------------------------
def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    selected = values[mask]
    return selected.mean() if selected.numel() else torch.tensor(math.nan, dtype=values.dtype, device=values.device)


def _masked_min(values: Tensor, mask: Tensor) -> Tensor:
    selected = values[mask]
    return selected.min() if selected.numel() else torch.tensor(math.nan, dtype=values.dtype, device=values.device)


def _tail_recall_compute(tp: Tensor, fp: Tensor, fn: Tensor, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-class recall and F1, and their averages over each split, over all classes and the worst class.

    Classes with no target (``tp + fn == 0``) are ``NaN`` and left out of every average.
    """
    support = tp + fn
    present = support > 0
    nan = torch.tensor(math.nan, dtype=torch.float32, device=tp.device)
    # Where `present` is False the denominators may be 0; torch.where discards those entries.
    recall = torch.where(present, tp.float() / support.clamp(min=1).float(), nan)
    f1 = torch.where(present, 2 * tp.float() / (2 * tp + fp + fn).clamp(min=1).float(), nan)

    result: dict[str, Tensor] = {}
    for name in SPLITS:
        result[name] = _masked_mean(recall, masks[name].to(tp.device) & present)
    result["macro"] = _masked_mean(recall, present)
    result["worst"] = _masked_min(recall, present)
    result["per_class"] = recall
    for name in SPLITS:
        result[f"f1_{name}"] = _masked_mean(f1, masks[name].to(tp.device) & present)
    result["f1_macro"] = _masked_mean(f1, present)
    result["f1_worst"] = _masked_min(f1, present)
    result["per_class_f1"] = f1
    return result


def _warn_empty_splits(
    masks: dict[str, Tensor], support: Optional[Tensor], warned: set[str], describe: str = ""
) -> None:
    """Warn about every split that will report ``NaN``, unless ``warned`` says it was already done.

    With ``support=None`` only splits that have no class at all are checked (the split itself is empty);
    otherwise also splits whose classes all lack targets in the evaluated data. ``warned`` is updated in place,
    which is how a metric instance warns at most once per split.
    """
    for name in SPLITS:
        if name in warned:
            continue
        mask = masks[name]
        if not mask.any():
            warned.add(name)
            rank_zero_warn(
                f"The {name} split has no classes{describe}, so `{name}` and `f1_{name}` are NaN."
                " If the class counts are all small or all large, `split='quantile'` splits by rank instead.",
                UserWarning,
            )
        elif support is not None and not (support.to(mask.device)[mask] > 0).any():
            warned.add(name)
            rank_zero_warn(
                f"None of the {int(mask.sum())} {name} classes has a target in the evaluated data, so `{name}` and"
                f" `f1_{name}` are NaN.",
                UserWarning,
            )


def _describe_split(split: str, many: float, few: float) -> str:
    if split == "absolute":
        return f" (absolute split: head = count > {many:g}, tail = count < {few:g})"
    return " (quantile split)"


def tail_recall(
    preds: Tensor,
    target: Tensor,
    class_counts: CountsLike,
    *,
    many: float = 100,
    few: float = 20,
    split: SplitLike = "absolute",
    tail_fraction: float = 1 / 3,
    head_fraction: float = 1 / 3,
    ignore_index: Optional[int] = None,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    r"""Recall and F1 per head/medium/tail split of a long-tailed classification problem.

    Classes are split by their training counts (see :func:`long_tail_split`); by default head is
    ``count > 100``, medium ``20 <= count <= 100`` and tail ``count < 20``. A class with no target in
    ``target`` is ``NaN`` and left out of every average; a split none of whose classes occurs in ``target`` is
    ``NaN`` and warns. A row of ``preds`` with a NaN or inf value is a wrong prediction (a false negative of its
    target, a prediction of no class), and their number is reported in a warning.

    Args:
        preds: logits or probabilities as a float tensor of shape ``(N, C, ...)`` (the arg-max is taken over
            ``C``), or predicted labels as an integer tensor of shape ``(N, ...)``.
        target: integer labels of shape ``(N, ...)`` in ``[0, C)``.
        class_counts: number of **training** examples of each of the ``C`` classes.
        many: head threshold of the absolute split: head is ``count > many``.
        few: tail threshold of the absolute split: tail is ``count < few``; medium is ``few <= count <= many``.
        split: ``"absolute"`` or ``"quantile"`` (rank-based, see :func:`long_tail_split`).
        tail_fraction: fraction of classes in the tail for ``split="quantile"``.
        head_fraction: fraction of classes in the head for ``split="quantile"``.
        ignore_index: target value to skip (e.g. padding); these entries count for no class.
        validate_args: check arguments and tensors; turn off only for speed on inputs known to be valid.

    Returns:
        A dict of float32 tensors: ``head``, ``medium``, ``tail`` (mean recall over the split's classes),
        ``macro`` (over all classes), ``worst`` (lowest per-class recall), ``per_class`` (shape ``(C,)``),
        and the same for F1: ``f1_head``, ``f1_medium``, ``f1_tail``, ``f1_macro``, ``f1_worst``,
        ``per_class_f1``.

    Raises:
        ValueError: if an argument is invalid (``class_counts``, ``many``, ``few``, ``split``, ...).
        RuntimeError: if ``preds`` or ``target`` has the wrong shape, dtype or a label outside ``[0, C)``.

    Example:
        >>> import torch
        >>> counts = [300, 50, 10, 5]          # head, medium, tail, tail
        >>> target = torch.tensor([0, 0, 1, 1, 2, 2])   # class 3 is absent
        >>> preds = torch.tensor([0, 0, 1, 0, 2, 3])
        >>> out = tail_recall(preds, target, counts)
        >>> out["per_class"]
        tensor([1.0000, 0.5000, 0.5000,    nan])
        >>> out["head"], out["medium"], out["tail"], out["macro"], out["worst"]
        (tensor(1.), tensor(0.5000), tensor(0.5000), tensor(0.6667), tensor(0.5000))
        >>> out["per_class_f1"]
        tensor([0.8000, 0.6667, 0.6667,    nan])
        >>> logits = torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])  # a diverged row
        >>> tail_recall(logits, torch.tensor([0, 1]), counts)["per_class"]
        tensor([0., 1., nan, nan])
    """
    if validate_args:
        counts = _tail_recall_arg_validation(class_counts, many, few, split, tail_fraction, head_fraction, ignore_index)
        _tail_recall_tensor_validation(preds, target, counts.numel(), ignore_index)
    else:
        counts = torch.as_tensor(class_counts, dtype=torch.float64).cpu()
    num_classes = counts.numel()
    masks = _split_masks(counts, many, few, split, tail_fraction, head_fraction)
    preds, target = _tail_recall_format(preds, target, ignore_index)
    tp, fp, fn = _tail_recall_update(preds, target, num_classes)
    _warn_non_finite(int(_tail_recall_non_finite(preds)), preds.numel())
    _warn_empty_splits(masks, tp + fn, set(), _describe_split(split, many, few))
    return _tail_recall_compute(tp, fp, fn, masks)
