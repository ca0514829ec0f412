r"""
Reference model
^^^^^^^^^^^^^^^

A small MLP classifier written the way the package expects a LightningModule to be written: its training loss
is :func:`~lightning_balance.balanced_cross_entropy` of its logits (the per-sample cross-entropy reduced with the
weights in force, or the logit-adjusted loss under ``strategy="logit_adjust"``), so one module trains under every
strategy. Its validation loss goes through :func:`~lightning_balance.balanced_loss` too, so that a mixing policy
that decides from validation losses (:class:`~lightning_balance.policies.OverfitGuard`) sees them per group. It
also defines the two optional hooks that batch selection uses: ``per_sample_loss(batch)`` and ``embed(batch)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from lightning_balance.datamodule import balanced_cross_entropy, balanced_loss

__all__ = ["MLPClassifier"]


class MLPClassifier(LightningModule):
    """A two-layer perceptron for ``(x, y)`` batches.

    Args:
        num_features: input features.
        num_classes: output classes.
        hidden: hidden units.
        lr: learning rate of plain SGD with momentum 0.9.
        weight_decay: L2 penalty.

    Example:
        >>> model = MLPClassifier(num_features=4, num_classes=3)
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        num_features: int = 64,
        num_classes: int = 10,
        hidden: int = 64,
        lr: float = 0.05,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))

    def embed(self, batch: Any) -> torch.Tensor:
        """The hidden representation of the batch's inputs, ``[B, hidden]``."""
        return self.body(batch[0].flatten(1))

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        """Cross-entropy of every sample, ``[B]``."""
        x, y = batch[0], batch[1]
        return F.cross_entropy(self(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        loss = balanced_cross_entropy(self, self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        # Outside training `balanced_loss` is the plain mean; through it a mixing policy sees the loss of every group.
        self.log("val/loss", balanced_loss(self, F.cross_entropy(logits, y, reduction="none")), prog_bar=True)
        return {"preds": logits, "target": y}

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=self.hparams["lr"], momentum=0.9, weight_decay=self.hparams["weight_decay"]
        )
