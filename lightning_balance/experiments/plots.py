r"""
Plots
^^^^^

The figures of a comparison, drawn with matplotlib's object API (no ``pyplot`` state, no display needed):

* :func:`plot_curves`: per-group validation loss and recall over training steps, one line per strategy (mean over
  seeds, band = ± std when there are several seeds), each line's best point marked: the lowest loss, the highest
  recall. This is the paper's picture: upsampling reaches the tail first, then the tail validation loss turns up.
* :func:`plot_tradeoff`: final head recall against tail recall, one point per strategy with std bars, the
  recommended strategy highlighted.
* :func:`plot_mixing`: for every run whose mixture changed during training (the adaptive ones), the sampling
  probability :math:`p_i` and the loss weight of every group over training, beside its per-group validation loss.
* :func:`plot_temperature_probs` and :func:`plot_variance_factor`: what the temperature does to the group
  probabilities, and the variance penalty :math:`F(T)` of upweighting against measured (and predicted) ratios.

Lines differ by style and marker as well as colour, so the figures read in grey. Every function returns the
``Figure`` and saves it when given a ``path``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from lightning_balance.experiments.runner import RunResult
from lightning_balance.temperature import scalarization_variance_factor, temperature_probs

__all__ = ["plot_curves", "plot_mixing", "plot_temperature_probs", "plot_tradeoff", "plot_variance_factor"]

PathLike = Union[str, Path]
_SPLITS = ("head", "medium", "tail")
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # an Agg canvas: saving never needs a display
    return figure


def _save(figure: Figure, path: Optional[PathLike]) -> Figure:
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Colour, line style and marker of every name: no two names share all three."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: {"color": cmap(i % 10), "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
                   "marker": _MARKERS[i % len(_MARKERS)]} for i, name in enumerate(names)}


def _number(value: Any) -> float:
    """``value`` as a float, NaN for ``None`` (JSON's NaN)."""
    return math.nan if value is None else float(value)


def _spread_words(seeds: int) -> str:
    return f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"


def log_steps_axis(ax: Axes, steps: Sequence[float]) -> None:
    """A log-scaled step axis whose tick labels never overlap, however short the run.

    Matplotlib labels minor ticks of a log axis that spans less than a decade, and they collide; here only a
    handful of round steps are labelled, spread evenly on the log scale.
    """
    finite = [s for s in steps if s and s > 0]
    if not finite:
        return
    low, high = min(finite), max(finite)
    ax.set_xscale("log")
    ax.set_xlim(low / 1.15, high * 1.15)
    candidates = sorted({m * 10**e for e in range(int(math.floor(math.log10(low))) - 1,
                                                    int(math.ceil(math.log10(high))) + 1)
                         for m in (1, 2, 5)})
    ticks = [t for t in candidates if low / 1.15 <= t <= high * 1.15]
    distinct = sorted(set(finite))
    if len(distinct) <= 6 and all(b / a >= 1.25 for a, b in itertools.pairwise(distinct)):
        ticks = distinct  # a short run: label every validation step (they are far enough apart on the log axis)
    if len(ticks) < 2:
        ticks = sorted({round(low), round(high)})
    while len(ticks) > 6:
        ticks = ticks[::2]
    if ticks[0] / low >= 1.6:
        ticks = [low, *ticks]  # the first validation, when it sits well clear of the first round step
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _mean_curve(group: Sequence[RunResult], key: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    steps = sorted({p["step"] for run in group for p in run.curve})
    values = np.full((len(group), len(steps)), np.nan)
    for i, run in enumerate(group):
        for point in run.curve:
            value = point.get(key)
            values[i, steps.index(point["step"])] = np.nan if value is None else value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every seed has NaN
        return steps, np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def plot_curves(runs: Sequence[RunResult], path: Optional[PathLike] = None) -> Figure:
    """Validation loss (top) and recall (bottom) of the head, medium and tail groups over optimizer steps.

    Each strategy is one line: the mean over its seeds at every validation step, with a ± std band when there are
    several seeds, and a marker at its best point (the lowest loss, the highest recall), the paper's figure.
    Diverged runs are left out (their losses are not numbers); a strategy whose every seed diverged says so in the
    legend.
    """
    names = list(dict.fromkeys(run.name for run in runs))
    diverged = {name for name in names if all(run.diverged for run in runs if run.name == name)}
    runs = [run for run in runs if not run.diverged]
    styles = _styles(names)
    figure = _figure(13, 7)
    axes = figure.subplots(2, 3, sharex=True)
    all_steps = sorted({p["step"] for run in runs for p in run.curve})
    for name in names:
        group = [run for run in runs if run.name == name and run.curve]
        if not group:
            continue
        style = styles[name]
        every = max(1, len(group[0].curve) // 6)
        for row, kind in enumerate(("loss", "recall")):
            for col, split in enumerate(_SPLITS):
                steps, mean, std = _mean_curve(group, f"{kind}_{split}")
                ax = axes[row, col]
                ax.plot(steps, mean, color=style["color"], linestyle=style["linestyle"], marker=style["marker"],
                        markevery=every, markersize=4, lw=1.5, label=f"{name} ({group[0].label})")
                if len(group) > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=style["color"], alpha=0.12, lw=0)
                if np.isfinite(mean).any():
                    peak = int(np.nanargmin(mean) if kind == "loss" else np.nanargmax(mean))
                    ax.plot([steps[peak]], [mean[peak]], marker="*", markersize=12, color=style["color"],
                            markeredgecolor="black", markeredgewidth=0.6, linestyle="none", zorder=5)
    for col, split in enumerate(_SPLITS):
        axes[0, col].set_title(f"{split} groups")
        axes[1, col].set_xlabel("optimizer step (log scale)")
        axes[1, col].set_ylim(-0.02, 1.02)
        log_steps_axis(axes[1, col], all_steps)
    axes[0, 0].set_ylabel("validation loss (cross-entropy)")
    axes[1, 0].set_ylabel("validation recall")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for name in sorted(diverged):
        style = styles[name]
        axes[1, 2].plot([], [], color=style["color"], linestyle=style["linestyle"], marker=style["marker"],
                        label=f"{name}: diverged in every seed")
    axes[1, 2].plot([], [], marker="*", markersize=10, color="grey", markeredgecolor="black", linestyle="none",
                    label="best point (lowest loss, highest recall)")
    handles, labels = axes[1, 2].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 4), frameon=False,
                      fontsize=8)
    seeds = max((sum(1 for run in runs if run.name == n) for n in names), default=0)
    figure.suptitle(f"Per-group validation loss and recall ({_spread_words(seeds)})")
    return _save(figure, path)


