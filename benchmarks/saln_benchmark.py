"""SALN: what spectral scoring costs, which spectral variant selects best, the Fiedler solvers, and whether selection
saves training time.

Five parts, each writing ``saln_<part>.json`` and ``saln_<part>.png`` to ``benchmarks/results`` and all of them
summarised in ``saln.md``:

``cost``
    ``spectral_scores`` on 1,000 batches of ``B`` = 64, 256, 1024 samples with ``D`` = 512 features, as one
    batched call per chunk of batches, against the training step (forward, backward, SGD update) of a small
    MLP (512-256-10) on the same batches. Reported per batch and as scoring time / step time. Runs on CUDA too
    when it is available (timed with synchronisation).
``variants``
    The open spectral details, decided on the long-tailed digits (``LongTailDigits``, IF = 100) by a coordinate
    search from (magnitude score, normalised Laplacian, clamp, raw inputs): every option of one factor with the
    others at their best so far, in the order score, Laplacian, negative similarities, features. Every run keeps
    half of each batch of 32 for 60 epochs; 3 seeds; final balanced validation accuracy and tail recall (classes
    with fewer than 20 training samples). Baselines at the same keep: random, loss top-k, RHO-LOSS, and the tail
    guard on the chosen variant, the starting one and random keep.
``efficiency``
    On long-tailed digits and a long-tailed breast-cancer set (scikit-learn's, IF = 20), full data against SALN
    (the defaults), random keep and loss keep, 3 seeds: optimizer steps, samples back-propagated and training
    time until the validation accuracy (and the tail recall) first reaches the full-data model's final value.
``solver``
    The Fiedler solvers (``eigh``, ``subspace``, ``lobpcg``) and the whole of ``spectral_scores`` (today's
    ``solver="auto"`` against the legacy eigh path, the code as it was before the iterative solvers) from B = 64
    to 1024, D = 512, every method timed in turn within each repeat (one CPU thread); and how often the kept half
    of realistic batches (Gaussian mixtures of 3 to 30 clusters, the digits raw and through a ReLU layer,
    MNIST-1D) is exactly ``eigh``'s, with float32 ``eigh`` against float64 ``eigh`` as the noise floor.
``tta``
    Time to the full-data accuracy on long-tailed MNIST-1D with a 256-channel 1-D CNN as the learner: full
    data, random keep, loss keep, Selective Backprop, RHO-LOSS, JEST, SALN (cached features of a frozen 1-D CNN
    trained on a balanced holdout, which is also the reference model) and SALN with the tail guard. The kept
    fraction is tuned per method on a tune split (one seed); times are reported on a report split (3 other
    seeds) with paired t intervals of the speed-up (scipy.stats), in wall and in CPU time.

Run ``python benchmarks/saln_benchmark.py`` for everything (about 25 minutes on 2 shared CPU cores; ``tta`` alone
about 8 to 10, ``solver`` about 3 to 5), ``--parts solver tta`` for some parts, ``--parts`` alone to rewrite the
summary from the saved JSON, or ``--quick`` for a smoke run that writes to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from lightning_balance import BalancedDataModule  # noqa: E402
from lightning_balance.callbacks import SALN  # noqa: E402
from lightning_balance.datasets import LongTailDigits, long_tail_counts, long_tail_subset  # noqa: E402
from lightning_balance.functional import fiedler_vectors, spectral_scores, tail_recall  # noqa: E402
from lightning_balance.functional.fiedler import (  # noqa: E402
    AUTO_SUBSPACE_MIN_SIZE,
    _fiedler_eigh,
    resolve_fiedler_method,
)
from lightning_balance.functional.spectral import _score, _similarity  # noqa: E402
from lightning_balance.models import MLPClassifier  # noqa: E402
from lightning_balance.selection import keep_count, select_top_k  # noqa: E402

DEFAULT_OUT = HERE / "results"
PARTS = ("cost", "variants", "efficiency", "solver", "tta")
KEEP = 0.5
SEEDS = (0, 1, 2)
TAIL_BELOW = 20  # tail = fewer than 20 training samples (Kang et al.); the default of `tail_recall`
BASE = {"score": "magnitude", "laplacian": "normalized", "negative": "clamp", "features": "inputs"}

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock() -> float:
    """Training time: CPU time of this (single-threaded) process on CPU, so that other jobs on a shared machine do
    not inflate it; wall time when a GPU does the work (its kernels do not run on this process's CPU time)."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: Sequence[Optional[float]], digits: int = 3, scale: float = 1.0) -> str:
    reached = [v for v in values if v is not None and not math.isnan(v)]
    if not reached:
        return "not reached"
    mean, std = _mean_std([v * scale for v in reached])
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)})"


# ------------------------------------------------------------------------------------------------ cost part


def _clustered_batches(n: int, b: int, d: int, device: torch.device, seed: int) -> torch.Tensor:
    """Features with ten clusters, closer to real embeddings than isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=gen)
    labels = torch.randint(0, 10, (n, b), generator=gen)
    return (centres[labels] + 0.8 * torch.randn(n, b, d, generator=gen)).to(device)


def run_cost(num_batches: int, sizes: Sequence[int], dim: int, devices: Sequence[torch.device],
             budget_s: float = 90.0) -> list[dict]:
    """Scoring and MLP-step time per batch; a size stops early (and says so) once its scoring took ``budget_s``."""
    rows = []
    for device in devices:
        for b in sizes:
            # Chunks of batches bound the memory of the B x B matrices (about 200 MB per chunk). The fastest of
            # about 20 chunks is the time the work needs; slower chunks measure whatever else ran on the machine.
            chunk = max(1, min(max(num_batches // 20, 1), (50 * 2**20) // (b * b)))
            feats = _clustered_batches(chunk, b, dim, device, seed=b)
            spectral_scores(feats[:1])  # warm-up: kernels, allocator
            per_batch = []
            done = 0
            spent = 0.0
            while done < num_batches and spent < budget_s:
                n = min(chunk, num_batches - done)
                _sync(device)
                start = time.perf_counter()
                spectral_scores(feats[:n])
                _sync(device)
                per_batch.append((time.perf_counter() - start) / n)
                spent += per_batch[-1] * n
                done += n
            score_s = min(per_batch) * num_batches

            torch.manual_seed(0)
            mlp = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
            opt = torch.optim.SGD(mlp.parameters(), lr=0.01, momentum=0.9)
            targets = torch.randint(0, 10, (chunk, b), device=device)
            step_batches = min(num_batches, 200)  # a step costs the same every time; 200 are plenty to time it

            step = functools.partial(_mlp_step, mlp, opt, feats, targets)
            for i in range(5):
                step(i)
            per_step = []
            for block in range(0, step_batches, 10):
                _sync(device)
                start = time.perf_counter()
                for i in range(block, min(block + 10, step_batches)):
                    step(i)
                _sync(device)
                per_step.append((time.perf_counter() - start) / (min(block + 10, step_batches) - block))
            step_s = min(per_step) * num_batches
            rows.append({
                "device": str(device), "device_name": _device_name(device), "B": b, "D": dim,
                "batches": num_batches, "batches_scored": done, "chunk": chunk,
                "scoring_ms_per_batch": 1e3 * score_s / num_batches,
                "timing": "fastest chunk of batches (scoring) and fastest block of 10 steps (MLP), per batch",
                "step_ms_per_batch": 1e3 * step_s / num_batches, "scoring_over_step": score_s / step_s,
            })
            print(f"  cost {device} B={b}: scoring {rows[-1]['scoring_ms_per_batch']:.3f} ms/batch, step"
                  f" {rows[-1]['step_ms_per_batch']:.3f} ms/batch, ratio {rows[-1]['scoring_over_step']:.2f}")
    return rows


def _mlp_step(mlp: nn.Module, opt: torch.optim.Optimizer, feats: torch.Tensor, targets: torch.Tensor, i: int) -> None:
    loss = nn.functional.cross_entropy(mlp(feats[i % len(feats)]), targets[i % len(feats)])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------------ data


class TensorData(BalancedDataModule):
    """A BalancedDataModule over ready-made train/validation tensors."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._train, self._val = train, val

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = TensorDataset(*self._train)
            self.val_dataset = TensorDataset(*self._val)


