"""Loss-side baselines against hand-written references of their formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_balance import BalancedDataModule, balanced_cross_entropy
from lightning_balance.losses import (
    class_balanced_weights,
    class_priors,
    logit_adjusted_cross_entropy,
    posthoc_logit_adjustment,
)
from tests.helpers import DomainDataset, ToyData, ToyModel, trainer


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_match_cui_et_al(beta):
    counts = [5000, 500, 50, 5, 0]
    raw = [(1 - beta) / (1 - beta**n) if n > 0 else 0.0 for n in counts] if beta > 0 else [1, 1, 1, 1, 0]
    expected = np.array(raw) * 4 / sum(raw)
    np.testing.assert_allclose(class_balanced_weights(counts, beta).numpy(), expected, rtol=1e-9)


def test_logit_adjustment_matches_its_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 3, 0])
    priors = class_priors([60, 25, 10, 5])
    for tau in (0.5, 1.0, 2.0):
        adjusted = logits + tau * torch.log(priors)
        reference = -torch.log_softmax(adjusted, dim=1)[torch.arange(6), target]
        torch.testing.assert_close(logit_adjusted_cross_entropy(logits, target, priors, tau), reference)
        torch.testing.assert_close(posthoc_logit_adjustment(logits, priors, tau), logits - tau * torch.log(priors))


@pytest.mark.parametrize("call,match", [
    (lambda: class_balanced_weights([3, 4], beta=1.0), "beta"),
    (lambda: logit_adjusted_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), torch.ones(2) / 2, tau=-1), "tau"),
    (lambda: ToyData(strategy="drw", drw_start=1.5), "drw_start"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


class _CEModel(ToyModel):
    def __init__(self):
        super().__init__()
        self.losses = []
        self.weights = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = balanced_cross_entropy(self, self(x), y)
        self.losses.append((self(x).detach(), y, float(loss)))
        self.weights.append(self.trainer.datamodule.loss_weights().clone())
        return loss


def test_class_balanced_strategy_weights_the_loss():
    dm = ToyData(strategy="class_balanced", beta=0.99, batch_size=8)
    model = _CEModel()
    trainer(max_steps=3).fit(model, dm)
    w = class_balanced_weights(dm.group_counts, 0.99)
    for logits, y, loss in model.losses:
        per_sample = F.cross_entropy(logits, y, reduction="none").double()
        assert loss == pytest.approx(float((per_sample * w[y]).mean()), rel=1e-4)


def test_drw_switches_the_weights_on_late():
    dm = ToyData(strategy="drw", beta=0.99, drw_start=0.5, batch_size=8)
    model = _CEModel()
    trainer(max_steps=10).fit(model, dm)
    ones = [bool(torch.all(w == 1)) for w in model.weights]
    assert ones == [True] * 5 + [False] * 5


def test_logit_adjust_trains_on_the_adjusted_loss_and_posthoc_adjusts_predictions():
    dm = ToyData(strategy="logit_adjust", tau=1.0, batch_size=8)
    model = _CEModel()
    trainer(max_steps=3).fit(model, dm)
    priors = class_priors(dm.group_counts)
    for logits, y, loss in model.losses:
        assert loss == pytest.approx(float(logit_adjusted_cross_entropy(logits, y, priors).mean()), rel=1e-4)
    posthoc = ToyData(strategy="logit_adjust_posthoc", tau=1.0)
    posthoc.setup()
    logits = torch.zeros(1, 4)
    assert int(posthoc.prediction_logits(logits).argmax()) == 3  # the rarest class wins a tie
    assert torch.equal(dm.prediction_logits(logits), logits)


def test_class_baselines_refuse_groups_that_are_not_the_labels():
    class Domains(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DomainDataset([400, 40, 4])

    dm = Domains(strategy="class_balanced", batch_size=8)
    dm.setup()
    with pytest.raises(ValueError, match="groups must be the class labels"):
        dm.train_dataloader()


def test_class_balanced_at_beta_zero_is_the_plain_mean():
    dm = ToyData(strategy="class_balanced", beta=0.0, batch_size=8)
    dm.setup()
    assert torch.allclose(dm.loss_weights(), torch.ones(4, dtype=torch.float64))
    assert math.isclose(float(class_balanced_weights([1, 2], 0.0).sum()), 2.0)
