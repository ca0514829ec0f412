r"""
Plots
^^^^^

The figures of a comparison, drawn with matplotlib's object API (no ``pyplot`` state, no display needed):

* :func:`plot_curves`: per-group validation loss and recall over training steps, one line per strategy
  (mean over seeds, band = ± std). This is the paper's picture: upsampling reaches the tail first, then the
  tail validation loss turns up.
* :func:`plot_tradeoff`: the final head recall against tail recall, one point per strategy with std bars.
* :func:`plot_temperature_probs` and :func:`plot_variance_factor`: what the temperature does to the group
  probabilities, and the variance penalty :math:`F(T)` of upweighting.

Every function returns the ``Figure`` and saves it when given a ``path``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_balance.compare import RunResult
from lightning_balance.temperature import scalarization_variance_factor, temperature_probs

__all__ = ["plot_curves", "plot_temperature_probs", "plot_tradeoff", "plot_variance_factor"]

PathLike = Union[str, Path]
_SPLITS = ("head", "medium", "tail")


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # an Agg canvas: saving never needs a display
    return figure


def _save(figure: Figure, path: Optional[PathLike]) -> Figure:
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def plot_curves(runs: Sequence[RunResult], path: Optional[PathLike] = None) -> Figure:
    """Validation loss (top) and recall (bottom) of the head, medium and tail classes over optimizer steps.

    Each strategy is one line: the mean over its seeds at every validation step, with a ± std band. Diverged
    runs are left out (their losses are not numbers); a strategy whose every seed diverged says so in the legend.
    """
    names = list(dict.fromkeys(run.name for run in runs))
    diverged = {name for name in names if all(run.diverged for run in runs if run.name == name)}
    runs = [run for run in runs if not run.diverged]
    colors = _colors(names)
    # Strategies that share a seed share their start (Cooldown is upsampling until it switches): dashes keep the
    # line underneath visible.
    styles = {name: ("-", "--", "-.", ":")[i % 4] for i, name in enumerate(names)}
    figure = _figure(13, 6.5)
    axes = figure.subplots(2, 3, sharex=True)
    for name in names:
        group = [run for run in runs if run.name == name and run.curve]
        if not group:
            continue
        steps = sorted({p["step"] for run in group for p in run.curve})
        for row, kind in enumerate(("loss", "recall")):
            for col, split in enumerate(_SPLITS):
                key = f"{kind}_{split}"
                values = np.full((len(group), len(steps)), np.nan)
                for i, run in enumerate(group):
                    for point in run.curve:
                        values[i, steps.index(point["step"])] = point[key]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a step where every seed has NaN
                    mean = np.nanmean(values, axis=0)
                    std = np.nanstd(values, axis=0)
                ax = axes[row, col]
                ax.plot(steps, mean, color=colors[name], label=f"{name} ({group[0].label})", lw=1.6,
                        linestyle=styles[name])
                if len(group) > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=colors[name], alpha=0.15, lw=0)
    for col, split in enumerate(_SPLITS):
        axes[0, col].set_title(f"{split} classes")
        axes[1, col].set_xlabel("optimizer step (log scale)")
        # Log steps: the strategies part ways in the first few hundred steps, and the late rise stays visible.
        axes[1, col].set_xscale("log")
        axes[1, col].set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("validation loss (cross-entropy)")
    axes[1, 0].set_ylabel("validation recall")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for name in sorted(diverged):
        axes[1, 2].plot([], [], color=colors[name], linestyle=styles[name], label=f"{name}: diverged in every seed")
    handles, labels = axes[1, 2].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 5), frameon=False)
    seeds = max((sum(1 for run in runs if run.name == n) for n in names), default=0)
    figure.suptitle(f"Per-group validation loss and recall (mean ± std over {seeds} seed(s))")
    return _save(figure, path)


def plot_tradeoff(summary: Sequence[Mapping[str, Any]], path: Optional[PathLike] = None) -> Figure:
    """Final head recall (x) against tail recall (y), one point per strategy, with ± std bars (diverged seeds out)."""
    figure = _figure(6.5, 5)
    ax = figure.subplots()
    colors = _colors([row["name"] for row in summary])
    for row in summary:
        x, y = row["recall_head_mean"], row["recall_tail_mean"]
        if not (np.isfinite(x) and np.isfinite(y)):
            continue  # every seed diverged: nothing to place
        ax.errorbar(x, y, xerr=row["recall_head_std"], yerr=row["recall_tail_std"], fmt="o", capsize=4,
                    color=colors[row["name"]], label=f"{row['name']} ({row['label']})")
        ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel("head recall (final)")
    ax.set_ylabel("tail recall (final)")
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    if summary:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        ax.set_title(f"Head vs tail recall (mean ± std over {summary[0]['seeds']} seed(s))")
    return _save(figure, path)


def plot_temperature_probs(
    counts: Sequence[int], temperatures: Sequence[float] = (1.0, 2.0, 5.0, 10.0, float("inf")),
    path: Optional[PathLike] = None,
) -> Figure:
    """Group sampling probabilities :math:`p_i(T)` for several temperatures, groups sorted as given."""
    figure = _figure(8, 4)
    ax = figure.subplots()
    positions = np.arange(len(counts))
    width = 0.8 / len(temperatures)
    for k, t in enumerate(temperatures):
        ax.bar(positions + (k - (len(temperatures) - 1) / 2) * width, temperature_probs(counts, t).numpy(),
               width=width, label=f"T={t:g}")
    ax.set_xticks(positions, [f"{i}\n(n={n})" for i, n in enumerate(counts)], fontsize=8)
    ax.set_xlabel("group (training examples)")
    ax.set_ylabel("sampling probability $p_i(T)$")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def plot_variance_factor(
    counts: Sequence[int], temperatures: Sequence[float] = tuple(np.linspace(1, 10, 37)),
    measured: Optional[Mapping[float, float]] = None, path: Optional[PathLike] = None,
) -> Figure:
    r""":math:`F(T) = \sum_i p_i(T)^2 / p_i(1)` over temperatures, with measured variance ratios as points."""
    figure = _figure(6, 4)
    ax = figure.subplots()
    ts = list(temperatures)
    ax.plot(ts, [scalarization_variance_factor(counts, t) for t in ts], label="theory $F(T)$")
    if measured:
        ax.plot(list(measured), list(measured.values()), "o", label="measured Var(upweight) / Var(upsample)")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("variance ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)
