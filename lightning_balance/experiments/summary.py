r"""
Summaries, verdicts and the recommendation
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

From the runs of a comparison to an answer:

* :func:`summarize`: one row per strategy, mean and std over its seeds of every measurement (the final
  validation, or with ``select="best"`` every run's best validation by the preferred metric);
* :func:`paired_t` / :func:`paired_difference`: strategies are compared **seed by seed**. Every strategy trains
  the same seeds, and a seed fixes the model's initialisation (and, for strategies that sample alike, the sample
  stream), so the per-seed differences are paired and their mean gets a Student t interval;
* :func:`verdict`: upsample or upweight, in words;
* :func:`recommend`: which strategy to use for what ``--prefer`` asks, how sure that is (paired intervals against
  natural sampling and against the runner-up) and what it costs (wall time, samples, passes over every group);
* :func:`adaptive_goal`: whether an adaptive mixing policy beats every static strategy and Cooldown.

A diverged run is left out of every comparison and never wins one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from lightning_balance.experiments.runner import RunResult, best_point, ranking_metric
from lightning_balance.experiments.settings import ADAPTIVE_NAMES, METRICS, PREFERENCES

__all__ = [
    "CONFIDENCE",
    "HEAD_TOLERANCE",
    "adaptive_goal",
    "format_mean_std",
    "paired_difference",
    "paired_t",
    "recommend",
    "summarize",
    "verdict",
]

#: Confidence level of the t intervals in the verdicts.
CONFIDENCE = 0.95
#: ``--prefer balanced``: how far below natural sampling's head recall a strategy may be (1 point).
HEAD_TOLERANCE = 0.01
_METRIC_WORDS = {"f1_tail": "tail F1", "recall_tail": "tail recall", "recall_worst": "worst-group recall",
                 "recall_head": "head recall", "f1_head": "head F1"}


def format_mean_std(mean: Optional[float], std: Optional[float], digits: int = 3) -> str:
    """``"0.750 ± 0.020"``; ``"—"`` when there is no value.

    Example:
        >>> format_mean_std(0.75, 0.02), format_mean_std(float("nan"), 0.0), format_mean_std(120.0, 0.0, 0)
        ('0.750 ± 0.020', '—', '120 ± 0')
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _mean_std(values: Sequence[Optional[float]]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; the std of a single value is NaN."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else math.nan


def _rise(run: RunResult) -> float:
    if run.tail_loss_rise is not None:
        return run.tail_loss_rise
    return run.final.get("loss_tail", math.nan) - run.tail_loss_min  # a result built by hand, without its curve


def _best(run: RunResult, metric: str) -> dict[str, float]:
    if run.best and run.best_metric == metric:
        return run.best
    return best_point(run.curve, metric) if run.curve else {}


def summarize(runs: Sequence[RunResult], tail_target: float = 0.5, select: str = "final",
              metric: Optional[str] = None) -> list[dict[str, Any]]:
    """One row per strategy, in first-seen order: mean and std over its seeds of every measurement.

    Columns: ``name``, ``label``, ``seeds``, ``diverged`` (how many of those seeds diverged: their measurements
    are left out of every mean and std below), ``<metric>_mean`` / ``<metric>_std`` for the recall, F1 and
    validation loss of every split at the selected validation (``select="final"``: the last one, ``"best"``: the
    one with the highest ``metric``, the run's ``best_metric`` by default), ``select``, ``best_metric``,
    ``best_step_mean``/``_std`` and ``best_value_mean``/``_std`` / ``final_value_mean``/``_std`` (the best point's
    ``best_metric`` beside the final one's), ``wall_time_s``, ``steps``, ``samples_seen`` (over all seeds, diverged ones
    included),
    ``load_average_mean``, ``epochs_per_group_mean`` (a list, one mean per group), ``steps_to_tail_target`` (over
    the seeds that reached ``tail_target``; ``tail_target_reached`` counts them), ``tail_loss_min_step`` and
    ``tail_loss_rise`` (how far the smoothed tail validation loss ended above its minimum).

    Example:
        >>> run = RunResult("natural", "T=1", "natural", 0, 10, 320, 1.0, 1, {"recall_tail": 0.5}, 10, 1.0, 10, [])
        >>> row = summarize([run])[0]
        >>> row["recall_tail_mean"], row["recall_tail_std"], row["tail_target_reached"], row["diverged"]
        (0.5, nan, '1/1', 0)
    """
    rows = []
    for name in dict.fromkeys(run.name for run in runs):
        group = [run for run in runs if run.name == name]
        trained = [run for run in group if not run.diverged]
        key = metric or next((r.best_metric for r in group if r.best_metric), None) or "f1_tail"
        key = ranking_metric(key, trained[0].curve if trained else [])
        bests = {run.seed: _best(run, key) for run in trained}
        row: dict[str, Any] = {"name": name, "label": group[0].label, "seeds": len(group),
                               "diverged": len(group) - len(trained), "select": select, "best_metric": key}

        chosen = {r.seed: (bests[r.seed] or r.final) if select == "best" else r.final for r in trained}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([chosen[r.seed].get(m, math.nan) for r in trained])
        row["best_step_mean"], row["best_step_std"] = _mean_std([bests[r.seed].get("step") for r in trained])
        row["best_value_mean"], row["best_value_std"] = _mean_std([bests[r.seed].get(key) for r in trained])
        row["final_value_mean"], row["final_value_std"] = _mean_std([r.final.get(key, math.nan) for r in trained])
        for k in ("wall_time_s", "steps", "samples_seen"):
            row[f"{k}_mean"], row[f"{k}_std"] = _mean_std([float(getattr(r, k)) for r in group])
        loads = [v for r in group for v in (r.load_average or []) if v is not None]
        row["load_average_mean"] = float(np.mean(loads)) if loads else math.nan
        epochs = [r.epochs_per_group for r in trained if r.epochs_per_group]
        row["epochs_per_group_mean"] = [float(v) for v in np.mean(epochs, axis=0)] if epochs else None
        reached = [r.steps_to_tail_target for r in trained if r.steps_to_tail_target is not None]
        row["tail_target"] = tail_target
        row["steps_to_tail_target_mean"], row["steps_to_tail_target_std"] = _mean_std([float(s) for s in reached])
        row["tail_target_reached"] = f"{len(reached)}/{len(group)}"
        steps = [float(r.tail_loss_min_step) for r in trained if r.tail_loss_min_step is not None]
        row["tail_loss_min_step_mean"], row["tail_loss_min_step_std"] = _mean_std(steps)
        row["tail_loss_rise_mean"], row["tail_loss_rise_std"] = _mean_std([_rise(r) for r in trained])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Paired comparisons
# ----------------------------------------------------------------------------------------------------------
def paired_t(
    a: Mapping[int, Optional[float]], b: Mapping[int, Optional[float]], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    r"""Mean of the per-seed differences ``a[s] - b[s]`` with a Student t interval.

    Only seeds where both values are finite are paired. With ``n`` pairs, the interval is
    :math:`\bar d \pm t_{(1+c)/2,\,n-1}\, s_d/\sqrt n` (``scipy.stats.t.ppf``); with one pair it is NaN.

    Returns:
        ``difference`` (mean), ``pairs``, ``seeds``, ``std`` (of the differences), ``standard_error``,
        ``t_quantile``, ``half_width``, ``low``, ``high``, ``confidence``.

    Example:
        >>> out = paired_t({0: 0.80, 1: 0.75, 2: 0.70}, {0: 0.70, 1: 0.70, 2: 0.66})
        >>> round(out["difference"], 4), round(out["t_quantile"], 2), round(out["low"], 3), round(out["high"], 3)
        (0.0633, 4.3, -0.017, 0.143)
    """
    from scipy import stats

    seeds = sorted(s for s in a if s in b and _finite(a[s]) and _finite(b[s]))
    diffs = np.asarray([float(a[s]) - float(b[s]) for s in seeds], dtype=np.float64)  # type: ignore[arg-type]
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    std = se = quantile = half = math.nan
    if n >= 2:
        std = float(diffs.std(ddof=1))
        se = std / math.sqrt(n)
        quantile = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
        half = quantile * se
    return {"difference": mean, "pairs": n, "seeds": seeds, "std": std, "standard_error": se,
            "t_quantile": quantile, "half_width": half, "low": mean - half, "high": mean + half,
            "confidence": confidence, "all_equal": bool(n and np.all(diffs == 0))}


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def _values(runs: Sequence[RunResult], name: str, metric: str, select: str = "final",
            rank_by: Optional[str] = None) -> dict[int, float]:
    out = {}
    for run in runs:
        if run.name != name or run.diverged:
            continue
        metrics = (_best(run, rank_by or run.best_metric or metric) or run.final) if select == "best" else run.final
        out[run.seed] = metrics.get(metric, math.nan)
    return out


def paired_difference(
    runs: Sequence[RunResult], a: str, b: str, metric: str, confidence: float = CONFIDENCE, select: str = "final",
    rank_by: Optional[str] = None,
) -> dict[str, Any]:
    """:func:`paired_t` of ``metric`` of strategy ``a`` minus strategy ``b``, seed by seed.

    Diverged runs are left out, so a seed is paired only where both strategies trained. With ``select="best"``
    every run contributes its best validation by ``rank_by`` (its ``best_metric`` by default).

    Example:
        >>> def run(name, seed, recall):
        ...     return RunResult(name, "T", name, seed, 10, 320, 1.0, 1, {"recall_tail": recall}, None, 1.0, None, [])
        >>> runs = [run("upsample", s, r) for s, r in enumerate([0.8, 0.75, 0.7])]
        >>> runs += [run("upweight", s, r) for s, r in enumerate([0.7, 0.7, 0.66])]
        >>> round(paired_difference(runs, "upsample", "upweight", "recall_tail")["half_width"], 3)
        0.08
    """
    out = paired_t(_values(runs, a, metric, select, rank_by), _values(runs, b, metric, select, rank_by), confidence)
    out["metric"] = metric
    return out


def _interval(stat: Mapping[str, Any]) -> str:
    return (f"{stat['confidence']:.0%} CI {stat['low']:+.3f} to {stat['high']:+.3f}, paired over"
            f" {stat['pairs']} seeds")


def _compare_words(stat: Mapping[str, Any], higher: str, lower: str) -> str:
    diff = stat["difference"]
    if stat["pairs"] == 0 or math.isnan(diff):
        return "no value (no seed where both trained)"
    if stat["all_equal"]:
        return "equal in every seed"
    side = higher if diff > 0 else lower
    if stat["pairs"] == 1:
        return f"{side} ahead by {abs(diff):.3f} (one seed: no interval)"
    if stat["low"] > 0 or stat["high"] < 0:
        # The interval of the leader's lead, so that it reads with the words.
        lead = stat if diff > 0 else {**stat, "low": -stat["high"], "high": -stat["low"]}
        return f"{side} is better by {abs(diff):.3f} ({_interval(lead)})"
    return f"no clear difference ({diff:+.3f}, {_interval(stat)})"


def verdict(summary: Sequence[Mapping[str, Any]], runs: Sequence[RunResult] = (), select: str = "final") -> list[str]:
    """Plain-language lines answering "upsample or upweight?" (empty without both runs).

    Each metric is compared with :func:`paired_difference` over the seeds where both trained. A strategy that
    diverged in more seeds than the other never wins: its lead on the remaining seeds is reported as no win.
    """
    rows = {row["name"]: row for row in summary}
    if "upsample" not in rows or "upweight" not in rows:
        return []
    up, uw = rows["upsample"], rows["upweight"]
    lines = [f"Upsample vs upweight ({up['label']}):"]
    div_up, div_uw = up.get("diverged", 0), uw.get("diverged", 0)
    if div_up or div_uw:
        lines.append(f"  diverged (non-finite loss): upsample in {div_up}/{up['seeds']} seeds, upweight in"
                     f" {div_uw}/{uw['seeds']}")
    if div_up >= up["seeds"] and div_uw >= uw["seeds"]:
        lines.append("  no verdict: both diverged in every seed. Lower the learning rate (or clip the gradients)"
                     " and run again.")
        return lines
    for name, row, other in (("upsample", up, "upweight"), ("upweight", uw, "upsample")):
        if row.get("diverged", 0) >= row["seeds"]:
            lines.append(f"  {other} is the one that trains: {name} diverged in every seed.")
            return lines
    metrics: tuple[tuple[str, str], ...] = (("recall_tail", "tail recall"), ("recall_head", "head recall"),
                                            ("f1_tail", "tail F1"), ("recall_worst", "worst-class recall"))
    if not runs:
        lines.append("  (the metrics are compared seed by seed: pass the runs too,"
                     " verdict(result.summary, result.runs))")
        metrics = ()
    for metric, words in metrics:
        stat = paired_difference(runs, "upsample", "upweight", metric, select=select)
        if stat["pairs"] == 0:
            continue  # not measured (F1 of groups that are not the labels)
        text = _compare_words(stat, "upsample", "upweight")
        leader = "upsample" if stat["difference"] > 0 else "upweight"
        diverged_more = div_up > div_uw if leader == "upsample" else div_uw > div_up
        if diverged_more and not stat["all_equal"] and not math.isnan(stat["difference"]):
            text = (f"{leader} ahead by {abs(stat['difference']):.3f} on the {stat['pairs']} seeds where both"
                    f" trained, but it diverged in more seeds: no win")
        lines.append(f"  {words}: {text}")
    target = up["tail_target"]
    s_up, s_uw = up["steps_to_tail_target_mean"], uw["steps_to_tail_target_mean"]
    reach = f"  steps to tail recall ≥ {target:g}: upsample {format_mean_std(s_up, up['steps_to_tail_target_std'], 0)}"
    reach += f" ({up['tail_target_reached']}), upweight {format_mean_std(s_uw, uw['steps_to_tail_target_std'], 0)}"
    lines.append(reach + f" ({uw['tail_target_reached']})")
    rise_up, rise_uw = up["tail_loss_rise_mean"], uw["tail_loss_rise_mean"]
    if not (math.isnan(rise_up) or math.isnan(rise_uw)):
        text = (f"  smoothed tail validation loss ended above its minimum by {rise_up:.3f} (upsample) and"
                f" {rise_uw:.3f} (upweight)")
        natural = rows.get("natural")
        if natural is not None and not math.isnan(natural["tail_loss_rise_mean"]):
            text += f", {natural['tail_loss_rise_mean']:.3f} (natural, the reference)"
            rises = {name: {r.seed: r.tail_loss_rise for r in runs if r.name == name and not r.diverged}
                     for name in ("upsample", "natural")}
            stat = paired_t(rises["upsample"], rises["natural"])
            if stat["pairs"] >= 2:
                more = stat["low"] > 0
                text += (f"; upsample minus natural {stat['difference']:+.3f} ({_interval(stat)}):"
                         + (" the tail overfits under upsampling" if more else " no more than natural's rise"))
        lines.append(text + ".")
    return lines


# ----------------------------------------------------------------------------------------------------------
# The recommendation
# ----------------------------------------------------------------------------------------------------------
def _ci_words(stat: Mapping[str, Any]) -> str:
    if stat["pairs"] < 2:
        return f"{stat['difference']:+.3f} (one seed: no interval)"
    return f"{stat['difference']:+.3f}, {stat['confidence']:.0%} CI {stat['low']:+.3f} to {stat['high']:+.3f}"


def recommend(
    summary: Sequence[Mapping[str, Any]], runs: Sequence[RunResult], prefer: str = "balanced",
    select: str = "final", metric: Optional[str] = None,
) -> dict[str, Any]:
    """Which strategy answers ``prefer``, how sure that is, and what it costs.

    * ``prefer="balanced"``: the highest tail F1 among the strategies whose head recall (mean over seeds) is at
      most :data:`HEAD_TOLERANCE` below natural sampling's; ``"tail"``: the highest tail F1; ``"worst"``: the
      highest worst-group recall; ``"head"``: the highest head recall. Where F1 was not measured (groups that are
      not the labels), tail F1 is replaced by tail accuracy. Strategies that diverged in any seed are out.
    * How sure: the winner's paired per-seed difference to natural sampling and to the runner-up, with t
      intervals. ``confidence`` is ``"clear"`` when both intervals lie above 0 (or the winner is natural and the
      interval to the runner-up does), ``"ahead of natural"`` when only the one to natural sampling does,
      ``"uncertain"`` otherwise, and ``"one seed"`` without intervals.
    * Cost: the winner's wall time, samples and passes over every group's data (``epochs_per_group``), beside
      natural sampling's.

    Returns:
        A dict with ``winner``, ``metric``, ``prefer``, ``eligible``, ``excluded`` (name → reason),
        ``vs_natural``, ``runner_up``, ``vs_runner_up`` (paired t dicts), ``confidence``, ``cost`` and ``lines``
        (the recommendation in words); ``winner`` is ``None`` when no strategy qualifies.
    """
    metric = metric or PREFERENCES[prefer]
    if prefer in ("balanced", "tail") and metric == "f1_tail":
        trained = [r for r in runs if not r.diverged]
        metric = ranking_metric(metric, trained[0].curve if trained else [])
    rows = {row["name"]: row for row in summary}
    words = _METRIC_WORDS.get(metric, metric)
    out: dict[str, Any] = {"prefer": prefer, "metric": metric, "select": select, "winner": None, "excluded": {},
                           "eligible": [], "lines": []}
    natural = rows.get("natural")
    head_floor = None
    if prefer == "balanced":
        if natural is None or not math.isfinite(natural.get("recall_head_mean", math.nan)):
            out["lines"] = ["No recommendation: --prefer balanced needs natural sampling's head recall (the natural"
                            " run is missing or diverged)."]
            return out
        head_floor = natural["recall_head_mean"] - HEAD_TOLERANCE
    for name, row in rows.items():
        if row.get("diverged", 0):
            out["excluded"][name] = f"diverged in {row['diverged']}/{row['seeds']} seeds"
        elif not math.isfinite(row.get(f"{metric}_mean", math.nan)):
            out["excluded"][name] = f"no {words}"
        elif head_floor is not None and row["recall_head_mean"] < head_floor - 1e-12:
            out["excluded"][name] = f"head recall {row['recall_head_mean']:.3f}, more than 1 point below natural's"
        else:
            out["eligible"].append(name)
    if not out["eligible"]:
        reasons = "; ".join(f"{k}: {v}" for k, v in out["excluded"].items())
        out["lines"] = [f"No recommendation: no strategy qualifies ({reasons})."]
        return out
    ranked = sorted(out["eligible"], key=lambda n: (-rows[n][f"{metric}_mean"], list(rows).index(n)))
    winner = ranked[0]
    out["winner"] = winner
    out["ranking"] = [(n, rows[n][f"{metric}_mean"]) for n in ranked]
    rank_by = metric if select == "best" else None

    def diff(a: str, b: str) -> dict[str, Any]:
        return paired_difference(runs, a, b, metric, select=select, rank_by=rank_by)

    out["vs_natural"] = diff(winner, "natural") if winner != "natural" and natural is not None else None
    out["runner_up"] = ranked[1] if len(ranked) > 1 else None
    out["vs_runner_up"] = diff(winner, ranked[1]) if len(ranked) > 1 else None
    stats = [s for s in (out["vs_natural"], out["vs_runner_up"]) if s is not None]
    if not stats:
        confidence = "the only one"
    elif any(s["pairs"] < 2 for s in stats):
        confidence = "one seed"
    elif all(s["low"] > 0 for s in stats):
        confidence = "clear"
    elif out["vs_natural"] is not None and out["vs_natural"]["low"] > 0:
        confidence = "ahead of natural"
    else:
        confidence = "uncertain"
    out["confidence"] = confidence
    # What the head constraint left out: the best of those, for a reader who may let the head pay.
    others = [n for n, reason in out["excluded"].items() if reason.startswith("head recall")]
    out["best_excluded"] = max(others, key=lambda n: rows[n][f"{metric}_mean"]) if others else None
    w = rows[winner]
    out["cost"] = {"wall_time_s": w["wall_time_s_mean"], "samples_seen": w["samples_seen_mean"],
                   "epochs_per_group": w.get("epochs_per_group_mean"),
                   "natural_wall_time_s": natural["wall_time_s_mean"] if natural else math.nan,
                   "natural_epochs_per_group": natural.get("epochs_per_group_mean") if natural else None,
                   "load_average": w.get("load_average_mean")}
    out["lines"] = _recommendation_lines(out, rows, words, head_floor)
    return out


def _epochs_words(epochs: Optional[Sequence[float]]) -> str:
    if not epochs:
        return "—"
    return " ".join(f"{e:.3g}" for e in epochs)


def _recommendation_lines(rec: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], words: str,
                          head_floor: Optional[float]) -> list[str]:
    winner, metric = rec["winner"], rec["metric"]
    w = rows[winner]
    asked = {"balanced": f"the best {words} with head recall within 1 point of natural's",
             "tail": f"the best {words}", "worst": f"the best {words}", "head": f"the best {words}"}[rec["prefer"]]
    where = " (best validation of every run)" if rec["select"] == "best" else ""
    lines = [f"Recommendation (--prefer {rec['prefer']}: {asked}{where}): {winner} ({w['label']}),"
             f" {words} {w[f'{metric}_mean']:.3f}."]
    sure = {"clear": "clear: ahead of natural and of the runner-up beyond the seed noise",
            "ahead of natural": "ahead of natural beyond the seed noise, not separable from the runner-up",
            "uncertain": "uncertain: within the seed noise",
            "one seed": "one seed: no interval, run more seeds (--seeds 3)",
            "the only one": "it is the only strategy that qualifies"}[rec["confidence"]]
    if winner == "natural":
        sure = sure.replace("ahead of natural and of the runner-up", "ahead of the runner-up")
    lines.append(f"  How sure: {sure}.")
    if rec["vs_natural"] is not None:
        lines.append(f"  {winner} − natural: {_ci_words(rec['vs_natural'])} ({words}, paired by seed).")
    if rec["vs_runner_up"] is not None:
        lines.append(f"  {winner} − {rec['runner_up']} (runner-up): {_ci_words(rec['vs_runner_up'])}.")
    if head_floor is not None:
        head = w["recall_head_mean"]
        lines.append(f"  Head recall {head:.3f} (natural {head_floor + HEAD_TOLERANCE:.3f}); left out for the head: "
                     + (", ".join(n for n, r in rec["excluded"].items() if r.startswith("head")) or "none") + ".")
        other = rec.get("best_excluded")
        if other is not None and rows[other][f"{metric}_mean"] > w[f"{metric}_mean"]:
            o = rows[other]
            lines.append(f"  If the head may pay: {other} has the best {words} ({o[f'{metric}_mean']:.3f}) at head"
                         f" recall {o['recall_head_mean']:.3f} ({o['recall_head_mean'] - head:+.3f}; --prefer tail).")
    cost = rec["cost"]
    natural_wall = cost["natural_wall_time_s"]
    wall = f"{cost['wall_time_s']:.1f} s per run" + (f" (natural {natural_wall:.1f} s)"
                                                     if math.isfinite(natural_wall) else "")
    lines.append(f"  Cost: {wall}, {cost['samples_seen']:.0f} samples;"
                 f" passes over each group's data: {_epochs_words(cost['epochs_per_group'])}"
                 + (f" (natural: {_epochs_words(cost['natural_epochs_per_group'])})"
                    if cost["natural_epochs_per_group"] and _epochs_words(cost["natural_epochs_per_group"])
                    != _epochs_words(cost["epochs_per_group"]) else " (as natural's)" if winner != "natural" else "")
                 + ".")
    return lines


def adaptive_goal(summary: Sequence[Mapping[str, Any]], runs: Sequence[RunResult], select: str = "final",
                  metrics: Sequence[str] = ("f1_tail", "recall_worst")) -> dict[str, Any]:
    """Does an adaptive policy beat every static strategy and Cooldown, with head recall within 1 point of natural's?

    For every adaptive run (:data:`~lightning_balance.experiments.settings.ADAPTIVE_NAMES`) and each of
    ``metrics``, the paired t interval of its difference to every other, non-adaptive strategy; it *beats* them
    when every interval lies above 0. The goal is met when an adaptive run beats them all on one of the metrics and
    its head recall is at most 1 point below natural sampling's.

    Returns:
        ``{"met": bool or None, "policies": {name: {"head_ok", "beats": {metric: bool}, "closest": {metric: (other,
        stat)}}}, "lines": [...]}``; ``met`` is ``None`` without adaptive runs or with fewer than two seeds.
    """
    rows = {row["name"]: row for row in summary}
    adaptive = [n for n in rows if n in ADAPTIVE_NAMES]
    static = [n for n in rows if n not in ADAPTIVE_NAMES]
    out: dict[str, Any] = {"met": None, "policies": {}, "lines": []}
    if not adaptive or not static or "natural" not in rows:
        return out
    head_floor = rows["natural"]["recall_head_mean"] - HEAD_TOLERANCE
    judged = True
    lines = ["Adaptive goal (beat every static strategy and Cooldown on tail F1 or worst-group recall, head recall"
             " within 1 point of natural's):"]
    met = False
    for name in adaptive:
        row = rows[name]
        head_ok = bool(math.isfinite(row["recall_head_mean"]) and row["recall_head_mean"] >= head_floor - 1e-12)
        entry: dict[str, Any] = {"head_ok": head_ok, "beats": {}, "closest": {}}
        parts = []
        for metric in metrics:
            key = ranking_metric(metric, next((r.curve for r in runs if r.name == name and not r.diverged), []))
            stats = {other: paired_difference(runs, name, other, key, select=select) for other in static}
            stats = {k: v for k, v in stats.items() if v["pairs"] > 0}
            if not stats:
                continue
            if any(s["pairs"] < 2 for s in stats.values()):
                judged = False
            closest = min(stats, key=lambda k: stats[k]["low"] if stats[k]["pairs"] >= 2 else stats[k]["difference"])
            beats = all(s["pairs"] >= 2 and s["low"] > 0 for s in stats.values())
            entry["beats"][key] = beats
            entry["closest"][key] = (closest, stats[closest])
            parts.append(f"{_METRIC_WORDS.get(key, key)} {row[f'{key}_mean']:.3f}, vs {closest}"
                         f" {_ci_words(stats[closest])}: {'beats all' if beats else 'does not beat all'}")
            met = met or (beats and head_ok)
        out["policies"][name] = entry
        where = "within 1 point of" if head_ok else "more than 1 point below"
        lines.append(f"  {name} ({row['label']}): head {row['recall_head_mean']:.3f} ({where} natural's); "
                     + "; ".join(parts) + ".")
    out["met"] = met if judged else None
    verdict_words = {True: "met", False: "not met", None: "cannot be judged (fewer than two seeds)"}[out["met"]]
    lines.append(f"  Goal {verdict_words}.")
    out["lines"] = lines
    return out
