"""The README's three steps as one script: subclass the DataModule, reduce a per-sample loss, pick a strategy.

Run it with ``python examples/quickstart.py``; the test suite runs it too.
"""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_balance import BalancedDataModule, Cooldown, TailRecallMonitor, balanced_loss


class MyData(BalancedDataModule):
    """Four classes of 700, 200, 70 and 30 examples; the groups are the labels."""

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        y = torch.repeat_interleave(torch.arange(4), torch.tensor([700, 200, 70, 30]))
        x = torch.randn(len(y), 16, generator=g) + 2 * F.one_hot(y, 16).float()
        self.train_dataset = TensorDataset(x, y)
        val_y = torch.arange(4).repeat(50)
        self.val_dataset = TensorDataset(torch.randn(200, 16, generator=g) + 2 * F.one_hot(val_y, 16).float(), val_y)


class MyModel(pl.LightningModule):
    """A linear classifier that reduces its per-sample loss with `balanced_loss`."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        return balanced_loss(self, losses)  # plain mean, or weighted under strategy="upweight"

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"preds": self(x), "target": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    for data in (
        MyData(strategy="natural"),
        MyData(strategy="upsample", temperature=5.0),
        MyData(strategy="upweight", temperature=5.0),
        MyData(strategy="upsample", temperature=Cooldown(5.0, 1.0, 0.5)),
    ):
        pl.seed_everything(0, verbose=False)
        monitor = TailRecallMonitor(few=50, many=300)
        trainer = pl.Trainer(
            max_epochs=3, accelerator="cpu", callbacks=[monitor], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.fit(MyModel(), data)
        metrics = trainer.callback_metrics
        print(f"{data.strategy:>8} T={data.temperature}: tail recall {float(metrics['val/recall_tail']):.3f},"
              f" head recall {float(metrics['val/recall_head']):.3f}")
