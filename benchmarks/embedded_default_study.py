"""Choose the embedded default task of ``lightning-balance compare`` by measurement.

Today's default (long-tailed scikit-learn digits with an MLP) saturates: head recall is 1.0 under every
strategy, so the head cost of upsampling never shows. This script trains candidate tasks, each under the
default comparison (natural, upsample T=5, upweight T=5, Cooldown T=5→1 at 50%), with the same runner the
command uses (:func:`lightning_balance.compare.compare`: a :class:`~lightning_balance.BalancedDataModule`, a
Lightning ``Trainer``, per-class recall from :class:`~lightning_balance.TailRecall`), and checks the
conditions a default task must meet:

1. ``head_below_ceiling``: the head recall of every strategy (mean over seeds) is at most 0.95;
2. ``head_natural_over_upsample``: natural beats upsampling on head recall by more than the paired seed
   noise (the 95% t interval of the per-seed differences natural − upsample lies above 0);
3. ``tail_upsample_over_natural``: upsampling beats natural on tail recall (t interval of upsample − natural
   above 0);
4. ``tail_overfits_more_under_upsample``: the tail's validation loss rises from its minimum more under
   upsampling than under natural sampling (t interval of the per-seed difference of the rises above 0). A
   rise is measured on the smoothed curve: a trailing mean over ``SMOOTH`` validation points, final value
   minus its minimum;
5. ``under_time_budget``: the whole comparison (4 strategies × the seeds, data generation and Trainer set-up
   included) takes less than 300 s on this machine with one torch thread;
6. ``splits_non_empty``: head, medium and tail each hold at least one class.

The t intervals use ``scipy.stats.t.ppf(0.975, n - 1)`` times the standard error of the paired differences.
Tuning uses seeds 0-2 (``--phase tuning``); the chosen configuration is then confirmed, unchanged, on seeds
10-12 (``--phase confirm``). Every evaluation is kept in ``results/embedded_default.json`` (an evaluation
with the same label, phase and seeds replaces the older one; the per-validation curves are kept for the chosen
candidate only) and the Markdown report is rendered from all of them.

Run (from the repository root)::

    python benchmarks/embedded_default_study.py --phase tuning              # every candidate, seeds 0-2
    python benchmarks/embedded_default_study.py --phase confirm --candidates mnist1d-cnn
    python benchmarks/embedded_default_study.py --phase confirm --candidates mnist1d-cnn --seeds 20 21 22
    python benchmarks/embedded_default_study.py --render-only

``--override '{"model_args": {"lr": 0.001}}'`` with ``--label NAME`` records a tuning variant of one
candidate; ``--quick`` is a smoke run (one seed, a few steps) written to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

torch.set_num_threads(1)

from scipy import stats  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from lightning_balance.compare import (  # noqa: E402
    CompareSettings,
    ComponentSpec,
    compare,
    default_runs,
    import_object,
    smoothed_rise,
)
from lightning_balance.datamodule import BalancedDataModule  # noqa: E402
from lightning_balance.experiments.datasets import long_tail_counts, long_tail_subset  # noqa: E402
from lightning_balance.functional.tail_recall import long_tail_split  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
STEM = "embedded_default"
TUNING_SEEDS = (0, 1, 2)
CONFIRM_SEEDS = (10, 11, 12)
#: Head recall at or above this counts as saturated.
HEAD_CEILING = 0.95
#: Budget of the whole default comparison, in seconds.
TIME_BUDGET_S = 300.0
#: Validation points in the trailing mean that smooths the tail-loss curve (the runner's ``RISE_WINDOW``).
SMOOTH = 5
#: The candidate the package ships as the default (its evaluations are reported in full).
CHOSEN = "mnist1d-cnn"


# ----------------------------------------------------------------------------------------------------------
# Candidate tasks that are not part of the package
# ----------------------------------------------------------------------------------------------------------
class NoisyLongTailDigits(BalancedDataModule):
    """Long-tailed 8x8 digits with fixed Gaussian pixel noise (std ``noise``, pixels in [0, 1]).

    The split is that of :class:`~lightning_balance.datasets.LongTailDigits` (50 validation images per class,
    the rest long-tailed from the smallest class remainder); the noise is drawn once, with ``data_seed``, for
    training and validation alike, so classes overlap while nothing changes from run to run.
    """

    def __init__(self, noise: float = 0.5, imbalance_factor: float = 100.0, val_per_class: int = 50,
                 data_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise, self.imbalance_factor, self.val_per_class, self.data_seed = (
            noise, imbalance_factor, val_per_class, data_seed)
        self.num_classes, self.num_features = 10, 64

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        rng = np.random.default_rng(self.data_seed)
        x = (digits.data / 16.0 + self.noise * rng.standard_normal(digits.data.shape)).astype(np.float32)
        y = digits.target.astype(np.int64)
        val_idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), self.val_per_class, replace=False) for c in range(10)])
        rest = np.setdiff1d(np.arange(len(y)), val_idx)
        counts = long_tail_counts(int(np.bincount(y[rest], minlength=10).min()), 10, self.imbalance_factor)
        train_idx = rest[long_tail_subset(y[rest], counts, seed=self.data_seed)]
        self.train_dataset = TensorDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
        self.val_dataset = TensorDataset(torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx]))


class LongTailOverlap(BalancedDataModule):
    """``sklearn.datasets.make_classification`` with overlapping classes, long-tailed, balanced validation."""

    def __init__(self, n_max: int = 500, imbalance_factor: float = 100.0, val_per_class: int = 100,
                 class_sep: float = 1.0, num_features: int = 20, data_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_max, self.imbalance_factor, self.val_per_class = n_max, imbalance_factor, val_per_class
        self.class_sep, self.num_features, self.data_seed = class_sep, num_features, data_seed
        self.num_classes = 10

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:
            return
        from sklearn.datasets import make_classification

        per_class = self.n_max + self.val_per_class
        x, y = make_classification(
            n_samples=10 * per_class, n_features=self.num_features, n_informative=self.num_features // 2,
            n_redundant=0, n_classes=10, n_clusters_per_class=1, weights=None, flip_y=0.0,
            class_sep=self.class_sep, random_state=self.data_seed,
        )
        x, y = x.astype(np.float32), y.astype(np.int64)
        rng = np.random.default_rng(self.data_seed)
        val_idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), self.val_per_class, replace=False) for c in range(10)])
        rest = np.setdiff1d(np.arange(len(y)), val_idx)
        counts = long_tail_counts(self.n_max, 10, self.imbalance_factor)
        train_idx = rest[long_tail_subset(y[rest], counts, seed=self.data_seed)]
        self.train_dataset = TensorDataset(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
        self.val_dataset = TensorDataset(torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx]))


_HERE_MODULE = "benchmarks.embedded_default_study" if __name__ != "__main__" else "__main__"

#: Every candidate: its DataModule and model (import paths or classes), their arguments, the step budget.
CANDIDATES: dict[str, dict[str, Any]] = {
    "digits": {
        "description": "today's default: long-tailed sklearn digits (8x8), MLP sized from the data",
        "datamodule": "lightning_balance.experiments.datasets.LongTailDigits", "datamodule_args": {},
        "model": None, "model_args": {}, "max_steps": 1500, "val_every": 50, "split": "absolute",
    },
    "digits-noisy": {
        "description": "long-tailed digits with fixed Gaussian pixel noise (std 0.5), MLP",
        "datamodule": NoisyLongTailDigits, "datamodule_args": {"noise": 0.5},
        "model": "lightning_balance.experiments.models.MLPClassifier", "model_args": {"num_features": 64},
        "max_steps": 1500, "val_every": 50, "split": "absolute",
    },
    "overlap": {
        "description": "make_classification, 10 overlapping classes (class_sep 1.0, 20 features), MLP",
        "datamodule": LongTailOverlap, "datamodule_args": {"class_sep": 1.0},
        "model": "lightning_balance.experiments.models.MLPClassifier", "model_args": {"num_features": 20},
        "max_steps": 1500, "val_every": 50, "split": "absolute",
    },
    "mnist1d-mlp": {
        "description": "long-tailed MNIST-1D, MLP (hidden 128)",
        "datamodule": "lightning_balance.experiments.mnist1d.LongTailMNIST1D",
        "datamodule_args": {"n_max": 500, "imbalance_factor": 100.0, "val_per_class": 100},
        "model": "lightning_balance.experiments.models.MLPClassifier",
        "model_args": {"num_features": 40, "hidden": 128, "lr": 0.02},
        "max_steps": 1500, "val_every": 50, "split": "absolute",
    },
    "mnist1d-cnn-reference": {
        "description": "long-tailed MNIST-1D, the MNIST-1D reference CNN shape (flattened features, Adam 1e-2)",
        "datamodule": "lightning_balance.experiments.mnist1d.LongTailMNIST1D",
        "datamodule_args": {"n_max": 500, "imbalance_factor": 100.0, "val_per_class": 100},
        "model": "lightning_balance.experiments.mnist1d.CNN1DClassifier",
        "model_args": {"channels": 32, "lr": 0.01, "weight_decay": 0.0, "pooling": "flatten", "schedule": "constant"},
        "max_steps": 1500, "val_every": 50, "split": "absolute",
    },
    "mnist1d-cnn": {
        "description": "long-tailed MNIST-1D (IF 100), small 1-D CNN with global max pooling, Adam 3e-3 with"
                       " cosine decay and weight decay 1e-3, 600 steps of 64",
        "datamodule": "lightning_balance.experiments.mnist1d.LongTailMNIST1D",
        "datamodule_args": {"n_max": 500, "imbalance_factor": 100.0, "val_per_class": 500},
        "model": "lightning_balance.experiments.mnist1d.CNN1DClassifier",
        "model_args": {"channels": 32, "lr": 0.003, "weight_decay": 0.001, "pooling": "max", "schedule": "cosine"},
        "max_steps": 600, "val_every": 25, "split": "absolute",
    },
}


# ----------------------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------------------
def tail_loss_rise(curve: list[dict[str, Any]], window: int = SMOOTH) -> float:
    """How far the smoothed tail validation loss ends above its minimum (the runner's own measure)."""
    return smoothed_rise([p["loss_tail"] for p in curve], window)


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of the per-seed differences ``a - b`` and its 95% t interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"diffs": d.tolist(), "mean": mean, "half_width": math.nan, "low": math.nan, "high": math.nan}
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return {"diffs": d.tolist(), "mean": mean, "half_width": half, "low": mean - half, "high": mean + half}


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


