"""Small fixtures shared by the tests: tiny datasets, a recording callback and a toy DataModule."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_balance import BalancedDataModule


class RecordIndices(pl.Callback):
    """Records the dataset indices of every training batch and the temperature in force."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []
        self.temperatures: list[float] = []

    def transform_train_batch(self, trainer, pl_module, batch, indices):
        self.steps.append(indices.cpu().tolist())
        self.temperatures.append(trainer.datamodule.current_temperature())
        return batch, indices


class DomainDataset(Dataset):
    """``(x, y, domain)`` samples where the domain is independent of the label."""

    def __init__(self, domain_sizes: list[int], num_classes: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.groups = torch.from_numpy(rng.permutation(np.repeat(np.arange(len(domain_sizes)), domain_sizes)))
        n = len(self.groups)
        self.x = torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32))
        self.y = torch.from_numpy(rng.integers(0, num_classes, size=n))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.groups[i]


class ToyData(BalancedDataModule):
    """Long-tailed labels over ``sizes`` classes, 4 features; groups are the labels."""

    def __init__(self, sizes: tuple[int, ...] = (300, 60, 12, 4), **kwargs) -> None:
        super().__init__(**kwargs)
        self.sizes = sizes

    def setup(self, stage=None) -> None:
        g = torch.Generator().manual_seed(0)
        y = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        y = y[torch.randperm(len(y), generator=g)]
        x = torch.randn(len(y), 4, generator=g) + y[:, None].float()
        self.train_dataset = TensorDataset(x, y)
        self.val_dataset = TensorDataset(x[:64], y[:64])


class ToyModel(pl.LightningModule):
    """Linear classifier written the package's way: per-sample loss, reduced by `balanced_loss`."""

    def __init__(self, num_features: int = 4, num_classes: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(num_features, num_classes)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        from lightning_balance import balanced_loss

        losses = torch.nn.functional.cross_entropy(self(batch[0]), batch[1], reduction="none")
        return balanced_loss(self, losses)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def launch_script(script: str, out, devices: int, batch_size: int, *extra: str) -> list[dict]:
    """Run a training script (which Lightning's DDP launcher may re-execute) and read every rank's JSON result."""
    import json
    import os
    import subprocess
    import sys

    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, script, "--out", str(out), "--devices", str(devices), "--batch-size", str(batch_size),
         *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.load(open(out / f"rank{r}.json")) for r in range(devices)]
