"""Train on LitData shards as ``train_sources`` under DDP; write, per rank, what every training batch held.

Run by ``tests/test_sources.py`` in a subprocess (Lightning's DDP launcher re-executes this script for the other
ranks). ``--data`` holds one folder written by ``litdata.optimize`` per group.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no PyPI look-up when a dataset is built
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import litdata  # noqa: E402
import torch  # noqa: E402

from lightning_balance import Cooldown  # noqa: E402
from lightning_balance.sources import map_style_sources  # noqa: E402
from tests.helpers import ToyModel, trainer  # noqa: E402
from tests.test_sources import NAMES, SIZES, RecordItems, SourcesData  # noqa: E402

torch.set_num_threads(1)
parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--devices", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=6)
parser.add_argument("--max-steps", type=int, default=16)
args = parser.parse_args()


def sources():
    # Built in setup(), after the process group exists: a raw StreamingDataset would report this rank's share.
    return map_style_sources({name: litdata.StreamingDataset(os.path.join(args.data, name)) for name in NAMES})


dm = SourcesData(sources, strategy="upsample", temperature=Cooldown(5.0, 1.0, 0.5), batch_size=args.batch_size,
                 samples_per_epoch=48, seed=7)
recorder = RecordItems()
torch.manual_seed(0)
fit_trainer = trainer(devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", callbacks=[recorder],
                      max_steps=args.max_steps)
fit_trainer.fit(ToyModel(num_features=2, num_classes=len(SIZES)), dm)
with open(os.path.join(args.out, f"rank{fit_trainer.global_rank}.json"), "w") as f:
    json.dump({
        "steps": recorder.steps,
        "items": recorder.items,
        "temperatures": recorder.temperatures,
        "group_counts": dm.group_counts.tolist(),
        "world_size": fit_trainer.world_size,
    }, f)
