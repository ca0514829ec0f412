"""Train the toy model with SALN under DDP and write, per rank, the samples trained on at every step.

Run by ``tests/test_saln_ddp.py`` in a subprocess: Lightning's DDP launcher re-executes this script for the
other ranks, which would re-run a whole pytest session if launched from inside one.

``--mode keep`` keeps a scheduled fraction of every batch; ``--mode super_batch`` trains on ``--kept`` samples of
every batch (the rank's super-batch) with a frozen extractor's features, cached and saved in a checkpoint written
to ``--out`` at the end.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_balance import LinearRamp  # noqa: E402
from lightning_balance.callbacks import SALN  # noqa: E402
from tests.helpers import ToyData, ToyModel, trainer  # noqa: E402


class RecordingModel(ToyModel):
    """Records the global step and the dataset rows of every training batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict] = []

    def embed(self, batch):
        return self.layer(batch[0])

    def training_step(self, batch, batch_idx):
        self.steps.append({"global_step": self.global_step, "size": len(batch[0]), "x": batch[0].tolist()})
        return super().training_step(batch, batch_idx)


class Record(pl.Callback):
    """The indices and inputs of every batch as the callbacks around SALN see them."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def transform_train_batch(self, trainer, pl_module, batch, indices):
        self.steps.append({"indices": indices.cpu().tolist(), "x": batch[0].tolist()})
        return batch, indices


def extractor() -> nn.Module:
    torch.manual_seed(7)  # the same frozen weights on every rank
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--features", default="inputs")
    parser.add_argument("--mode", default="keep", choices=["keep", "super_batch"])
    parser.add_argument("--kept", type=int, default=5)
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    dm = ToyData(strategy="upsample", temperature=5.0, batch_size=12, samples_per_epoch=240, seed=2)
    if args.mode == "keep":
        saln = SALN(keep=LinearRamp(start=1.0, end=0.3), features=args.features, protect_groups_below=20)
    else:
        saln = SALN(batch_size=args.kept, features=extractor(), save_cache=True)
    before, after = Record(), Record()
    model = RecordingModel()
    fit_trainer = trainer(devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", max_epochs=2,
                          callbacks=[before, saln, after])
    fit_trainer.fit(model, dm)
    if args.mode == "super_batch":
        # Every rank takes part (the cache tables are merged across ranks); rank 0 writes the file.
        fit_trainer.save_checkpoint(os.path.join(args.out, "last.ckpt"))
    with open(os.path.join(args.out, f"rank{fit_trainer.global_rank}.json"), "w") as f:
        json.dump({"steps": model.steps, "world_size": fit_trainer.world_size, "seen": saln.samples_seen,
                   "kept": saln.samples_kept, "before": before.steps, "after": after.steps}, f)
