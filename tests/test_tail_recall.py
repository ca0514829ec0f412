import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, recall_score

from lightning_balance.functional.tail_recall import long_tail_split, tail_recall
from lightning_balance.tail_recall import TailRecall

# 12 classes spanning the three absolute splits, with the boundary values 101/100 and 20/19.
COUNTS = np.array([900, 400, 101, 100, 60, 35, 20, 19, 12, 7, 3, 0])
SPLIT_KEYS = ("head", "medium", "tail", "macro", "worst")
F1_KEYS = ("f1_head", "f1_medium", "f1_tail", "f1_macro", "f1_worst")


def _reference(preds_labels, target, counts, masks):
    """Everything from sklearn's per-class scores, averaged by hand over the present classes of each split."""
    num_classes = len(counts)
    labels = list(range(num_classes))
    recall = recall_score(target, preds_labels, labels=labels, average=None, zero_division=0)
    f1 = f1_score(target, preds_labels, labels=labels, average=None, zero_division=0)
    present = np.bincount(target, minlength=num_classes) > 0
    out = {"per_class": np.where(present, recall, np.nan), "per_class_f1": np.where(present, f1, np.nan)}
    for prefix, values in (("", recall), ("f1_", f1)):
        for name, mask in masks.items():
            chosen = values[mask & present]
            out[prefix + name] = chosen.mean() if chosen.size else np.nan
        out[prefix + "macro"] = values[present].mean()
        out[prefix + "worst"] = values[present].min()
    return out


def _absolute_masks(counts, many=100, few=20):
    return {"head": counts > many, "medium": (counts >= few) & (counts <= many), "tail": counts < few}


def _assert_matches(result, expected):
    for key, value in expected.items():
        np.testing.assert_allclose(result[key].double().cpu().numpy(), value, rtol=1e-6, atol=1e-7, err_msg=key)