class Task:
    """One long-tailed problem: train (long-tailed), validation (balanced), holdout (balanced, for references)."""

    def __init__(self, name: str, train, val, holdout, batch_size: int, epochs: int) -> None:
        self.name, self.train, self.val, self.holdout = name, train, val, holdout
        self.batch_size, self.epochs = batch_size, epochs
        self.num_features = train[0].shape[1]
        self.num_classes = int(max(train[1].max(), val[1].max())) + 1
        self.counts = torch.bincount(train[1], minlength=self.num_classes)

    def datamodule(self, seed: int) -> TensorData:
        return TensorData(self.train, self.val, batch_size=self.batch_size, seed=seed)

    def model(self) -> MLPClassifier:
        return MLPClassifier(num_features=self.num_features, num_classes=self.num_classes, hidden=64, lr=0.05)


def digits_task(epochs: int) -> Task:
    dm = LongTailDigits(batch_size=32)
    dm.setup("fit")
    train, val = dm.train_dataset.tensors, dm.val_dataset.tensors
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    used = {tuple(row.tolist()) for row in torch.cat([train[0], val[0]])}
    rest = np.array([i for i in range(len(x)) if tuple(x[i].tolist()) not in used])
    rng = np.random.default_rng(1)
    # Up to 20 per class: class 0 has only 4 images left once training (124) and validation (50) took theirs.
    per_class = [rest[y[rest].numpy() == c] for c in range(10)]
    hold = np.concatenate([rng.choice(m, min(20, len(m)), replace=False) for m in per_class])
    return Task("digits-LT (IF=100)", train, val, (x[hold], y[hold]), batch_size=32, epochs=epochs)