def plot_tradeoff(
    summary: Sequence[Mapping[str, Any]], path: Optional[PathLike] = None, highlight: Optional[str] = None,
    label_groups: bool = True,
) -> Figure:
    """Final head recall (x) against tail recall (y), one point per strategy, with ± std bars (diverged seeds out).

    ``highlight`` (the recommended strategy) is ringed and named in the title. Both axes end at 1.
    """
    figure = _figure(7, 6.5)
    ax = figure.subplots()
    styles = _styles([row["name"] for row in summary])
    which = "best validation" if summary and summary[0].get("select") == "best" else "final"
    measure = "recall" if label_groups else "accuracy"
    xs, ys = [], []
    for row in summary:
        x, y = _number(row["recall_head_mean"]), _number(row["recall_tail_mean"])
        if not (np.isfinite(x) and np.isfinite(y)):
            continue  # every seed diverged: nothing to place
        xs.append(x)
        ys.append(y)
        style = styles[row["name"]]
        xerr, yerr = (_number(row[key]) for key in ("recall_head_std", "recall_tail_std"))
        bars = ax.errorbar(x, y, xerr=xerr if np.isfinite(xerr) else None, yerr=yerr if np.isfinite(yerr) else None,
                           fmt=style["marker"], capsize=3, color=style["color"], markersize=7,
                           label=f"{row['name']} ({row['label']})")
        for artist in (bars[0], *bars[1], *bars[2]):
            artist.set_clip_on(False)  # a point at recall 1 sits on the edge, not beyond it
        if row["name"] == highlight:
            ax.plot([x], [y], marker="o", markersize=18, markerfacecolor="none", markeredgecolor="black",
                    markeredgewidth=1.8, linestyle="none", label=f"recommended: {row['name']}", zorder=6,
                    clip_on=False)
    if xs:
        # Recall ends at 1: the axes never go past it.
        for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
            pad = max(0.03, (max(values) - min(values)) * 0.2)
            setter(max(0.0, min(values) - pad), min(1.0, max(values) + pad))
        natural = next((row for row in summary if row["name"] == "natural"), None)
        head = _number(natural["recall_head_mean"]) if natural is not None else math.nan
        if np.isfinite(head):
            # --prefer balanced: the strategies in this band keep the head within 1 point of natural sampling's.
            ax.axvspan(head - 0.01, ax.get_xlim()[1], color="grey", alpha=0.12, lw=0,
                       label="head within 1 point of natural's")
    ax.set_xlabel(f"head {measure} ({which})")
    ax.set_ylabel(f"tail {measure} ({which})")
    ax.grid(alpha=0.3)
    if summary:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            figure.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
        title = f"Head vs tail {measure} ({_spread_words(summary[0]['seeds'])})"
        ax.set_title(title + (f"; recommended: {highlight}" if highlight else ""), fontsize=10)
    return _save(figure, path)


