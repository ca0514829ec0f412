"""Train the toy model under upweighting and write, per rank, the final parameters and the batches' weight sums.

Run by ``tests/test_weights_ddp.py`` in a subprocess: Lightning's DDP launcher re-executes this script for the other
ranks, which would re-run a whole pytest session if launched from inside one.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from tests.helpers import ToyData, ToyModel, trainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--devices", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--normalize", default="weights")
parser.add_argument("--max-steps", type=int, default=20)
args = parser.parse_args()


class RecordWeightSums(ToyModel):
    """The toy model, recording the sum of this rank's loss weights in every training step."""

    def __init__(self) -> None:
        super().__init__(lr=0.5)
        self.weight_sums: list[float] = []
        self.indices: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        dm = self.trainer.datamodule
        self.weight_sums.append(float(dm.loss_weights()[dm._batch_groups.cpu()].sum()))
        return super().training_step(batch, batch_idx)


torch.set_num_threads(1)
pl.seed_everything(0, verbose=False)
dm = ToyData(strategy="upweight", temperature=5.0, batch_size=args.batch_size, samples_per_epoch=320, seed=2,
             normalize=args.normalize)
torch.manual_seed(0)
model = RecordWeightSums()
strategy = "ddp" if args.devices > 1 else "auto"
fit_trainer = trainer(devices=args.devices, strategy=strategy, max_steps=args.max_steps, max_epochs=-1)
fit_trainer.fit(model, dm)
with open(os.path.join(args.out, f"rank{fit_trainer.global_rank}.json"), "w") as f:
    json.dump({
        "parameters": {name: p.detach().cpu().flatten().tolist() for name, p in model.named_parameters()},
        "weight_sums": model.weight_sums,
        "world_size": fit_trainer.world_size,
        "global_step": fit_trainer.global_step,
    }, f)
