"""Train the toy model with adaptive mixing and write, per rank, the batches and the probability history.

Run by ``tests/test_adaptive_mixing.py`` in a subprocess (Lightning's DDP launcher re-executes this script).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import lightning.pytorch as pl  # noqa: E402

from lightning_balance import AdaptiveMixing  # noqa: E402
from lightning_balance.policies import OnlineMixing  # noqa: E402
from tests.helpers import RecordIndices, ToyData, ToyModel, trainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--devices", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--save-every", type=int, default=0)
parser.add_argument("--slow-after", type=int, default=0, help="sleep after this step so a test can kill the run")
parser.add_argument("--resume", default=None)
args = parser.parse_args()


class Slow(pl.Callback):
    def on_train_batch_end(self, trainer, *rest):
        if args.slow_after and trainer.global_step >= args.slow_after:
            time.sleep(0.5)


pl.seed_everything(0, verbose=False)
dm = ToyData(strategy="upsample", temperature=1.0, batch_size=args.batch_size, samples_per_epoch=320, seed=3,
             order="stratified")
recorder = RecordIndices()
mixing = AdaptiveMixing(OnlineMixing(scale=5.0), every_n_steps=4)
callbacks = [recorder, mixing, Slow()]
if args.save_every:
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks.append(ModelCheckpoint(dirpath=args.out, every_n_train_steps=args.save_every, save_top_k=-1))
fit = trainer(devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", callbacks=callbacks,
              enable_checkpointing=bool(args.save_every), max_steps=40)
fit.fit(ToyModel(), dm, ckpt_path=args.resume)
with open(os.path.join(args.out, f"rank{fit.global_rank}.json"), "w") as f:
    json.dump({"steps": recorder.steps, "history": mixing.history}, f)
