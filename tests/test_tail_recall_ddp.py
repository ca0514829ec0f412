"""TailRecall across two gloo processes on CPU equals the single-process result on the same samples."""

import csv
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from sklearn.metrics import f1_score, recall_score
from torch.utils.data import DataLoader, TensorDataset

from lightning_balance.callbacks import TailRecallMonitor
from lightning_balance.functional.tail_recall import tail_recall
from lightning_balance.tail_recall import TailRecall

pytestmark = pytest.mark.ddp

WORLD_SIZE = 2
COUNTS = [900, 400, 150, 100, 60, 35, 20, 19, 12, 7, 3, 0]
IGNORE = -100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data():
    """Skewed targets with padding; class 10 only occurs in rank 1's shard, class 11 nowhere."""
    gen = torch.Generator().manual_seed(0)
    n = 301
    probs = torch.linspace(3, 1, 12).exp()
    probs[[10, 11]] = 0
    target = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=gen)
    target[[250, 260, 270]] = 10
    target[::13] = IGNORE
    logits = torch.randn(n, 12, generator=gen)
    rows = torch.arange(n)[target != IGNORE]
    logits[rows, target[rows]] += 1.5
    return logits, target


def _shards(rank: int, logits, target):
    # Uneven shards on purpose: an exact reduction must not depend on equal sizes.
    cut = 120
    return (logits[:cut], target[:cut]) if rank == 0 else (logits[cut:], target[cut:])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        logits, target = _data()
        my_logits, my_target = _shards(rank, logits, target)
        results = {}
        for split in ("absolute", "quantile"):
            metric = TailRecall(COUNTS, split=split, ignore_index=IGNORE)
            for chunk_logits, chunk_target in zip(my_logits.split(50), my_target.split(50), strict=True):
                metric.update(chunk_logits, chunk_target)
            distributed = metric.compute()
            single = tail_recall(logits, target, COUNTS, split=split, ignore_index=IGNORE)
            for key in single:
                # Count states summed over ranks: bit-for-bit the single-process result.
                torch.testing.assert_close(distributed[key], single[key], rtol=0, atol=0, equal_nan=True)
            # compute() must not leave the local states summed: the next epoch starts from local counts again.
            local = TailRecall(COUNTS, split=split, ignore_index=IGNORE)
            local.update(my_logits, my_target)
            assert torch.equal(metric.tp, local.tp)
            results[split] = {key: value.clone() for key, value in distributed.items()}
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_result_equals_single_process_and_sklearn(tmp_path):
    # mp.spawn's API with fork: the children inherit the imported modules instead of importing them again,
    # which takes seconds; nothing here touches a GPU, so forking is safe.
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True, start_method="fork")
    results = torch.load(tmp_path / "results.pt")
    logits, target = _data()
    keep = target != IGNORE
    y_true, y_pred = target[keep].numpy(), logits.argmax(-1)[keep].numpy()
    labels = list(range(12))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = np.bincount(y_true, minlength=12) > 0
    assert present[10] and not present[11]
    counts = np.array(COUNTS)
    masks = {"head": counts > 100, "medium": (counts >= 20) & (counts <= 100), "tail": counts < 20}
    absolute = results["absolute"]
    for name, mask in masks.items():
        assert absolute[name].item() == pytest.approx(recall[mask & present].mean(), rel=1e-6)
        assert absolute[f"f1_{name}"].item() == pytest.approx(f1[mask & present].mean(), rel=1e-6)
    assert absolute["macro"].item() == pytest.approx(recall[present].mean(), rel=1e-6)
    assert absolute["worst"].item() == pytest.approx(recall[present].min(), rel=1e-6)
    np.testing.assert_allclose(absolute["per_class"][present].numpy(), recall[present], rtol=1e-6)
    assert math.isnan(absolute["per_class"][11].item()) and math.isnan(absolute["per_class_f1"][11].item())


# ----------------------------------------------------------------------------------------------- through the Trainer
NUM_CLASSES = 4
VAL_COUNTS = [300, 60, 10, 4]


def _val_data():
    gen = torch.Generator().manual_seed(1)
    # 64 samples: 2 ranks x 4 batches of 8, so the distributed sampler repeats none of them.
    target = torch.tensor([0] * 30 + [1] * 20 + [2] * 14)
    x = torch.randn(64, 3, generator=gen) + target[:, None].float()
    return x, target


class _DDPModel(LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, NUM_CLASSES)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, y), "preds": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*_val_data()), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*_val_data()), batch_size=8)


def test_monitor_under_ddp_logs_the_global_values(tmp_path):
    model = _DDPModel()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        callbacks=[TailRecallMonitor(class_counts=VAL_COUNTS)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model)
    # The launcher copies rank 0's trained weights back to this process.
    x, target = _val_data()
    with torch.no_grad():
        expected = tail_recall(model(x), target, VAL_COUNTS)
    (metrics_file,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")  # written by rank 0
    with open(metrics_file) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/recall_macro")]
    assert len(rows) == 1
    row = rows[0]
    for name in ("head", "medium", "tail", "macro", "worst"):
        assert float(row[f"val/recall_{name}"]) == pytest.approx(expected[name].item(), rel=1e-5)
        assert float(row[f"val/f1_{name}"]) == pytest.approx(expected[f"f1_{name}"].item(), rel=1e-5)
