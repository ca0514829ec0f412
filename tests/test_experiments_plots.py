"""The figures read well: tick labels that do not collide, lines told apart without colour, honest titles,
recall axes that end at 1, the best points and the recommendation marked."""

import itertools

import numpy as np
import pytest

from lightning_balance.experiments.plots import (
    log_steps_axis,
    plot_curves,
    plot_mixing,
    plot_tradeoff,
    plot_variance_factor,
)
from lightning_balance.experiments.runner import RunResult
from lightning_balance.experiments.summary import summarize

NAMES = ("natural", "upsample", "upweight", "cooldown", "upsample_t100", "unimax", "class_balanced", "drw")


def _curve(steps, offset, probs=None):
    points = []
    for i, step in enumerate(steps):
        tail_loss = 2.0 - 0.3 * i + 0.05 * i * i + offset  # falls, then turns up
        point = {"step": step, "recall_head": min(1.0, 0.9 + 0.01 * i), "recall_medium": 0.5, "recall_tail": 0.1 * i,
                 "loss_head": 1.0 / (i + 1), "loss_medium": 1.0, "loss_tail": tail_loss, "f1_tail": 0.1 * i,
                 "per_group_loss": [1.0, 2.0, tail_loss]}
        if probs is not None:
            point["probs"] = probs(i)
        points.append(point)
    return points


def _runs(steps, seeds=(0, 1), names=NAMES, head=(0.95, 0.9, 0.99, 1.0, 0.97, 0.93, 0.8, 0.9)):
    runs = []
    for k, name in enumerate(names):
        for seed in seeds:
            curve = _curve(steps, 0.01 * k + 0.02 * seed)
            final = {"recall_head": head[k % len(head)] - 0.01 * seed, "recall_tail": 0.3 + 0.05 * k,
                     "f1_tail": 0.3, "recall_worst": 0.1}
            runs.append(RunResult(name, f"label {k}", name, seed, steps[-1], 100, 1.0, 1, final, None, 1.0, None,
                                  curve))
    return runs


def _tick_boxes(figure, ax):
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text() and t.get_visible()]
    return labels, [t.get_window_extent(renderer) for t in labels]


@pytest.mark.parametrize("steps", [[2, 4, 6], [3, 6], [5, 10, 15, 20, 25, 30], [25 * i for i in range(1, 25)],
                                   [20 * i for i in range(1, 51)]])
def test_log_step_ticks_never_overlap(steps):
    figure = plot_curves(_runs(steps, names=NAMES[:2]))
    for ax in figure.axes[3:6]:  # the bottom row carries the step labels
        labels, boxes = _tick_boxes(figure, ax)
        assert len(labels) >= 2
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), [t.get_text() for t in labels]
        low, high = ax.get_xlim()
        assert low <= steps[0] and steps[-1] <= high


def test_a_short_run_labels_its_validation_steps():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.plot([2, 4, 6], [1, 2, 3])
    log_steps_axis(ax, [2, 4, 6])
    assert list(ax.get_xticks()) == [2, 4, 6]


def test_lines_differ_by_style_as_well_as_colour():
    figure = plot_curves(_runs([10, 20, 30]))
    lines = [line for line in figure.axes[0].get_lines() if line.get_label() and not line.get_label().startswith("_")]
    lines = [line for line in lines if len(line.get_xdata()) > 1]
    assert len(lines) == len(NAMES)
    looks = {(str(line.get_linestyle()), line.get_marker()) for line in lines}
    assert len(looks) == len(NAMES)  # in grey too, no two strategies look alike
    assert len({line.get_linestyle() for line in lines}) > 1 and len({line.get_marker() for line in lines}) > 1


def test_the_best_point_of_every_curve_is_marked():
    runs = _runs([10, 20, 30, 40, 50, 60], names=NAMES[:2])
    figure = plot_curves(runs)
    tail_loss = figure.axes[2]
    stars = [line for line in tail_loss.get_lines() if line.get_marker() == "*" and len(line.get_xdata()) == 1]
    assert len(stars) == 2
    for star in stars:
        # the tail loss falls to its minimum at the 4th validation (step 40), then turns up
        assert star.get_xdata()[0] == 40


@pytest.mark.parametrize(("seeds", "words"), [((0,), "one seed"), ((0, 1, 2), "mean ± std over 3 seeds")])
def test_titles_say_how_many_seeds(seeds, words):
    runs = _runs([10, 20], seeds=seeds, names=NAMES[:3])
    curves = plot_curves(runs)
    tradeoff = plot_tradeoff(summarize(runs))
    assert words in curves.texts[0].get_text() or words in curves._suptitle.get_text()
    assert words in tradeoff.axes[0].get_title()
    if len(seeds) == 1:
        assert "±" not in curves._suptitle.get_text() and "±" not in tradeoff.axes[0].get_title()


def test_tradeoff_axes_end_at_one_and_the_recommendation_is_highlighted():
    runs = _runs([10, 20])
    figure = plot_tradeoff(summarize(runs), highlight="cooldown")
    ax = figure.axes[0]
    assert ax.get_xlim()[1] <= 1.0 and ax.get_ylim()[1] <= 1.0
    assert "recommended: cooldown" in ax.get_title()
    ringed = [line for line in ax.get_lines() if line.get_label() == "recommended: cooldown"]
    assert len(ringed) == 1 and ringed[0].get_xdata()[0] == pytest.approx(0.995)  # cooldown's head recall
    # error bars: one per strategy with more than one seed
    assert len(ax.containers) == len(NAMES)


def test_variance_plot_is_titled_and_shows_the_prediction():
    counts = [500, 50, 5]
    figure = plot_variance_factor(counts, measured={1.0: 1.0, 5.0: 3.0}, predicted={1.0: 1.0, 5.0: 2.8},
                                  title="on the digits")
    ax = figure.axes[0]
    assert ax.get_title() == "on the digits"
    labels = [line.get_label() for line in ax.get_lines()]
    assert any("predicted" in label for label in labels) and any("measured" in label for label in labels)
    assert "theory $F(T)$ (equal moments)" in labels


def test_mixing_plot_shows_the_probabilities_of_every_adaptive_run():
    steps = [10, 20, 30]
    runs = _runs(steps, seeds=(0,), names=("natural", "overfit_guard", "online_mixing"))
    for run in runs[1:]:
        run.mixing = [{"step": 10, "probs": [0.5, 0.3, 0.2]}]
        run.curve = _curve(steps, 0.0, probs=lambda i: [0.5 - 0.1 * i, 0.3, 0.2 + 0.1 * i])
    figure = plot_mixing(runs, group_counts=[300, 30, 3])
    rows = [ax for ax in figure.axes if "group probabilities" in ax.get_title()]
    assert [ax.get_title().split(" ")[0] for ax in rows] == ["overfit_guard", "online_mixing"]
    probs = [line.get_ydata() for line in rows[0].get_lines()]
    assert len(probs) == 3 and np.allclose(probs[2], [0.2, 0.3, 0.4])
