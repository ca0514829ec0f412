"""The tail metric's counts come from torchmetrics' multiclass stat scores where the confusion matrix is small,
and equal the bincount path everywhere (NaN rows included)."""

import importlib

import pytest
import torch

tail_recall_module = importlib.import_module("lightning_balance.functional.tail_recall")


@pytest.mark.parametrize("num_classes", [2, 10, 300])
@pytest.mark.parametrize("n", [0, 1, 64, 3000])
def test_stat_scores_and_bincounts_count_the_same(num_classes, n):
    g = torch.Generator().manual_seed(num_classes * 1000 + n)
    preds = torch.randint(-1, num_classes, (n,), generator=g)  # -1: a row of NaN logits, predicting no class
    target = torch.randint(0, num_classes, (n,), generator=g)
    fast = tail_recall_module._tail_recall_update(preds, target, num_classes)
    plain = tail_recall_module._bincount_update(preds, target, num_classes)
    for a, b in zip(fast, plain, strict=True):
        assert a.dtype == torch.int64 and torch.equal(a, b)
    tp, fp, fn = fast
    # every target is a hit or a miss of its class; every prediction of a class is a hit or a false alarm
    assert int((tp + fn).sum()) == n and int((tp + fp).sum()) == int((preds >= 0).sum())


def test_no_prediction_rows_are_misses_of_their_target():
    preds = torch.tensor([0, -1, -1, 1])
    target = torch.tensor([0, 1, 1, 1])
    tp, fp, fn = tail_recall_module._tail_recall_update(preds, target, 2)
    assert tp.tolist() == [1, 1] and fp.tolist() == [0, 0] and fn.tolist() == [0, 2]


def test_torchmetrics_counts_small_problems_and_bincounts_large_ones(monkeypatch):
    stat_scores = importlib.import_module("torchmetrics.functional.classification.stat_scores")
    calls = []
    original = stat_scores._multiclass_stat_scores_update

    def spy(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(stat_scores, "_multiclass_stat_scores_update", spy)
    preds, target = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
    tail_recall_module._tail_recall_update(preds, target, 10)
    assert calls == [10]
    big = tail_recall_module.STAT_SCORES_MAX_CLASSES + 1
    tail_recall_module._tail_recall_update(preds, target, big)
    assert calls == [10]  # a C x C matrix of that size is not built