def breast_cancer_task(epochs: int, imbalance: float = 20.0) -> Task:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    # Class 1 (benign, 357) is the head, class 0 (malignant, 212) the tail: relabel so the head is class 0.
    y = (1 - data.target).astype(np.int64)
    x = data.data.astype(np.float32)
    rng = np.random.default_rng(0)
    val = np.concatenate([rng.choice(np.flatnonzero(y == c), 50, replace=False) for c in range(2)])
    rest = np.setdiff1d(np.arange(len(y)), val)
    hold = np.concatenate([rng.choice(rest[y[rest] == c], 20, replace=False) for c in range(2)])
    rest = np.setdiff1d(rest, hold)
    counts = long_tail_counts(int(np.bincount(y[rest]).min()), 2, imbalance)
    train = rest[long_tail_subset(y[rest], counts, seed=0)]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std

    def pair(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

    return Task(f"breast-cancer-LT (IF={imbalance:g})", pair(train), pair(val), pair(hold), batch_size=16,
                epochs=epochs)


def train_reference(task: Task, seed: int = 0, steps: int = 400) -> MLPClassifier:
    """An MLP trained on the balanced holdout: JEST's reference model and a frozen feature extractor."""
    torch.manual_seed(seed)
    model = task.model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = task.holdout
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ------------------------------------------------------------------------------------------------ training runs


class TimedSALN(SALN):
    """SALN that also times its own selection (synchronised on CUDA)."""

    selection_s = 0.0

    def transform_train_batch(self, trainer, pl_module, batch, indices):
        _sync(indices.device)
        start = _clock()
        out = super().transform_train_batch(trainer, pl_module, batch, indices)
        _sync(indices.device)
        self.selection_s += _clock() - start
        return out


class Curve(pl.Callback):
    """Validation accuracy and tail recall every ``every`` steps, with training time that excludes evaluation."""

    def __init__(self, task: Task, every: int) -> None:
        self.task, self.every = task, every
        self.points: list[dict] = []
        self.samples = 0
        self.eval_s = 0.0
        self.load_s = 0.0
        self._start = 0.0
        self._batch_start: Optional[float] = None
        self._last_end = 0.0

    def on_train_start(self, trainer, pl_module):
        self._start = self._last_end = _clock()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Between the end of the previous step and here: fetching, collating and moving the next batch (and the
        # selection, which runs in on_after_batch_transfer; TimedSALN reports it separately).
        self.load_s += _clock() - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[0])
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.points.append(self.evaluate(pl_module, step))
        self._last_end = _clock()

    def evaluate(self, pl_module, step: int) -> dict:
        _sync(pl_module.device)
        start = _clock()
        x, y = (t.to(pl_module.device) for t in self.task.val)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            logits = pl_module(x)
        pl_module.train(was_training)
        out = tail_recall(logits.cpu(), y.cpu(), self.task.counts, few=TAIL_BELOW)
        point = {"step": step, "samples": self.samples, "time_s": start - self._start - self.eval_s,
                 "accuracy": float(out["macro"]), "tail": float(out["tail"])}
        self.eval_s += _clock() - start
        return point


def train_run(task: Task, saln_kwargs: Optional[dict], seed: int, epochs: Optional[int] = None,
              accelerator: str = "auto") -> dict:
    pl.seed_everything(seed, verbose=False)
    dm = task.datamodule(seed)
    model = task.model()
    steps_per_epoch = len(task.train[1]) // task.batch_size
    curve = Curve(task, every=steps_per_epoch)
    callbacks: list[pl.Callback] = [curve]
    saln = None
    if saln_kwargs is not None:
        saln = TimedSALN(**saln_kwargs)
        callbacks.append(saln)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, max_epochs=epochs or task.epochs, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = _clock()
    trainer.fit(model, dm)
    total = _clock() - start
    final = curve.points[-1]
    steps = trainer.global_step
    return {
        "seed": seed, "curve": curve.points, "accuracy": final["accuracy"], "tail": final["tail"],
        "steps": steps, "samples": curve.samples, "train_s": final["time_s"], "fit_s": total,
        "load_ms_per_step": 1e3 * (curve.load_s - (saln.selection_s if saln else 0.0)) / steps,
        "selection_ms_per_step": 1e3 * (saln.selection_s if saln else 0.0) / steps,
        "step_ms": 1e3 * final["time_s"] / steps,
    }


# ------------------------------------------------------------------------------------------------ variants part


def _criterion(runs: list[dict]) -> float:
    """Mean over seeds of (balanced accuracy + tail recall) / 2: the head must not be bought with the tail."""
    return statistics.fmean((r["accuracy"] + r["tail"]) / 2 for r in runs)


FACTORS = {
    "score": ["magnitude", "boundary", "signed", "labels"],
    "laplacian": ["normalized", "plain", "random_walk"],
    "negative": ["clamp", "shift", "abs"],
    "features": ["inputs", "embed", "frozen"],
}


def _config_name(cfg: dict) -> str:
    return "spectral: " + ", ".join(f"{k}={cfg[k]}" for k in FACTORS)


def run_variants(task: Task, seeds: Sequence[int], epochs: int) -> dict:
    """Coordinate search over the spectral options, then the guard and the baselines at the same keep.

    The factors are tried in the order of ``FACTORS``: every option of one factor with the others at their best so
    far, the best kept before moving on. The score goes first because it changes the selection the most.
    """
    reference = train_reference(task)
    frozen = reference.body  # the reference's hidden layer: a frozen extractor "pretrained" on other data
    results: dict[str, list[dict]] = {}

    def spectral(cfg: dict, **extra: Any) -> dict:
        features = {"inputs": "inputs", "embed": "embed", "frozen": frozen}[cfg["features"]]
        options = {k: v for k, v in cfg.items() if k != "features"}
        return {"keep": KEEP, "method": "spectral", "features": features, **options, **extra}

    def run(name: str, kwargs: Optional[dict]) -> list[dict]:
        if name not in results:
            results[name] = [train_run(task, kwargs, seed, epochs) for seed in seeds]
            print(f"  variant {name:75s} acc {_fmt([r['accuracy'] for r in results[name]])}"
                  f" tail {_fmt([r['tail'] for r in results[name]])}", flush=True)
        return results[name]

    run("full data (keep 1)", None)
    best = dict(BASE)
    search = []
    for factor, options in FACTORS.items():
        scored = {}
        for option in options:
            cfg = {**best, factor: option}
            scored[option] = _criterion(run(_config_name(cfg), spectral(cfg)))
        best[factor] = max(scored, key=scored.__getitem__)
        search.append({"factor": factor, "criterion": scored, "chosen": best[factor]})
    winner = _config_name(best)
    run(winner + " + protect<20", spectral(best, protect_groups_below=TAIL_BELOW))
    # The guard where the score itself starves the tail (far-from-cut samples are the typical ones).
    run(_config_name(BASE) + " + protect<20", spectral(BASE, protect_groups_below=TAIL_BELOW))
    run("random", {"keep": KEEP, "method": "random"})
    run("random + protect<20", {"keep": KEEP, "method": "random", "protect_groups_below": TAIL_BELOW})
    run("loss", {"keep": KEEP, "method": "loss"})
    run("learnability", {"keep": KEEP, "method": "learnability", "reference": reference})
    return {"task": task.name, "keep": KEEP, "epochs": epochs, "seeds": list(seeds), "start": BASE,
            "search": search, "best": best, "winner": winner,
            "criterion": "mean over seeds of (balanced accuracy + tail recall) / 2",
            "results": {n: [{k: v for k, v in r.items() if k != "curve"} for r in rs] for n, rs in results.items()}}


# ------------------------------------------------------------------------------------------------ efficiency part


def _first(curve: list[dict], ok: Callable[[dict], bool]) -> Optional[dict]:
    return next((p for p in curve if ok(p)), None)


def run_efficiency(tasks: Sequence[Task], seeds: Sequence[int]) -> dict:
    methods: dict[str, Optional[dict]] = {
        "full data": None,
        "SALN (defaults)": {"keep": KEEP},
        "random keep": {"keep": KEEP, "method": "random"},
        "loss keep": {"keep": KEEP, "method": "loss"},
    }
    out: dict[str, Any] = {"keep": KEEP, "seeds": list(seeds), "tasks": {}}
    for task in tasks:
        runs = {name: [train_run(task, kw, seed) for seed in seeds] for name, kw in methods.items()}
        target_acc = statistics.fmean(r["accuracy"] for r in runs["full data"])
        target_tail = statistics.fmean(r["tail"] for r in runs["full data"])
        table = {}
        for name, rs in runs.items():
            row: dict[str, Any] = {"accuracy": [r["accuracy"] for r in rs], "tail": [r["tail"] for r in rs],
                                   "train_s": [r["train_s"] for r in rs], "steps": [r["steps"] for r in rs],
                                   "samples": [r["samples"] for r in rs],
                                   "load_ms_per_step": [r["load_ms_per_step"] for r in rs],
                                   "selection_ms_per_step": [r["selection_ms_per_step"] for r in rs],
                                   "step_ms": [r["step_ms"] for r in rs]}
            for key, need in (("acc", ("accuracy",)), ("tail", ("tail",)), ("both", ("accuracy", "tail"))):
                targets = {"accuracy": target_acc, "tail": target_tail}
                hits = [_first(r["curve"], lambda p, need=need, t=targets: all(p[m] >= t[m] - 1e-9 for m in need))
                        for r in rs]
                row[f"{key}_steps"] = [h["step"] if h else None for h in hits]
                row[f"{key}_samples"] = [h["samples"] if h else None for h in hits]
                row[f"{key}_time_s"] = [h["time_s"] if h else None for h in hits]
            row["curves"] = [r["curve"] for r in rs]
            table[name] = row
            print(f"  {task.name} {name:16s} acc {_fmt(row['accuracy'])} tail {_fmt(row['tail'])}"
                  f" steps to acc {_fmt(row['acc_steps'], 0)}")
        out["tasks"][task.name] = {"target_accuracy": target_acc, "target_tail": target_tail, "epochs": task.epochs,
                                   "batch_size": task.batch_size, "train_size": len(task.train[1]),
                                   "class_counts": task.counts.tolist(), "methods": table}
    return out


# ------------------------------------------------------------------------------------------------ solver part


def _legacy_similarity(x: torch.Tensor) -> torch.Tensor:
    """The similarity build as it was before the solver work (a full Gram matrix, fresh temporaries), clamp."""
    peak = x.abs().amax(dim=-1, keepdim=True)
    x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    unit = torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    sim = (unit @ unit.mT).clamp(-1.0, 1.0).clamp_min(0.0)
    return sim * (1.0 - torch.eye(sim.shape[-1], dtype=sim.dtype, device=sim.device))


def _legacy_scores(x: torch.Tensor) -> torch.Tensor:
    """Spectral scoring as it was: the legacy similarity, a full eigendecomposition, the boundary score."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("non-finite features")
    return _score(_fiedler_eigh(_legacy_similarity(x), "random_walk"), "boundary", None)


def _solver_data(kind: str, n: int, b: int, seed: int) -> torch.Tensor:
    """Realistic batches: Gaussian mixtures of 3 to 30 clusters, the 8x8 digits (raw and through a random ReLU
    layer, the shape of an embedding) and MNIST-1D signals; ``n`` batches of ``b`` samples."""
    gen = torch.Generator().manual_seed(seed)
    if kind.startswith("mixture"):
        clusters, noise = {"mixture-3": (3, 1.5), "mixture-10": (10, 0.8), "mixture-30": (30, 1.0)}[kind]
        centres = torch.randn(n, clusters, 512, generator=gen)
        labels = torch.randint(0, clusters, (n, b), generator=gen)
        x = torch.gather(centres, 1, labels.unsqueeze(-1).expand(n, b, 512))
        return x + noise * torch.randn(n, b, 512, generator=gen)
    if kind.startswith("digits"):
        from sklearn.datasets import load_digits

        pool = torch.from_numpy(load_digits().data.astype(np.float32))
        if kind == "digits-embedded":
            pool = torch.relu(pool @ torch.randn(64, 512, generator=gen) / 8.0)
    else:
        from lightning_balance.experiments.mnist1d import mnist1d_pool

        pool = torch.from_numpy(mnist1d_pool(max(1, -(-b // 10)) * 2, seed=seed)[0])
    return torch.stack([pool[torch.randperm(len(pool), generator=gen)[:b]] for _ in range(n)])


@contextlib.contextmanager
def _count_fallbacks() -> Iterator[list[int]]:
    """Graphs the iterative solves inside ``spectral_scores`` hand to eigh, while the context is open."""
    import lightning_balance.functional.fiedler as fiedler_module

    counts: list[int] = []
    solve = fiedler_module._solve_iterative

    def counting(*args: Any, **kwargs: Any) -> Any:
        vectors, fallback = solve(*args, **kwargs)
        counts.append(int(fallback.sum()))
        return vectors, fallback

    fiedler_module._solve_iterative = counting
    try:
        yield counts
    finally:
        fiedler_module._solve_iterative = solve


def run_solver(sizes: Sequence[int], batches: int, repeats: int, agreement_batches: Sequence[int],
               agreement_sizes: Sequence[int]) -> dict:
    """Per batch size: eigh, subspace and lobpcg time per batch (Fiedler solve of clustered graphs, D = 512),
    interleaved and repeated, median; the whole of ``spectral_scores`` today (``solver='auto'``) against the
    legacy path; and how often the kept half of realistic batches is exactly eigh's."""
    timing = []
    for kind, b in [(kind, b) for kind in ("mixture-10", "digits-embedded") for b in sizes]:
        x = _solver_data(kind, batches, b, seed=b)
        sim = _similarity(x, "clamp")
        calls = {
            "eigh": lambda s=sim: fiedler_vectors(s, method="eigh"),
            "subspace": lambda s=sim: fiedler_vectors(s, method="subspace"),
            "lobpcg": lambda s=sim: fiedler_vectors(s, method="lobpcg"),
            "scores: legacy eigh path": lambda x=x: _legacy_scores(x),
            "scores: solver='eigh'": lambda x=x: spectral_scores(x, solver="eigh"),
            "scores: solver='subspace'": lambda x=x: spectral_scores(x, solver="subspace"),
            "scores: solver='auto'": lambda x=x: spectral_scores(x),
        }
        if b > 512:
            calls.pop("lobpcg")  # minutes at B = 1024 on a CPU, and no faster than eigh anywhere
        times: dict[str, list[float]] = {name: [] for name in calls}
        for fn in calls.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in calls.items():  # interleaved: a change in the machine's load falls on every method
                start = time.perf_counter()
                fn()
                times[name].append(1e3 * (time.perf_counter() - start) / batches)
        fallbacks = {m: int(fiedler_vectors(sim, method=m, return_info=True).fallback.sum()) for m in calls
                     if m in ("subspace", "lobpcg")}
        row = {"B": b, "data": kind, "batches": batches, "repeats": repeats, "ms_per_batch": {n: statistics.median(t)
                                                                              for n, t in times.items()},
               "ratios": {"legacy / auto": statistics.median(
                   [a / c for a, c in zip(times["scores: legacy eigh path"], times["scores: solver='auto'"],
                                          strict=True)]),
                   "eigh / auto": statistics.median(
                   [a / c for a, c in zip(times["scores: solver='eigh'"], times["scores: solver='auto'"],
                                          strict=True)]),
                   "eigh / subspace (solve only)": statistics.median(
                   [a / c for a, c in zip(times["eigh"], times["subspace"], strict=True)]),
                   "scores eigh / subspace": statistics.median(
                   [a / c for a, c in zip(times["scores: solver='eigh'"], times["scores: solver='subspace'"],
                                          strict=True)])},
               "fallbacks": fallbacks, "resolved_auto": resolve_fiedler_method("auto", b, torch.device("cpu"))}
        timing.append(row)
        print(f"  solver {kind} B={b}: " + ", ".join(f"{n} {v:.2f}" for n, v in row["ms_per_batch"].items())
              + f"; legacy/auto {row['ratios']['legacy / auto']:.1f}x", flush=True)
    agreement = []
    kinds = ("mixture-3", "mixture-10", "mixture-30", "digits", "digits-embedded", "mnist1d")
    for b, count in zip(agreement_sizes, agreement_batches, strict=True):
        for kind in kinds:
            x = _solver_data(kind, count, b, seed=1000 + b)
            k = keep_count(0.5, b)
            ref = select_top_k(spectral_scores(x, solver="eigh"), k)
            ref64 = select_top_k(spectral_scores(x.double(), solver="eigh"), k)
            with _count_fallbacks() as fallbacks:
                fast = select_top_k(spectral_scores(x, solver="subspace"), k)
            overlap = (torch.zeros(len(x), b, dtype=torch.bool).scatter(1, fast, True)
                       & torch.zeros(len(x), b, dtype=torch.bool).scatter(1, ref, True)).sum(-1) / k
            agreement.append({"B": b, "data": kind, "batches": len(x),
                              "identical": int((fast == ref).all(-1).sum()),
                              "identical_eigh32_vs_eigh64": int((ref == ref64).all(-1).sum()),
                              "mean_overlap": float(overlap.mean()), "min_overlap": float(overlap.min()),
                              "fallbacks": sum(fallbacks)})
            print(f"  agreement B={b} {kind}: {agreement[-1]['identical']}/{len(x)} identical,"
                  f" eigh fp32 vs fp64 {agreement[-1]['identical_eigh32_vs_eigh64']}/{len(x)},"
                  f" {agreement[-1]['fallbacks']} handed to eigh", flush=True)
    identical = sum(a["identical"] for a in agreement)
    total = sum(a["batches"] for a in agreement)
    return {"D": 512, "threads": torch.get_num_threads(), "timing": timing, "agreement": agreement,
            "agreement_total": {"identical": identical, "batches": total, "share": identical / total},
            "auto_min_size": AUTO_SUBSPACE_MIN_SIZE}


# ------------------------------------------------------------------------------------------------ time-to-accuracy


TTA_KEEPS = (0.3, 0.5)
TTA_SEEDS = (0, 1, 2)
TTA_TUNE_SEED = 100


class TwoSplitCurve(pl.Callback):
    """Accuracy on the tune and the report split every ``every`` steps, against training time (wall and CPU) that
    excludes the evaluations."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], every: int,
                 stop_at: Optional[tuple[str, float]] = None) -> None:
        self.splits, self.every, self.stop_at = splits, every, stop_at
        self.points: list[dict] = []
        self.samples = 0
        self._eval_wall = self._eval_cpu = 0.0
        self._wall0 = self._cpu0 = 0.0

    def on_train_start(self, trainer, pl_module):
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[0])
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            wall, cpu = time.perf_counter(), time.process_time()
            point = {"step": step, "samples": self.samples, "wall_s": wall - self._wall0 - self._eval_wall,
                     "cpu_s": cpu - self._cpu0 - self._eval_cpu}
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                for name, (x, y) in self.splits.items():
                    point[name] = float((pl_module(x).argmax(-1) == y).float().mean())
            pl_module.train(was_training)
            self.points.append(point)
            if self.stop_at is not None and point[self.stop_at[0]] >= self.stop_at[1] - 1e-9:
                trainer.should_stop = True  # the time to the target is known; the rest of the run is not needed
            self._eval_wall += time.perf_counter() - wall
            self._eval_cpu += time.process_time() - cpu


def mnist1d_tta_task() -> dict:
    """Long-tailed MNIST-1D (IF = 100), a balanced validation set halved into a tune and a report split, and a
    balanced holdout from another generator seed for the reference model and the frozen extractor."""
    from lightning_balance.experiments.mnist1d import long_tail_mnist1d, mnist1d_pool

    train, val = long_tail_mnist1d(n_max=500, imbalance_factor=100.0, val_per_class=100, data_seed=0)
    x, y = val.tensors
    order = torch.argsort(y, stable=True)
    tune = order.view(10, 100)[:, :50].flatten()
    report = order.view(10, 100)[:, 50:].flatten()
    hx, hy = mnist1d_pool(30, seed=99)
    return {"name": "MNIST-1D-LT (IF=100)", "train": train.tensors, "tune": (x[tune], y[tune]),
            "report": (x[report], y[report]), "holdout": (torch.from_numpy(hx), torch.from_numpy(hy))}


def _tta_reference(task: dict, seed: int = 0, steps: int = 300) -> nn.Module:
    """A small 1-D CNN trained on the balanced holdout: RHO-LOSS's and JEST's reference model, and (its
    convolutional body) the frozen network whose cached features SALN scores."""
    from lightning_balance.experiments.mnist1d import CNN1DClassifier

    torch.manual_seed(seed)
    model = CNN1DClassifier(channels=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = task["holdout"]
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _tta_run(task: dict, saln_kwargs: Optional[dict], seed: int, epochs: int, batch_size: int = 64,
             stop_at: Optional[tuple[str, float]] = None) -> dict:
    from lightning_balance.experiments.mnist1d import CNN1DClassifier

    pl.seed_everything(seed, verbose=False)
    dm = TensorData(task["train"], task["tune"], batch_size=batch_size, seed=seed)
    model = CNN1DClassifier(channels=256, lr=2e-3)  # the costlier learner: a 256-channel 1-D CNN
    steps_per_epoch = len(task["train"][1]) // batch_size
    curve = TwoSplitCurve({"tune": task["tune"], "report": task["report"]}, every=steps_per_epoch, stop_at=stop_at)
    callbacks: list[pl.Callback] = [curve]
    saln = None
    if saln_kwargs is not None:
        saln = TimedSALN(**saln_kwargs)
        callbacks.append(saln)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    last = curve.points[-1]
    return {"seed": seed, "curve": curve.points, "steps": trainer.global_step, "samples": curve.samples,
            "wall_s": last["wall_s"], "cpu_s": last["cpu_s"], "tune": last["tune"], "report": last["report"],
            "selection_ms_per_step": 1e3 * (saln.selection_s if saln else 0.0) / trainer.global_step,
            "step_ms": 1e3 * last["wall_s"] / trainer.global_step,
            "cpu_step_ms": 1e3 * last["cpu_s"] / trainer.global_step}


def _time_to(curve: list[dict], split: str, target: float, clock: str = "wall_s") -> Optional[float]:
    hit = next((p for p in curve if p[split] >= target - 1e-9), None)
    return None if hit is None else hit[clock]


def _paired_log_ratio(method: Sequence[Optional[float]], full: Sequence[Optional[float]]) -> Optional[dict]:
    """Speed-up of a method over full data (full time / method time), geometric mean over paired seeds and its
    95% paired t interval (on the log of the ratio)."""
    from scipy import stats

    pairs = [(m, f) for m, f in zip(method, full, strict=True) if m is not None and f is not None]
    if len(pairs) < 2 or len(pairs) < len(method):
        return None
    logs = np.log([f / m for m, f in pairs])
    mean, sem = float(logs.mean()), float(stats.sem(logs))
    half = float(stats.t.ppf(0.975, len(logs) - 1) * sem) if sem > 0 else 0.0
    return {"speedup": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half), "n": len(pairs)}


def run_time_to_accuracy(epochs: int, seeds: Sequence[int], keeps: Sequence[float], tune_seed: int) -> dict:
    """Time to the full-data accuracy for full data and every selection method: keep tuned on the tune split
    (one seed), times reported on the report split (other seeds), paired over seeds."""
    task = mnist1d_tta_task()
    reference = _tta_reference(task)
    # The frozen network: the reference's convolutional body, on signals [B, 40] as a channel of one.
    frozen = nn.Sequential(nn.Unflatten(1, (1, task["train"][0].shape[1])), reference.body)
    methods: dict[str, Optional[dict]] = {
        "full data": None,
        "random keep": {"method": "random"},
        "loss keep": {"method": "loss"},
        "Selective Backprop": {"method": "selective_backprop"},
        "RHO-LOSS": {"method": "rho_loss", "reference": reference},
        "JEST": {"method": "jest", "reference": reference, "n_chunks": 16},
        "SALN": {"method": "spectral", "features": frozen},
        # The setting docs/saln.md suggests for long-tailed classes: samples of classes with fewer than 20 are kept.
        "SALN + tail guard": {"method": "spectral", "features": frozen, "protect_groups_below": TAIL_BELOW},
    }
    # A method that keeps a fraction `keep` of every batch may train for epochs / keep epochs (the same samples
    # back-propagated as full data); every run stops at the evaluation where it first reaches its target.
    def budget(keep: float) -> int:
        return math.ceil(epochs / keep)

    # Tuning: one seed, the tune split, the kept fraction that reaches full data's tune accuracy first.
    full_tune = _tta_run(task, None, tune_seed, epochs)
    tune_target = full_tune["tune"]
    tuning: dict[str, dict] = {}
    for name, kwargs in methods.items():
        if kwargs is None:
            continue
        tried = {}
        for keep in keeps:
            run = _tta_run(task, {**kwargs, "keep": keep}, tune_seed, budget(keep), stop_at=("tune", tune_target))
            tried[keep] = {"time_s": _time_to(run["curve"], "tune", tune_target), "final_tune": run["tune"]}
            print(f"  tune {name} keep={keep}: time to {tune_target:.3f} {tried[keep]['time_s']},"
                  f" final {run['tune']:.3f}", flush=True)
        reached = {k: v["time_s"] for k, v in tried.items() if v["time_s"] is not None}
        best = min(reached, key=reached.__getitem__) if reached else max(tried, key=lambda k: tried[k]["final_tune"])
        tuning[name] = {"tried": tried, "chosen_keep": best}
    # Report: full data first (its final accuracy is the target), then the chosen keep of every method, fresh
    # seeds, the report split.
    runs: dict[str, list[dict]] = {"full data": [_tta_run(task, None, seed, epochs) for seed in seeds]}
    target = statistics.fmean(r["report"] for r in runs["full data"])
    for name, kwargs in methods.items():
        if kwargs is not None:
            keep = tuning[name]["chosen_keep"]
            runs[name] = [_tta_run(task, {**kwargs, "keep": keep}, seed, budget(keep), stop_at=("report", target))
                          for seed in seeds]
        print(f"  report {name}: last {_fmt([r['report'] for r in runs[name]])},"
              f" {_fmt([r['wall_s'] for r in runs[name]], 1)} s", flush=True)
    full_wall = [_time_to(r["curve"], "report", target, "wall_s") for r in runs["full data"]]
    full_cpu = [_time_to(r["curve"], "report", target, "cpu_s") for r in runs["full data"]]
    table = {}
    for name, rs in runs.items():
        wall = [_time_to(r["curve"], "report", target, "wall_s") for r in rs]
        cpu = [_time_to(r["curve"], "report", target, "cpu_s") for r in rs]
        steps = [_time_to(r["curve"], "report", target, "step") for r in rs]
        table[name] = {
            "keep": None if methods[name] is None else tuning[name]["chosen_keep"],
            "final_report": [r["report"] for r in rs],
            "best_report": [max(p["report"] for p in r["curve"]) for r in rs],
            "wall_to_target_s": wall, "cpu_to_target_s": cpu,
            "epochs_budget": epochs if name == "full data" else budget(tuning[name]["chosen_keep"]),
            "steps_to_target": steps, "total_wall_s": [r["wall_s"] for r in rs],
            "step_ms": [r["step_ms"] for r in rs], "cpu_step_ms": [r["cpu_step_ms"] for r in rs],
            "selection_ms_per_step": [r["selection_ms_per_step"] for r in rs],
            "speedup_wall": None if name == "full data" else _paired_log_ratio(wall, full_wall),
            "speedup_cpu": None if name == "full data" else _paired_log_ratio(cpu, full_cpu),
            "curves": [r["curve"] for r in rs],
        }
    return {"task": task["name"], "train_size": len(task["train"][1]),
            "class_counts": torch.bincount(task["train"][1], minlength=10).tolist(), "epochs": epochs,
            "batch_size": 64, "seeds": list(seeds), "tune_seed": tune_seed, "keeps": list(keeps),
            "target_report": target, "tune_target": tune_target, "tuning": tuning, "methods": table,
            "learner": "CNN1DClassifier(channels=256, lr=2e-3), Adam",
            "frozen": "the convolutional body of a CNN1DClassifier(channels=32) trained on a balanced holdout of"
                      " 30 signals per class (another generator seed); also the reference model"}


# ------------------------------------------------------------------------------------------------ report


def write_report(out: Path, cost: Optional[list], variants: Optional[dict], efficiency: Optional[dict],
                 meta: dict, solver: Optional[dict] = None, tta: Optional[dict] = None) -> None:
    lines = ["# SALN benchmark", "", f"Generated by `benchmarks/saln_benchmark.py` on {meta['when']}"
             f" ({meta['platform']}, torch {meta['torch']}, {meta['threads']} CPU threads for the cost part,"
             " one for the training runs"
             f"{', CUDA ' + meta['cuda'] if meta['cuda'] else ', no CUDA device'}).", ""]
    if cost:
        lines += ["## Scoring cost", "",
                  f"`spectral_scores` on up to {cost[0]['batches']} batches (D = {cost[0]['D']}; a size stops early"
                  " once its scoring has taken 90 s), one batched call per chunk of batches, against the training"
                  " step of a 512-256-10 MLP (forward, backward, SGD) on the same batches. Per batch, from the"
                  " fastest chunk (scoring) and the fastest block of 10 steps (MLP): the machine is shared, and"
                  " slower repeats measure the neighbours.", "",
                  "| device | B | batches scored | scoring ms/batch | MLP step ms/batch | scoring / step |",
                  "|---|---|---|---|---|---|"]
        for r in cost:
            lines.append(f"| {r['device_name']} | {r['B']} | {r.get('batches_scored', r['batches'])} |"
                         f" {r['scoring_ms_per_batch']:.3f} | {r['step_ms_per_batch']:.3f} |"
                         f" {100 * r['scoring_over_step']:.0f}% |")
        if not any(r["device"].startswith("cuda") for r in cost):
            lines += ["", "GPU figures are pending: no CUDA device was available for this run. The script measures"
                      " on CUDA as well whenever `torch.cuda.is_available()`."]
        lines.append("")
    if variants:
        res = variants["results"]
        lines += ["## Spectral variants", "",
                  f"{variants['task']}, keep = {variants['keep']}, batch 32, {variants['epochs']} epochs,"
                  f" seeds {variants['seeds']}; balanced validation accuracy and tail recall (classes with fewer"
                  f" than {TAIL_BELOW} training samples), mean ± std. Coordinate search from {variants['start']}:"
                  " all options of one factor with the others at their best so far (score, then Laplacian, then"
                  f" negative similarities, then features). Criterion: {variants['criterion']}. 'frozen' features"
                  " are the hidden layer of an MLP trained on a small balanced holdout (also the reference model"
                  " of 'learnability').", "",
                  "| variant | accuracy | tail recall | criterion | selection ms/step |", "|---|---|---|---|---|"]
        for name, rs in res.items():
            bold = "**" if name == variants["winner"] else ""
            lines.append(f"| {bold}{name}{bold} | {_fmt([r['accuracy'] for r in rs])} |"
                         f" {_fmt([r['tail'] for r in rs])} | {_criterion(rs):.3f} |"
                         f" {statistics.fmean(r['selection_ms_per_step'] for r in rs):.2f} |")
        chosen = ", ".join(f"{s['factor']}={s['chosen']}" for s in variants["search"])
        default = SALN()
        defaults = {"score": default.score, "laplacian": default.laplacian, "negative": default.negative,
                    "features": default.features}
        agree = "These are the defaults of `SALN` and `spectral_scores`." if defaults == variants["best"] else (
            f"**The defaults of `SALN` ({defaults}) differ from this choice.**")
        lines += ["", f"Chosen: {chosen}. {agree}", ""]
    if efficiency:
        lines += ["## Training efficiency", "",
                  f"keep = {efficiency['keep']}, seeds {efficiency['seeds']}. Targets are the full-data model's"
                  " final balanced accuracy and tail recall (mean over seeds). 'Steps/samples/time to target':"
                  " first evaluation (once per epoch) at which the run reaches the target; (k/n) when only k of n"
                  " seeds reach it within the same number of epochs. Time is training time without evaluation: CPU"
                  " time of the single-threaded training process on a CPU machine (other jobs on a shared machine"
                  " do not inflate it), wall time with a GPU.", ""]
        for task_name, t in efficiency["tasks"].items():
            lines += [f"### {task_name}", "",
                      f"{t['train_size']} training samples {t['class_counts']}, batch {t['batch_size']},"
                      f" {t['epochs']} epochs. Target accuracy {t['target_accuracy']:.3f}, target tail recall"
                      f" {t['target_tail']:.3f}.", "",
                      "| method | final accuracy | final tail recall | steps to acc. target | samples to acc. target"
                      " | time to acc. target (s) | steps to tail target | steps to both | total train time (s) |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, row in t["methods"].items():
                lines.append(
                    f"| {name} | {_fmt(row['accuracy'])} | {_fmt(row['tail'])} | {_fmt(row['acc_steps'], 0)} |"
                    f" {_fmt(row['acc_samples'], 0)} | {_fmt(row['acc_time_s'], 2)} | {_fmt(row['tail_steps'], 0)} |"
                    f" {_fmt(row['both_steps'], 0)} | {_fmt(row['train_s'], 2)} |")
            lines += ["", "Per-step time split (ms, mean over seeds): loading = fetch, collate and transfer of the"
                      " whole batch (DataLoader in the main process); selection = scoring and indexing in"
                      " `transform_train_batch`; total = all training time per step, both included.", "",
                      "| method | loading | selection | total per step |", "|---|---|---|---|"]
            for name, row in t["methods"].items():
                lines.append(f"| {name} | {statistics.fmean(row['load_ms_per_step']):.2f} |"
                             f" {statistics.fmean(row['selection_ms_per_step']):.2f} |"
                             f" {statistics.fmean(row['step_ms']):.2f} |")
            lines.append("")
    lines += _solver_report(solver) + _tta_report(tta)
    (out / "saln.md").write_text("\n".join(lines))


def _solver_report(solver: Optional[dict]) -> list[str]:
    if not solver:
        return []
    lines = ["## Fiedler solvers", "",
             f"Time per batch on the CPU ({solver['threads']} thread), D = {solver['D']}: 'mixture-10' is ten"
             " Gaussian clusters (signed features: the graph is built), 'digits-embedded' the 8x8 digits through a"
             " random ReLU layer (non-negative features, as embeddings after a ReLU are: the graph is applied"
             " through the features and never built). Every method runs in turn within each repeat, median. 'Whole"
             " scoring' is `spectral_scores` from features to scores: the legacy eigh path is the code as it was"
             " before the iterative solvers (a full Gram matrix, fresh temporaries, `eigh`), `solver='eigh'` the"
             " current similarity build with `eigh`, `solver='auto'` what runs by default. `auto` uses subspace"
             f" iteration from B = {solver['auto_min_size']} on (CPU).", "",
             "| data | B | eigh | subspace | lobpcg | handed to eigh (subspace / lobpcg) | legacy scoring |"
             " scoring, eigh | scoring, subspace | scoring, auto | legacy / auto |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in solver["timing"]:
        ms = r["ms_per_batch"]
        lob = f"{ms['lobpcg']:.2f}" if "lobpcg" in ms else "not run"
        fb = f"{r['fallbacks'].get('subspace', 0)} / {r['fallbacks'].get('lobpcg', '-')} of {r['batches']}"
        lines.append(f"| {r.get('data', 'mixture-10')} | {r['B']} | {ms['eigh']:.2f} | {ms['subspace']:.2f} | {lob} |"
                     f" {fb} |"
                     f" {ms['scores: legacy eigh path']:.2f} | {ms['scores: solver=' + repr('eigh')]:.2f} |"
                     f" {ms['scores: solver=' + repr('subspace')]:.2f} | {ms['scores: solver=' + repr('auto')]:.2f} |"
                     f" {r['ratios']['legacy / auto']:.1f}x |")
    total = solver["agreement_total"]
    lines += ["", f"Kept half (boundary score) of realistic batches, subspace iteration against `eigh`:"
              f" **{total['identical']} of {total['batches']} identical ({100 * total['share']:.1f}%)**. The"
              " float32 `eigh` against a float64 `eigh` is the noise floor.", "",
              "| B | data | batches | identical to eigh | eigh fp32 = fp64 | mean overlap | min overlap |"
              " handed to eigh |", "|---|---|---|---|---|---|---|---|"]
    for a in solver["agreement"]:
        lines.append(f"| {a['B']} | {a['data']} | {a['batches']} | {a['identical']} |"
                     f" {a['identical_eigh32_vs_eigh64']} | {a['mean_overlap']:.4f} | {a['min_overlap']:.4f} |"
                     f" {a['fallbacks']} |")
    return lines + [""]


def _tta_report(tta: Optional[dict]) -> list[str]:
    if not tta:
        return []
    lines = ["## Time to the full-data accuracy", "",
             f"{tta['task']}: {tta['train_size']} training signals {tta['class_counts']}, learner"
             f" {tta['learner']}, batch {tta['batch_size']}; full data trains {tta['epochs']} epochs, a method that"
             " keeps a fraction `keep` up to epochs / keep (the same samples back-propagated), and every selection"
             " run stops at the evaluation where it reaches its target; frozen features and reference:"
             f" {tta['frozen']}. Kept fraction tuned per method over {tta['keeps']} on the tune split (seed"
             f" {tta['tune_seed']}: first to reach full data's tune accuracy {tta['tune_target']:.3f}); reported on"
             f" the report split with seeds {tta['seeds']}. Target: full data's final report accuracy, mean over"
             f" seeds, **{tta['target_report']:.3f}**. Times are training time without the evaluations (every"
             " epoch); speed-up = full data's time / the method's, geometric mean over the paired seeds with a"
             " 95% paired t interval (scipy.stats) on its log; 'n/a' where a seed did not reach the target.", "",
             "| method | keep | epochs budget | best report acc. | wall s to target | speed-up (wall) |"
             " CPU s to target | speed-up (CPU) | steps to target | wall ms per step | CPU ms per step |"
             " selection CPU ms per step |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def speed(v: Optional[dict]) -> str:
        return "n/a" if not v else f"{v['speedup']:.2f}x [{v['low']:.2f}, {v['high']:.2f}]"

    for name, row in tta["methods"].items():
        lines.append(
            f"| {name} | {row['keep'] if row['keep'] is not None else 1.0} | {row.get('epochs_budget', '')} |"
            f" {_fmt(row.get('best_report', row['final_report']))} |"
            f" {_fmt(row['wall_to_target_s'], 1)} | {speed(row['speedup_wall'])} | {_fmt(row['cpu_to_target_s'], 1)} |"
            f" {speed(row['speedup_cpu'])} | {_fmt(row['steps_to_target'], 0)} | {_fmt(row['step_ms'], 2)} |"
            f" {_fmt(row.get('cpu_step_ms', [float('nan')]), 2)} | {_fmt(row['selection_ms_per_step'], 2)} |")
    tried = []
    for name, t in tta["tuning"].items():
        times = ", ".join(f"keep {k}: " + ("not reached" if v["time_s"] is None else f"{v['time_s']:.1f} s")
                          for k, v in t["tried"].items())
        tried.append(f"{name} {times}")
    lines += ["", f"Tuning (tune split, seed {tta['tune_seed']}, wall s to its target): " + "; ".join(tried) + ".", ""]
    return lines


def plot(out: Path, cost: Optional[list], variants: Optional[dict], efficiency: Optional[dict],
         solver: Optional[dict] = None, tta: Optional[dict] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if cost:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for device in sorted({r["device"] for r in cost}):
            rs = [r for r in cost if r["device"] == device]
            ax.plot([r["B"] for r in rs], [r["scoring_ms_per_batch"] for r in rs], "o-", label=f"scoring ({device})")
            ax.plot([r["B"] for r in rs], [r["step_ms_per_batch"] for r in rs], "s--", label=f"MLP step ({device})")
        ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="ms per batch", title="spectral_scores, D=512")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "saln_cost.png", dpi=120)
        plt.close(fig)
    if variants:
        res = variants["results"]
        names = list(res)
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
        y = np.arange(len(names))
        for offset, key, label in ((-0.2, "accuracy", "balanced accuracy"), (0.2, "tail", "tail recall")):
            means = [_mean_std([r[key] for r in res[n]]) for n in names]
            ax.barh(y + offset, [m for m, _ in means], 0.4, xerr=[s for _, s in means], label=label)
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel=f"{variants['task']}, keep {variants['keep']}", xlim=(0, 1))
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.0 + 0.9 / len(names)), ncol=2, frameon=False)
        fig.tight_layout()
        fig.savefig(out / "saln_variants.png", dpi=120)
        plt.close(fig)
    if efficiency:
        tasks = efficiency["tasks"]
        fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 6), squeeze=False)
        for col, (task_name, t) in enumerate(tasks.items()):
            for name, row in t["methods"].items():
                curves = row["curves"]
                n = min(len(c) for c in curves)
                samples = [curves[0][i]["samples"] for i in range(n)]
                for r, key in enumerate(("accuracy", "tail")):
                    mean = [statistics.fmean(c[i][key] for c in curves) for i in range(n)]
                    axes[r][col].plot(samples, mean, label=name)
            for r, (key, target) in enumerate((("accuracy", t["target_accuracy"]), ("tail recall", t["target_tail"]))):
                axes[r][col].axhline(target, color="grey", lw=0.8, ls=":")
                axes[r][col].set(xlabel="samples back-propagated", ylabel=key, title=task_name)
            axes[0][col].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "saln_efficiency.png", dpi=120)
        plt.close(fig)
    if solver:
        _plot_solver(plt, out, solver)
    if tta:
        _plot_tta(plt, out, tta)


def _plot_solver(plt: Any, out: Path, solver: dict) -> None:
    kinds = sorted({r.get("data", "mixture-10") for r in solver["timing"]}, reverse=True)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False, sharey=True)
    styles = {"eigh": ("o-", "solve: eigh"), "subspace": ("s-", "solve: subspace"), "lobpcg": ("^-", "solve: lobpcg"),
              "scores: legacy eigh path": ("o:", "whole scoring, legacy (eigh)"),
              "scores: solver='auto'": ("s:", "whole scoring, auto")}
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = [r for r in solver["timing"] if r.get("data", "mixture-10") == kind]
        for name, (style, label) in styles.items():
            pts = [(r["B"], r["ms_per_batch"][name]) for r in rows if name in r["ms_per_batch"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
        ax.axvline(solver["auto_min_size"], color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel="batch size B", title=f"{kind}, D = {solver['D']}")
        ax.set_xticks([r["B"] for r in rows], [str(r["B"]) for r in rows])
        ax.minorticks_off()
    axes[0][0].set_ylabel("ms per batch (CPU, 1 thread)")
    axes[0][0].legend(fontsize=7, title=f"dashed: auto switches to subspace at B = {solver['auto_min_size']}",
                      title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "saln_solver.png", dpi=120)
    plt.close(fig)


def _plot_tta(plt: Any, out: Path, tta: dict) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, row) in enumerate(tta["methods"].items()):
        color = "black" if name == "full data" else colors[(i - 1) % len(colors)]
        keep = "" if row["keep"] is None else f" (keep {row['keep']})"
        for j, curve in enumerate(row["curves"]):
            ax.plot([p["cpu_s"] for p in curve], [p["report"] for p in curve], color=color,
                    lw=2.0 if name in ("SALN", "full data") else 1.0, alpha=0.8,
                    label=name + keep if j == 0 else None)
        hits = [t for t in row["cpu_to_target_s"] if t is not None]
        ax.plot(hits, [tta["target_report"]] * len(hits), "o", color=color, ms=5)
    ax.axhline(tta["target_report"], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="training CPU time (s); one line per seed, dots: time to the target",
           ylabel="accuracy, report split",
           title=f"{tta['task']}: time to full data's accuracy ({tta['target_report']:.3f})")
    ax.set_ylim(max(0.0, tta["target_report"] - 0.35), min(1.0, tta["target_report"] + 0.08))
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "saln_tta.png", dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few batches, 1 seed, few epochs")
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the cost part (default: torch's)")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="saln_quick_")) if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[:1] if args.quick else SEEDS
    meta = {"when": time.strftime("%Y-%m-%d"), "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else "", "quick": args.quick}
    if args.threads:
        torch.set_num_threads(args.threads)
        meta["threads"] = args.threads
    cost = variants = efficiency = solver = tta = None
    start = time.perf_counter()
    if "cost" in args.parts:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        cost = run_cost(10 if args.quick else 1000, (64, 256, 1024), 512, devices)
        (out / "saln_cost.json").write_text(json.dumps({"meta": meta, "rows": cost}, indent=1))
    torch.set_num_threads(1)  # tiny models: one thread is faster and keeps timings steady
    if "variants" in args.parts:
        variants = run_variants(digits_task(60), seeds, epochs=4 if args.quick else 60)
        (out / "saln_variants.json").write_text(json.dumps({"meta": meta, **variants}, indent=1))
    if "efficiency" in args.parts:
        tasks = [digits_task(4 if args.quick else 60), breast_cancer_task(4 if args.quick else 40)]
        efficiency = run_efficiency(tasks, seeds)
        (out / "saln_efficiency.json").write_text(json.dumps({"meta": meta, **efficiency}, indent=1))
    if "solver" in args.parts:
        part_start = time.perf_counter()
        solver = (run_solver((64, 128, 256), 2, 3, (4,), (256,)) if args.quick else
                  run_solver((64, 128, 192, 256, 512, 1024), 4, 7, (50, 25), (256, 1024)))
        solver["seconds"] = time.perf_counter() - part_start
        (out / "saln_solver.json").write_text(json.dumps({"meta": meta, **solver}, indent=1))
    if "tta" in args.parts:
        part_start = time.perf_counter()
        tta = (run_time_to_accuracy(3, TTA_SEEDS[:2], TTA_KEEPS[:1], TTA_TUNE_SEED) if args.quick else
               run_time_to_accuracy(15, TTA_SEEDS, TTA_KEEPS, TTA_TUNE_SEED))
        tta["seconds"] = time.perf_counter() - part_start
        (out / "saln_tta.json").write_text(json.dumps({"meta": meta, **tta}, indent=1))
    # Parts not run this time keep their previous results in the summary.
    cost = cost or _load(out / "saln_cost.json", "rows")
    variants = variants or _load(out / "saln_variants.json")
    efficiency = efficiency or _load(out / "saln_efficiency.json")
    solver = solver or _load(out / "saln_solver.json")
    tta = tta or _load(out / "saln_tta.json")
    write_report(out, cost, variants, efficiency, meta, solver, tta)
    plot(out, cost, variants, efficiency, solver, tta)
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")


def _load(path: Path, key: Optional[str] = None) -> Any:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data.pop("meta", None)
    return data[key] if key else data


if __name__ == "__main__":
    main()