# ----------------------------------------------------------------------------------------------------------
# One evaluation
# ----------------------------------------------------------------------------------------------------------
def _resolve(path_or_cls: Any, argument: str) -> Any:
    return import_object(path_or_cls, argument) if isinstance(path_or_cls, str) else path_or_cls


def merge(candidate: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``candidate`` with ``override`` applied (``*_args`` dicts are updated key by key)."""
    merged = copy.deepcopy(candidate)
    for key, value in override.items():
        if key.endswith("_args") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def evaluate(candidate: dict[str, Any], seeds: list[int], progress: bool = False) -> dict[str, Any]:
    """Run the default comparison of ``candidate`` over ``seeds`` and measure every condition."""
    data = ComponentSpec(_resolve(candidate["datamodule"], "--datamodule"), dict(candidate["datamodule_args"]))
    model = None
    if candidate.get("model") is not None:
        model = ComponentSpec(_resolve(candidate["model"], "--model"), dict(candidate["model_args"]), "--model")
    settings = CompareSettings(seeds=list(seeds), max_steps=int(candidate["max_steps"]),
                               val_every=int(candidate["val_every"]), split=candidate.get("split", "absolute"))
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = compare(data, model, runs=default_runs(5.0, 0.5), settings=settings, progress=progress)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    load_after = os.getloadavg()

    counts = result.settings["group_counts"]
    split = long_tail_split(counts, split=settings.split)
    split_classes = {k: v.tolist() for k, v in split.items()}

    runs = []
    for run in result.runs:
        runs.append({
            "name": run.name, "label": run.label, "seed": run.seed, "wall_time_s": run.wall_time_s,
            "steps": run.steps, **{k: run.final[k] for k in (
                "recall_head", "recall_medium", "recall_tail", "recall_macro", "recall_worst",
                "loss_head", "loss_medium", "loss_tail", "loss_all")},
            "tail_loss_rise": tail_loss_rise(run.curve), "tail_loss_min_step": run.tail_loss_min_step,
            "curve": [{k: p[k] for k in ("step", "recall_head", "recall_medium", "recall_tail", "loss_head",
                                         "loss_tail")} for p in run.curve],
        })

    def column(name: str, key: str) -> list[float]:
        return [r[key] for r in sorted((r for r in runs if r["name"] == name), key=lambda r: r["seed"])]

    names = list(dict.fromkeys(r["name"] for r in runs))
    summary = {}
    for name in names:
        row: dict[str, Any] = {"label": next(r["label"] for r in runs if r["name"] == name)}
        for key in ("recall_head", "recall_medium", "recall_tail", "recall_macro", "loss_tail", "tail_loss_rise",
                    "wall_time_s"):
            row[key] = mean_std(column(name, key))
        summary[name] = row
    comparisons = {
        "head: natural - upsample": paired(column("natural", "recall_head"), column("upsample", "recall_head")),
        "tail: upsample - natural": paired(column("upsample", "recall_tail"), column("natural", "recall_tail")),
        "tail loss rise: upsample - natural": paired(column("upsample", "tail_loss_rise"),
                                                     column("natural", "tail_loss_rise")),
        "head: natural - upweight": paired(column("natural", "recall_head"), column("upweight", "recall_head")),
        "tail: upweight - natural": paired(column("upweight", "recall_tail"), column("natural", "recall_tail")),
        "head: cooldown - upsample": paired(column("cooldown", "recall_head"), column("upsample", "recall_head")),
        "tail: cooldown - natural": paired(column("cooldown", "recall_tail"), column("natural", "recall_tail")),
        "macro: cooldown - natural": paired(column("cooldown", "recall_macro"), column("natural", "recall_macro")),
    }
    conditions = {
        "splits_non_empty": all(len(v) > 0 for v in split_classes.values()),
        "head_below_ceiling": all(summary[n]["recall_head"][0] <= HEAD_CEILING for n in names),
        "head_natural_over_upsample": comparisons["head: natural - upsample"]["low"] > 0,
        "tail_upsample_over_natural": comparisons["tail: upsample - natural"]["low"] > 0,
        "tail_overfits_more_under_upsample": comparisons["tail loss rise: upsample - natural"]["low"] > 0,
        "under_time_budget": total < TIME_BUDGET_S,
    }
    # The weaker reading (the mean difference has the right sign), reported beside the strict one.
    sign_only = {
        "head_natural_over_upsample": comparisons["head: natural - upsample"]["mean"] > 0,
        "tail_upsample_over_natural": comparisons["tail: upsample - natural"]["mean"] > 0,
        "tail_overfits_more_under_upsample": comparisons["tail loss rise: upsample - natural"]["mean"] > 0,
    }
    return {
        "seeds": list(seeds), "group_counts": counts, "split": settings.split, "split_classes": split_classes,
        "total_time_s": total, "total_cpu_time_s": cpu, "loadavg_before": load_before, "loadavg_after": load_after,
        "summary": summary, "comparisons": comparisons, "conditions": conditions, "all_hold": all(conditions.values()),
        "sign_only": sign_only, "runs": runs,
    }


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def _describe(candidate: dict[str, Any]) -> dict[str, Any]:
    def name(x: Any) -> Any:
        return x if isinstance(x, str) or x is None else f"{_HERE_MODULE}.{x.__qualname__}"

    return {**candidate, "datamodule": name(candidate["datamodule"]), "model": name(candidate.get("model"))}


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"evaluations": []}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def save(store: dict[str, Any], path: Path) -> None:
    """Write the store: numbers to 4 decimals, validation curves kept for the chosen candidate only."""
    for e in store["evaluations"]:
        if e["label"] != CHOSEN:
            for run in e["result"]["runs"]:
                run.pop("curve", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_rounded(store), separators=(",", ":")))


def record(store: dict[str, Any], entry: dict[str, Any]) -> None:
    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return e["label"], e["phase"], tuple(e["result"]["seeds"])

    store["evaluations"] = [e for e in store["evaluations"] if key(e) != key(entry)] + [entry]


def _pm(pair: tuple[float, float], digits: int = 3) -> str:
    mean, std = pair
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def _ci(c: dict[str, Any], digits: int = 3) -> str:
    return f"{c['mean']:+.{digits}f} [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _config_line(config: dict[str, Any]) -> str:
    parts = [f"data `{config['datamodule'].rsplit('.', 1)[-1]}({_kw(config['datamodule_args'])})`"]
    model = config.get("model")
    parts.append(f"model `{model.rsplit('.', 1)[-1]}({_kw(config['model_args'])})`" if model else
                 "model: MLP sized from the data")
    parts.append(f"{config['max_steps']} steps, validation every {config['val_every']}, split {config['split']}")
    return "; ".join(parts)


def _kw(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def evaluation_markdown(e: dict[str, Any]) -> list[str]:
    r = e["result"]
    lines = [f"#### `{e['label']}`, {e['phase']} (seeds {', '.join(map(str, r['seeds']))}; code at"
             f" {e.get('commit', 'unknown')}, {e['date'][:10]})", "",
             _config_line(e["config"]) + ".", "",
             f"Training counts {r['group_counts']}; {r['split']} split: "
             + ", ".join(f"{k} = classes {v}" for k, v in r["split_classes"].items()) + ".", "",
             "| strategy | head recall | medium recall | tail recall | macro recall | tail loss (final) |"
             " tail loss rise (smoothed) | wall per run (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in r["summary"].items():
        lines.append(f"| {name} ({row['label']}) | {_pm(row['recall_head'])} | {_pm(row['recall_medium'])} |"
                     f" {_pm(row['recall_tail'])} | {_pm(row['recall_macro'])} | {_pm(row['loss_tail'], 2)} |"
                     f" {_pm(row['tail_loss_rise'], 2)} | {_pm(row['wall_time_s'], 1)} |")
    lines += ["", "| paired difference | per seed | mean [95% t interval] |", "|---|---|---|"]
    for name, c in r["comparisons"].items():
        lines.append(f"| {name} | {', '.join(f'{d:+.3f}' for d in c['diffs'])} | {_ci(c)} |")
    cpu = f", {r['total_cpu_time_s']:.0f} s of CPU time" if "total_cpu_time_s" in r else ""
    lines += ["", f"Whole comparison: {r['total_time_s']:.0f} s wall{cpu} ({len(r['runs'])} runs; 1-minute load"
                  f" average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after, on"
                  f" {os.cpu_count()} cores).", "",
              "| condition | holds |", "|---|---|"]
    for name, ok in r["conditions"].items():
        extra = ""
        if name in r["sign_only"] and not ok:
            extra = f" (mean difference has the right sign: {'yes' if r['sign_only'][name] else 'no'})"
        lines.append(f"| {name} | {_mark(ok)}{extra} |")
    lines += ["", f"**All conditions hold: {_mark(r['all_hold'])}.**", ""]
    return lines


def overview_markdown(evaluations: list[dict[str, Any]]) -> list[str]:
    lines = ["| label | phase | seeds | code | head recall nat / up | tail recall nat / up | head nat − up [t CI] |"
             " tail up − nat [t CI] | tail loss rise up − nat [t CI] | total s | all hold |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in evaluations:
        r = e["result"]
        s, c = r["summary"], r["comparisons"]
        nat, up = s["natural"], s["upsample"]
        lines.append(
            f"| `{e['label']}` | {e['phase']} | {','.join(map(str, r['seeds']))} | {e.get('commit', '?')}"
            f" | {nat['recall_head'][0]:.3f} / {up['recall_head'][0]:.3f}"
            f" | {nat['recall_tail'][0]:.3f} / {up['recall_tail'][0]:.3f}"
            f" | {_ci(c['head: natural - upsample'])} | {_ci(c['tail: upsample - natural'])}"
            f" | {_ci(c['tail loss rise: upsample - natural'], 2)} | {r['total_time_s']:.0f}"
            f" | {_mark(r['all_hold'])} |")
    return lines


def render(store: dict[str, Any], out: Path) -> None:
    evaluations = store["evaluations"]
    chosen = [e for e in evaluations if e["label"] == CHOSEN]
    lines = ["# Embedded default task for `lightning-balance compare`", "",
             "Written by `benchmarks/embedded_default_study.py` (its docstring defines every condition). Each"
             " evaluation runs the default comparison (natural, upsample T=5, upweight T=5, Cooldown T=5→1 at"
             " 50%) through `lightning_balance.compare.compare` with one torch thread; recall is measured by"
             " `TailRecall` on a balanced validation set at the last step. Intervals are 95% t intervals of the"
             " per-seed paired differences (`scipy.stats.t.ppf(0.975, n-1)`); a condition on a difference holds"
             " only when its interval excludes 0. Tail loss rise: final minus minimum of the tail validation loss"
             f" smoothed by a trailing mean over {SMOOTH} validation points.", ""]
    if store.get("machine"):
        m = store["machine"]
        lines += [f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, torch {m['torch']},"
                  f" torch threads 1.", ""]
    if chosen:
        final = {e["phase"]: e for e in chosen}
        verdicts = ", ".join(f"{phase}: {'all conditions hold' if e['result']['all_hold'] else 'NOT all hold'}"
                             for phase, e in final.items())
        lines += ["## Chosen", "", f"`{CHOSEN}` — {chosen[0]['config']['description']} ({verdicts}).", "",
                  _config_line(chosen[0]["config"]) + ".", ""]
        others = [e for e in evaluations if e["phase"] == "confirm" and e["label"] != CHOSEN]
        if others:
            lines += ["Other configurations confirmed on fresh seeds (details below): " + "; ".join(
                f"`{e['label']}` on seeds {', '.join(map(str, e['result']['seeds']))}:"
                f" {'all conditions hold' if e['result']['all_hold'] else 'fails '}"
                + ", ".join(k for k, ok in e["result"]["conditions"].items() if not ok)
                for e in others) + ".", ""]
        for e in sorted(chosen, key=lambda e: (e["phase"] != "tuning", e["result"]["seeds"])):
            lines += evaluation_markdown(e)
    passing = sorted({e["label"] for e in evaluations if e["phase"] == "tuning" and e["result"]["all_hold"]})
    lines += ["## Reproduce", "", "```bash",
              "python benchmarks/embedded_default_study.py --phase tuning --candidates " + " ".join(CANDIDATES),
              f"python benchmarks/embedded_default_study.py --phase confirm --candidates {CHOSEN}",
              f"python benchmarks/embedded_default_study.py --phase confirm --candidates {CHOSEN} --seeds 20 21 22",
              "# the same comparison through the command line:",
              "lightning-balance compare --datamodule lightning_balance.experiments.mnist1d.LongTailMNIST1D \\",
              "    --model lightning_balance.experiments.mnist1d.CNN1DClassifier --max-steps 600 --val-every 25"
              " --threads 1",
              "```", "",
              "Tuning variants were recorded with `--override JSON --label NAME` on a candidate; each evaluation"
              " below lists its full configuration.", ""]
    lines += ["## Every evaluation", "",
              "Tuning evaluations in which every condition holds: "
              + (", ".join(f"`{label}`" for label in passing) or "none") + ".", "",
              *overview_markdown(evaluations), ""]
    lines += ["## Details", ""]
    for e in evaluations:
        if e["label"] != CHOSEN:
            lines += evaluation_markdown(e)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{STEM}.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def _git_head() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="*", default=None, help=f"among {list(CANDIDATES)} (default: all)")
    parser.add_argument("--phase", choices=("tuning", "confirm"), default="tuning")
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="default: 0 1 2 for tuning, 10 11 12 for confirm")
    parser.add_argument("--override", default=None, help="JSON merged into the (single) candidate")
    parser.add_argument("--label", default=None, help="label of the evaluation (default: the candidate's name)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, 40 steps, temporary folder")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--commit", default=None,
                        help="commit of the code measured, for the record (default: this repository's HEAD)")
    args = parser.parse_args(argv)
    commit = args.commit or _git_head()

    out = Path(tempfile.mkdtemp()) if args.quick else args.out
    path = out / f"{STEM}.json"
    store = load(path)
    store["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__}
    if not args.render_only:
        names = args.candidates or list(CANDIDATES)
        if args.override and len(names) != 1:
            parser.error("--override applies to exactly one candidate")
        seeds = args.seeds or list(TUNING_SEEDS if args.phase == "tuning" else CONFIRM_SEEDS)
        for name in names:
            config = merge(CANDIDATES[name], json.loads(args.override) if args.override else {})
            if args.quick:
                seeds, config = seeds[:1], {**config, "max_steps": 40, "val_every": 10}
            label = args.label or name
            print(f"[{dt.datetime.now():%H:%M:%S}] {label} ({args.phase}, seeds {seeds})", flush=True)
            result = evaluate(config, seeds, progress=args.progress)
            entry = {"label": label, "candidate": name, "phase": args.phase, "config": _describe(config),
                     "commit": commit, "date": dt.datetime.now().isoformat(timespec="seconds"), "result": result}
            record(store, entry)
            print("\n".join(overview_markdown([entry])[2:]), flush=True)
            save(store, path)
    save(store, path)
    render(store, out)
    print(f"wrote {path} and {out / (STEM + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