def plot_mixing(runs: Sequence[RunResult], path: Optional[PathLike] = None,
                group_counts: Optional[Sequence[int]] = None) -> Figure:
    """For every strategy whose mixture changed during training: sampling probability and loss weight of every group
    over training (left, middle), beside its per-group validation loss (right); the first seed of each.

    Groups are coloured from the largest (dark) to the smallest (light).
    """
    from matplotlib import colormaps

    names = [n for n in dict.fromkeys(r.name for r in runs)
             if any(r.mixing for r in runs if r.name == n)]
    figure = _figure(13, 3.2 * max(1, len(names)) + 0.8)
    axes = np.atleast_2d(figure.subplots(max(1, len(names)), 3, squeeze=False))
    for row, name in enumerate(names):
        run = next(r for r in runs if r.name == name and r.curve)
        steps = [p["step"] for p in run.curve]
        k = len(run.curve[0].get("probs") or run.curve[0].get("per_group_loss") or [])
        colors = colormaps["viridis"](np.linspace(0.0, 0.9, max(k, 1)))
        for g in range(k):
            label = f"group {g}" + (f" (n={group_counts[g]})" if group_counts is not None else "")
            style = {"color": colors[g], "linestyle": _LINESTYLES[g % len(_LINESTYLES)], "lw": 1.4}
            probs = [p["probs"][g] if p.get("probs") else np.nan for p in run.curve]
            weights = [p["loss_weights"][g] if p.get("loss_weights") else 1.0 for p in run.curve]
            losses = [p["per_group_loss"][g] if p.get("per_group_loss") else np.nan for p in run.curve]
            axes[row, 0].plot(steps, probs, label=label, **style)
            axes[row, 1].plot(steps, weights, **style)
            axes[row, 2].plot(steps, losses, **style)
        axes[row, 0].set_yscale("log")
        axes[row, 0].set_ylabel(f"{name}\n$p_i$ (sampling)")
        axes[row, 1].set_ylabel("loss weight $w_i$")
        axes[row, 2].set_ylabel("validation loss")
        axes[row, 0].set_title(f"{name} ({run.label}), seed {run.seed}: group probabilities", fontsize=9)
        axes[row, 1].set_title("policy loss weights", fontsize=9)
        axes[row, 2].set_title("per-group validation loss", fontsize=9)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            log_steps_axis(ax, steps)
            ax.set_xlabel("optimizer step (log scale)")
    if names:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 5), frameon=False,
                      fontsize=8)
    else:
        axes[0, 0].text(0.5, 0.5, "no run changed its mixture", ha="center", transform=axes[0, 0].transAxes)
    figure.suptitle("Adaptive mixing: what each policy did to every group")
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
    hatches = ("", "//", "..", "xx", "\\\\", "--")
    for k, t in enumerate(temperatures):
        ax.bar(positions + (k - (len(temperatures) - 1) / 2) * width, temperature_probs(counts, t).numpy(),
               width=width, label=f"T={t:g}", hatch=hatches[k % len(hatches)], edgecolor="white", lw=0.3)
    ax.set_xticks(positions, [f"{i}\n(n={n})" for i, n in enumerate(counts)], fontsize=8)
    ax.set_xlabel("group (training examples)")
    ax.set_ylabel("sampling probability $p_i(T)$")
    ax.set_yscale("log")
    ax.set_title("Group probabilities at each temperature", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def plot_variance_factor(
    counts: Sequence[int], temperatures: Sequence[float] = tuple(np.linspace(1, 10, 37)),
    measured: Optional[Mapping[float, float]] = None, path: Optional[PathLike] = None,
    predicted: Optional[Mapping[float, float]] = None, title: Optional[str] = None,
) -> Figure:
    r""":math:`F(T) = \sum_i p_i(T)^2 / p_i(1)` over temperatures, with measured (and predicted) variance ratios.

    Args:
        counts: group sizes.
        temperatures: where to draw :math:`F(T)`.
        measured: measured Var(upweight) / Var(upsample) by temperature.
        path: where to save.
        predicted: the prediction from the measured per-group gradient moments, by temperature.
        title: the figure's title (the setting it was measured on).
    """
    figure = _figure(6.5, 4.2)
    ax = figure.subplots()
    ts = list(temperatures)
    ax.plot(ts, [scalarization_variance_factor(counts, t) for t in ts], label="theory $F(T)$ (equal moments)",
            color="C0")
    if predicted:
        ax.plot(list(predicted), list(predicted.values()), "s--", color="C2", markersize=6, markerfacecolor="none",
                label="predicted from the measured group moments")
    if measured:
        ax.plot(list(measured), list(measured.values()), "o", color="C1", markersize=6,
                label="measured Var(upweight) / Var(upsample)")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("variance ratio, upweight / upsample")
    ax.set_title(title or "Gradient variance of upweighting over upsampling", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)