def _random_problem(seed, n=400, num_classes=12, absent=(5, 11)):
    """Skewed targets, noisy logits that are right about 60% of the time, and some classes never targeted."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.linspace(3, 1, num_classes).exp()
    probs[list(absent)] = 0
    target = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=gen)
    logits = torch.randn(n, num_classes, generator=gen)
    logits[torch.arange(n), target] += 1.5
    return logits, target


# ----------------------------------------------------------------------------------------------- against sklearn
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("form", ["logits", "probs", "labels"])
def test_functional_matches_sklearn_per_split(seed, form):
    logits, target = _random_problem(seed)
    preds = {"logits": logits, "probs": logits.softmax(-1), "labels": logits.argmax(-1)}[form]
    result = tail_recall(preds, target, COUNTS)
    expected = _reference(logits.argmax(-1).numpy(), target.numpy(), COUNTS, _absolute_masks(COUNTS))
    _assert_matches(result, expected)
    # The absent classes are NaN, not 0 (sklearn would give 0 for both recall and, when predicted, F1).
    assert torch.isnan(result["per_class"][[5, 11]]).all()
    assert torch.isnan(result["per_class_f1"][[5, 11]]).all()
    assert not torch.isnan(result["per_class"][[0, 1, 2, 3, 4, 6, 7, 8, 9, 10]]).any()


def test_metric_accumulates_batches_like_one_call_and_like_sklearn():
    logits, target = _random_problem(3, n=500)
    metric = TailRecall(COUNTS)
    for chunk_logits, chunk_target in zip(logits.split(64), target.split(64), strict=True):
        metric.update(chunk_logits, chunk_target)
    result = metric.compute()
    expected = _reference(logits.argmax(-1).numpy(), target.numpy(), COUNTS, _absolute_masks(COUNTS))
    _assert_matches(result, expected)
    whole = tail_recall(logits, target, COUNTS)
    for key in whole:
        torch.testing.assert_close(result[key], whole[key], equal_nan=True, rtol=0, atol=0)


def test_metric_states_are_int64_counters_reduced_by_sum():
    metric = TailRecall(COUNTS)
    assert set(metric._defaults) == {"tp", "fp", "fn", "non_finite"}
    assert all(metric._reductions[name] is not None for name in ("tp", "fp", "fn", "non_finite"))
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    assert metric.tp.dtype == torch.long and metric.tp.shape == (12,)
    assert metric.tp[:2].tolist() == [1, 1] and metric.fp[:2].tolist() == [0, 1] and metric.fn[:2].tolist() == [1, 0]
    assert TailRecall.higher_is_better is True and TailRecall.is_differentiable is False
    assert TailRecall.full_state_update is False


def test_forward_returns_batch_value_and_keeps_global_state():
    metric = TailRecall([200, 50, 5])
    batch = metric(torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert batch["per_class"][:2].tolist() == [1.0, 0.0]
    metric(torch.tensor([1, 1]), torch.tensor([1, 1]))
    # class 1 over both batches: 2 of 3 right.
    assert metric.compute()["per_class"][1].item() == pytest.approx(2 / 3)
    metric.reset()
    metric.update(torch.tensor([2]), torch.tensor([2]))
    assert metric.compute()["per_class"].tolist()[2] == 1.0
    assert math.isnan(metric.compute()["per_class"][0].item())


# ----------------------------------------------------------------------------------------------- absent classes, F1
def test_absent_class_is_left_out_not_counted_as_zero():
    counts = [300, 300, 5]
    target = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 1, 1, 1])
    out = tail_recall(preds, target, counts)
    assert out["macro"].item() == pytest.approx((0.5 + 1.0) / 2)
    # torchmetrics / sklearn style macro with the absent class as 0 would be 0.5; we must not be that.
    assert out["macro"].item() != pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert out["worst"].item() == 0.5
    assert math.isnan(out["tail"].item()) and math.isnan(out["f1_tail"].item())


def test_f1_of_predicted_but_absent_class_is_nan_unlike_sklearn():
    counts = [300, 50, 5]
    target = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 1, 2])  # class 2 predicted twice, never a target
    out = tail_recall(torch.from_numpy(preds), torch.from_numpy(target), counts)
    sk = f1_score(target, preds, labels=[0, 1, 2], average=None, zero_division=0)
    assert sk[2] == 0.0  # sklearn's convention, which we deliberately do not follow
    assert math.isnan(out["per_class_f1"][2].item())
    # The spurious predictions still cost the true classes: their F1 matches sklearn.
    np.testing.assert_allclose(out["per_class_f1"][:2].numpy(), sk[:2], rtol=1e-6)
    assert out["f1_macro"].item() == pytest.approx(sk[:2].mean())


def test_present_class_never_predicted_has_f1_zero():
    out = tail_recall(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1]), [300, 50, 5])
    assert out["per_class_f1"][1].item() == 0.0 and out["per_class"][1].item() == 0.0
    assert out["f1_worst"].item() == 0.0


# ----------------------------------------------------------------------------------------------- splits
def test_absolute_boundaries_are_strict_for_head_and_tail():
    split = long_tail_split(COUNTS)
    assert split["head"].tolist() == [0, 1, 2]  # 101 is head, 100 is not
    assert split["medium"].tolist() == [3, 4, 5, 6]  # 100 and 20 are medium
    assert split["tail"].tolist() == [7, 8, 9, 10, 11]  # 19 and 0 are tail


def test_custom_thresholds_reproduce_oltr_convention():
    split = long_tail_split([150, 100, 50, 21, 20, 3], many=99, few=21)
    assert split["head"].tolist() == [0, 1] and split["tail"].tolist() == [4, 5]


def test_quantile_split_by_rank_without_ties():
    counts = torch.tensor([40.0, 3, 95, 7, 60, 12, 25, 1, 80])
    split = long_tail_split(counts, split="quantile")
    order = torch.argsort(counts)
    assert split["tail"].tolist() == sorted(order[:3].tolist())
    assert split["head"].tolist() == sorted(order[-3:].tolist())
    assert split["medium"].tolist() == sorted(order[3:6].tolist())


def test_quantile_split_keeps_ties_together_and_fractions():
    split = long_tail_split([10, 10, 10, 5, 5, 1], split="quantile")
    # Thirds of 6 classes are 2 each, but the 5s are tied across the tail boundary and join the tail.
    assert split["head"].tolist() == [0, 1, 2]
    assert split["medium"].tolist() == []
    assert split["tail"].tolist() == [3, 4, 5]
    split = long_tail_split(list(range(1, 11)), split="quantile", tail_fraction=0.2, head_fraction=0.5)
    assert split["tail"].tolist() == [0, 1] and split["head"].tolist() == [5, 6, 7, 8, 9]


def test_quantile_metric_matches_sklearn_on_small_counts():
    counts = np.array([90, 80, 70, 50, 40, 30, 25, 22, 21, 20, 20, 20])  # absolute split: no head, no tail
    logits, target = _random_problem(7, absent=(4,))
    result = tail_recall(logits, target, counts, split="quantile")
    order = np.argsort(counts, kind="stable")
    masks = {name: np.zeros(12, dtype=bool) for name in ("head", "medium", "tail")}
    # A third of 12 classes is 4: the three 20s and the 21 are the tail, the four largest the head.
    masks["tail"][[8, 9, 10, 11]] = True
    masks["head"][[0, 1, 2, 3]] = True
    masks["medium"] = ~masks["head"] & ~masks["tail"]
    assert set(order[:4]) == {8, 9, 10, 11}
    _assert_matches(result, _reference(logits.argmax(-1).numpy(), target.numpy(), counts, masks))


# ----------------------------------------------------------------------------------------------- warnings
def _messages(record):
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_empty_split_warns_once_at_construction_and_reports_nan():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        metric = TailRecall([90, 50, 30])  # nothing above 100, nothing below 20
        metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
        out = metric.compute()
        metric.compute()
    messages = _messages(record)
    assert len([m for m in messages if "head split has no classes" in m]) == 1
    assert len([m for m in messages if "tail split has no classes" in m]) == 1
    assert any("split='quantile'" in m for m in messages)
    assert math.isnan(out["head"].item()) and math.isnan(out["tail"].item()) and out["medium"].item() == 1.0


def test_split_without_targets_warns_once_per_instance_not_per_compute_or_batch():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        metric = TailRecall([500, 50, 5])
        metric(torch.tensor([0]), torch.tensor([0]))  # a batch without tail samples: no warning
        assert _messages(record) == []
        metric.update(torch.tensor([1]), torch.tensor([1]))
        assert math.isnan(metric.compute()["tail"].item())
        metric.compute()
        metric.reset()
        metric.update(torch.tensor([0]), torch.tensor([0]))
        metric.compute()  # now medium is absent too: its own warning, tail's is not repeated
        metric.compute()
    messages = _messages(record)
    assert len(messages) == 2
    assert "None of the 1 tail classes has a target" in messages[0]
    assert "None of the 1 medium classes has a target" in messages[1]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        other = TailRecall([500, 50, 5])
        other.update(torch.tensor([0]), torch.tensor([0]))
        other.compute()
    assert len(_messages(record)) == 2  # a new instance warns again, for medium and for tail


# ----------------------------------------------------------------------------------------------- inputs
def test_ignore_index_drops_entries():
    logits, target = _random_problem(11)
    padded = target.clone()
    padded[::7] = -100
    out = tail_recall(logits, padded, COUNTS, ignore_index=-100)
    keep = (padded != -100).numpy()
    expected = _reference(logits.argmax(-1).numpy()[keep], target.numpy()[keep], COUNTS, _absolute_masks(COUNTS))
    _assert_matches(out, expected)


def test_ignore_index_inside_class_range_makes_that_class_absent():
    out = tail_recall(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 2]), [300, 50, 5], ignore_index=1)
    assert math.isnan(out["per_class"][1].item()) and math.isnan(out["medium"].item())
    assert out["per_class"][0].item() == 0.5


def test_extra_dimensions_are_flattened():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, 5, 6, generator=gen)
    target = torch.randint(0, 3, (4, 5, 6), generator=gen)
    out = tail_recall(logits, target, [300, 50, 5])
    flat = tail_recall(logits.movedim(1, -1).reshape(-1, 3), target.reshape(-1), [300, 50, 5])
    for key in out:
        torch.testing.assert_close(out[key], flat[key], equal_nan=True)


@pytest.mark.parametrize(
    ("class_counts", "match"),
    [
        ([[1, 2], [3, 4]], "one training count per class"),
        ([5], "at least 2"),
        ([5, -1, 3], r"non-negative.*classes \[1\]"),
        ([5, float("nan")], "finite"),
        ([5, float("inf")], "finite"),
        ([True, False], "real numbers"),
        ("abc", "1-D sequence with the training count"),
    ],
)
def test_invalid_class_counts(class_counts, match):
    with pytest.raises(ValueError, match=match):
        TailRecall(class_counts)
    with pytest.raises(ValueError, match=match):
        tail_recall(torch.tensor([0]), torch.tensor([0]), class_counts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "rank"}, "Expected argument `split` to be one of"),
        ({"many": -1}, "Expected argument `many`"),
        ({"few": float("nan")}, "Expected argument `few`"),
        ({"many": 10, "few": 20}, "few=20 and many=10"),
        ({"many": True}, "Expected argument `many`"),
        ({"tail_fraction": 0.0}, "Expected argument `tail_fraction`"),
        ({"head_fraction": 1.5}, "Expected argument `head_fraction`"),
        ({"tail_fraction": 0.6, "head_fraction": 0.6}, "<= 1"),
        ({"ignore_index": 1.5}, "Expected argument `ignore_index`"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TailRecall([300, 50, 5], **kwargs)


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [
        (torch.randn(4, 2), torch.tensor([0, 1, 2, 0]), r"preds.shape\[1\]` to be the number of classes, 3"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), r"shape \(N, C, \.\.\.\)"),
        (torch.tensor([0, 1]), torch.tensor([0, 1, 2]), "same shape as `target`"),
        (torch.tensor([0, 1, 2]), torch.tensor([0.0, 1.0, 2.0]), "integer tensor of class indices"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), r"class indices in \[0, 3\).*but got \[3\]"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, -1, 2]), r"but got \[-1\]"),
        (torch.tensor([0, 5, 2]), torch.tensor([0, 1, 2]), r"`preds` to hold class indices in \[0, 3\).*\[5\]"),
        (torch.tensor([True, False]), torch.tensor([0, 1]), "dtype torch.bool"),
        (torch.tensor(1), torch.tensor(1), "0-d"),
    ],
)
def test_invalid_tensors(preds, target, match):
    metric = TailRecall([300, 50, 5])
    with pytest.raises(RuntimeError, match=match):
        metric.update(preds, target)
    with pytest.raises(RuntimeError, match=match):
        tail_recall(preds, target, [300, 50, 5])


def test_ignored_positions_may_hold_out_of_range_predictions():
    out = tail_recall(torch.tensor([0, 9]), torch.tensor([0, -1]), [300, 50, 5], ignore_index=-1)
    assert out["per_class"][0].item() == 1.0


def test_non_tensor_input():
    with pytest.raises(ValueError, match="Expected argument `preds` to be a torch.Tensor"):
        tail_recall([0, 1], torch.tensor([0, 1]), [300, 50, 5])


# ----------------------------------------------------------------------------------------------- non-finite rows
NAN, INF = float("nan"), float("inf")


def test_non_finite_rows_are_wrong_for_every_class_not_the_arg_max_of_their_nan():
    counts = [300, 50, 10]
    target = torch.tensor([0, 0, 1, 2])
    logits = torch.tensor([[NAN, 0.0, 0.0], [INF, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]])
    with pytest.warns(UserWarning, match="2 of 4 prediction rows held NaN or inf"):
        out = tail_recall(logits, target, counts)
    # As if the two rows predicted a class that does not exist: false negatives of class 0, no false positive.
    assert out["per_class"].tolist() == [0.0, 1.0, 0.0]
    assert out["head"].item() == 0.0
    assert out["per_class_f1"].tolist() == pytest.approx([0.0, 2 / 3, 0.0])


def test_a_diverged_model_scores_zero_not_perfect_head_recall():
    target = torch.tensor([0, 0, 1, 2, 2])
    metric = TailRecall([300, 50, 10])
    metric.update(torch.full((5, 3), NAN), target)
    with pytest.warns(UserWarning, match="5 of 5 prediction rows held NaN or inf"):
        out = metric.compute()
    assert out["per_class"].tolist() == [0.0, 0.0, 0.0]
    assert metric.fp.tolist() == [0, 0, 0] and metric.fn.tolist() == [2, 1, 2]
    # The warning is given once per instance, however often compute runs.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute()


def test_non_finite_positions_of_extra_dimensions_and_ignored_entries():
    # (N, C, L) logits: only the (sample, position) pairs with a non-finite value are affected.
    logits = torch.zeros(2, 3, 2)
    logits[:, 1] = 1.0  # every position predicts class 1
    logits[0, 2, 1] = NAN
    logits[1, 0, 1] = -INF
    target = torch.tensor([[1, 1], [1, -100]])  # the -inf position is ignored: it neither counts nor warns
    with pytest.warns(UserWarning, match="1 of 3 prediction rows"):
        out = tail_recall(logits, target, [300, 50, 10], ignore_index=-100)
    assert out["per_class"][1].item() == pytest.approx(2 / 3)
    metric = TailRecall([300, 50, 10], ignore_index=-100)
    metric.update(logits, target)
    assert int(metric.non_finite) == 1


def test_torchmetrics_macro_recall_drops_an_absent_class_only_while_it_is_never_predicted():
    # The README's comparison, checked against the installed torchmetrics.
    from torchmetrics.classification import MulticlassRecall

    counts, target = [300, 50, 10], torch.tensor([0, 0, 1, 1])  # class 2 never occurs
    for preds, torchmetrics_macro in ((torch.tensor([0, 0, 1, 0]), 0.75), (torch.tensor([0, 2, 1, 0]), 1 / 3)):
        ours = tail_recall(preds, target, counts)["macro"].item()
        theirs = MulticlassRecall(num_classes=3, average="macro")(preds, target).item()
        assert theirs == pytest.approx(torchmetrics_macro)
        assert ours == pytest.approx(0.75 if torchmetrics_macro == 0.75 else 0.5)
