"""A many-language mixture from LitData shards, upsampled with Cooldown, on one process or under DDP.

Six "languages" of very different sizes are written as LitData shards (``litdata.optimize``, one folder per
language) into a temporary folder; a :class:`~lightning_balance.BalancedDataModule` reads one
``StreamingDataset`` per language as its ``train_sources``, and a linear model learns to tell the languages apart
under ``Cooldown(5.0, 1.0, 0.5)``. The script prints the temperature before and after the switch, and every
language's draws and passes over its data (``dm.epochs_per_group()``) at the switch and at the end.

    python examples/scale_litdata.py                            # one CPU process
    python examples/scale_litdata.py --devices 2 --strategy ddp # two CPU processes (gloo)

See docs/scale.md. The test suite runs it (tests/test_examples_scale.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile

# LitData asks PyPI for a newer release whenever a dataset is built or written; this example runs offline.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

import lightning.pytorch as pl  # noqa: E402
import litdata  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_balance import BalancedDataModule, Cooldown, balanced_loss  # noqa: E402
from lightning_balance.sources import map_style_sources  # noqa: E402

LANGUAGES = {"en": 3000, "de": 1200, "hi": 400, "sw": 120, "yo": 40, "zu": 12}
DIM = 8
# Where the shards are: the ranks that DDP's launcher starts inherit the environment and reuse rank 0's shards.
SHARDS_ENV = "LIGHTNING_BALANCE_EXAMPLE_SHARDS"


def _example(language: int, features: np.ndarray, i: int) -> dict:
    return {"language": language, "id": i, "x": features[i]}


def write_shards(root: str) -> None:
    """One folder of LitData chunks per language: ``x`` near the language's centre, its id, its position."""
    centres = np.random.default_rng(0).normal(size=(len(LANGUAGES), DIM)).astype(np.float32)
    for g, (name, n) in enumerate(LANGUAGES.items()):
        out = os.path.join(root, name)
        if os.path.exists(os.path.join(out, "index.json")):
            continue
        noise = np.random.default_rng(1 + g).normal(size=(n, DIM)).astype(np.float32)
        features = centres[g] + 1.5 * noise
        # "fork" starts the writer without re-importing torch (a spawned one takes seconds per language).
        litdata.optimize(fn=functools.partial(_example, g, features), inputs=list(range(n)), output_dir=out,
                         chunk_bytes="64KB", num_workers=1, start_method="fork", verbose=False)


def collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """LitData's dict items into ``(features, language id)`` tensors."""
    x = torch.from_numpy(np.stack([item["x"] for item in items]))
    return x, torch.tensor([int(item["language"]) for item in items])


class LanguageShards(BalancedDataModule):
    """One LitData ``StreamingDataset`` per language as ``train_sources``: nothing is kept per example."""

    def __init__(self, root: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.collate_fn = collate

    def setup(self, stage=None) -> None:
        # map_style: a StreamingDataset's len() is this rank's share under DDP; the source's is the whole folder.
        self.train_sources = map_style_sources(
            {name: litdata.StreamingDataset(os.path.join(self.root, name)) for name in LANGUAGES}
        )


class LanguageModel(pl.LightningModule):
    """A linear classifier of the languages, its per-sample loss reduced by ``balanced_loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(DIM, len(LANGUAGES))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return balanced_loss(self, F.cross_entropy(self.net(x), y, reduction="none"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Snapshots(pl.Callback):
    """The temperature of every step; draws and passes per language at the switch and at the end."""

    def __init__(self) -> None:
        self.temperatures: list[float] = []
        self.snapshots: dict[str, tuple[int, list[int], list[float]]] = {}

    def _snapshot(self, dm: BalancedDataModule, name: str, step: int) -> None:
        position = dm.trained_samples()
        draws = dm.mixture().counts(position).tolist()
        self.snapshots[name] = (step, draws, dm.epochs_per_group().tolist())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        dm = trainer.datamodule
        temperature = dm.current_temperature()
        if self.temperatures and temperature != self.temperatures[-1]:
            self._snapshot(dm, "switch", trainer.global_step)
        self.temperatures.append(temperature)

    def on_train_end(self, trainer, pl_module) -> None:
        self._snapshot(trainer.datamodule, "end", trainer.global_step)


def main() -> None:
    """Write the shards, train under Cooldown, print the temperatures and every language's draws and passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1, help="CPU processes")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp with --devices 2")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="per-process batch size")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--shards", default=None, help="folder for the shards (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = args.shards or os.environ.get(SHARDS_ENV)
    owned = None
    if root is None:
        owned = tempfile.TemporaryDirectory(prefix="scale_litdata-")
        root = owned.name
        os.environ[SHARDS_ENV] = root
    write_shards(root)

    pl.seed_everything(0, verbose=False)
    schedule = Cooldown(5.0, 1.0, 0.5)
    dm = LanguageShards(root, strategy="upsample", temperature=schedule, batch_size=args.batch_size, seed=0,
                        num_workers=args.num_workers)
    snapshots = Snapshots()
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, max_steps=args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[snapshots],
    )
    trainer.fit(LanguageModel(), dm)

    if trainer.is_global_zero:
        sizes = dm.group_counts.tolist()
        mixture = dm.mixture()
        print(f"{len(sizes)} languages, {sum(sizes)} examples in LitData shards under {root}")
        print(f"{schedule!r} over {args.steps} optimizer steps, global batch {mixture.step_size}"
              f" ({trainer.world_size} process(es) x {args.batch_size})")
        temps = snapshots.temperatures
        switch = next(step for step in range(1, len(temps)) if temps[step] != temps[step - 1])
        print(f"temperature before the switch: {temps[switch - 1]} (steps 0-{switch - 1});"
              f" after: {temps[switch]} (steps {switch}-{len(temps) - 1})")
        (at_switch, draws_switch, epochs_switch), (at_end, draws_end, epochs_end) = (
            snapshots.snapshots["switch"], snapshots.snapshots["end"])
        print(f"{'language':<9}{'examples':>9}{'draws@' + str(at_switch):>11}{'epochs@' + str(at_switch):>11}"
              f"{'draws@' + str(at_end):>11}{'epochs@' + str(at_end):>11}")
        for name, n, d1, e1, d2, e2 in zip(dm.group_names, sizes, draws_switch, epochs_switch, draws_end,
                                           epochs_end, strict=True):
            print(f"{name:<9}{n:>9}{d1:>11}{e1:>11.3f}{d2:>11}{e2:>11.3f}")
        # Every language's draws run through whole passes over its data, across the switch: the d-th draw of a
        # language is example perm_pass(d mod n), so nothing is skipped or repeated within a pass.
        indices = mixture.indices(0, dm.trained_samples()).numpy()
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        whole_passes = True
        for g, n in enumerate(sizes):
            local = indices[(indices >= offsets[g]) & (indices < offsets[g + 1])] - offsets[g]
            for start in range(0, len(local), n):
                block = local[start : start + n]
                whole_passes &= len(np.unique(block)) == len(block)
        print(f"no example repeated before its language's pass was complete: {bool(whole_passes)}")
    trainer.strategy.barrier()
    if owned is not None:
        owned.cleanup()


if __name__ == "__main__":
    main()
