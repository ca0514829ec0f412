"""Train the toy model under DDP and write, per rank, the dataset indices of every training batch.

Run by ``tests/test_ddp.py`` in a subprocess: Lightning's DDP launcher re-executes this script for the other
ranks, which would re-run a whole pytest session if launched from inside one.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import lightning.pytorch as pl  # noqa: E402

from lightning_balance import Cooldown, MixtureSampler  # noqa: E402
from tests.helpers import RecordIndices, ToyData, ToyModel, trainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--devices", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--max-steps", type=int, default=-1)
parser.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps into --out")
parser.add_argument("--resume", default=None, help="checkpoint to resume from")
args = parser.parse_args()

pl.seed_everything(0, verbose=False)
dm = ToyData(strategy="upsample", temperature=Cooldown(5.0, 1.0, 0.5), batch_size=args.batch_size,
             samples_per_epoch=320, seed=2)
recorder = RecordIndices()
callbacks = [recorder]
if args.save_every:
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks.append(ModelCheckpoint(dirpath=args.out, every_n_train_steps=args.save_every, save_top_k=-1))
strategy = "ddp" if args.devices > 1 else "auto"
limits = dict(max_steps=args.max_steps, max_epochs=-1) if args.max_steps > 0 else dict(max_epochs=3)
fit_trainer = trainer(devices=args.devices, strategy=strategy, callbacks=callbacks,
                      enable_checkpointing=bool(args.save_every), **limits)
fit_trainer.fit(ToyModel(), dm, ckpt_path=args.resume)
loader = fit_trainer.train_dataloader
with open(os.path.join(args.out, f"rank{fit_trainer.global_rank}.json"), "w") as f:
    json.dump({
        "steps": recorder.steps,
        "temperatures": recorder.temperatures,
        "sampler_is_ours": loader.sampler is dm.sampler,
        "sampler_type": type(loader.sampler).__name__,
        "sampler_is_mixture": isinstance(loader.sampler, MixtureSampler),
        "world_size": fit_trainer.world_size,
    }, f)
