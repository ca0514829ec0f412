r"""
Reporting
^^^^^^^^^

Tables and files of a comparison: a rich table for the console, CSV and JSON for analysis, markdown for
reports. Every writer takes plain rows (dicts), so the numbers come only from the runs.

Strategies are compared seed by seed: every strategy trains the same seeds, and a seed fixes the model's
initialisation (and, for strategies that sample alike, the sample stream), so :func:`paired_difference` takes
the per-seed differences and gives their mean with a Student t interval. A diverged run is left out of every
comparison and never wins one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lightning_balance.compare import METRICS, CompareResult, RunResult

__all__ = [
    "CONFIDENCE",
    "CURVE_COLUMNS",
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "format_mean_std",
    "paired_difference",
    "paired_t",
    "print_summary",
    "summary_markdown",
    "summary_table",
    "verdict",
    "write_compare_outputs",
    "write_csv",
    "write_json",
]

#: Confidence level of the t intervals in the verdicts.
CONFIDENCE = 0.95

#: Columns of ``summary.csv``, one row per strategy.
SUMMARY_COLUMNS = (
    ["name", "label", "seeds", "diverged"]
    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    + [f"{k}_{s}" for k in ("wall_time_s", "steps", "samples_seen") for s in ("mean", "std")]
    + ["tail_target", "steps_to_tail_target_mean", "steps_to_tail_target_std", "tail_target_reached"]
    + ["tail_loss_min_step_mean", "tail_loss_min_step_std", "tail_loss_rise_mean", "tail_loss_rise_std"]
    + ["complete"]
)
#: Columns of ``runs.csv``, one row per (strategy, seed).
RUN_COLUMNS = (
    ["name", "label", "strategy", "seed", "diverged", "diverged_at", "steps", "samples_seen", "wall_time_s",
     "world_size", "steps_to_tail_target", "tail_loss_min", "tail_loss_min_step", "tail_loss_rise"]
    + list(METRICS)
)
#: Columns of ``curves.csv``, one row per validation of every run.
CURVE_COLUMNS = ["name", "seed", "step"] + list(METRICS) + ["val_nonfinite", "train_nonfinite"]

# (column header, summary key) of the console and markdown tables.
_TABLE = (
    ("Head R", "recall_head"),
    ("Medium R", "recall_medium"),
    ("Tail R", "recall_tail"),
    ("Head F1", "f1_head"),
    ("Medium F1", "f1_medium"),
    ("Tail F1", "f1_tail"),
    ("Worst R", "recall_worst"),
)


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


def _any_diverged(summary: Sequence[Mapping[str, Any]]) -> bool:
    return any(row.get("diverged", 0) for row in summary)


def _cells(row: Mapping[str, Any], diverged_column: bool = False) -> list[str]:
    cells = [str(row["name"]), str(row["label"])]
    if diverged_column:
        cells.append(f"{row.get('diverged', 0)}/{row['seeds']}")
    if row.get("diverged", 0) >= row["seeds"]:
        # Nothing was measured: a diverged model's recall is that of a constant prediction, not a result.
        cells += ["diverged"] * (len(_TABLE) + 1)
    else:
        cells += [format_mean_std(row[f"{key}_mean"], row[f"{key}_std"]) for _, key in _TABLE]
        reached = row["tail_target_reached"]
        steps = format_mean_std(row["steps_to_tail_target_mean"], row["steps_to_tail_target_std"], 0)
        cells.append(f"{steps} ({reached})" if not reached.startswith("0/") else f"— ({reached})")
    cells.append(format_mean_std(row["wall_time_s_mean"], row["wall_time_s_std"], 1))
    cells.append(f"{row['steps_mean']:.0f}")
    cells.append(f"{row['samples_seen_mean']:.0f}")
    return cells


def _headers(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    target = summary[0]["tail_target"] if summary else 0.5
    diverged = ["Diverged"] if _any_diverged(summary) else []
    return (["Strategy", "Temperature"] + diverged + [h for h, _ in _TABLE]
            + [f"Steps to tail R ≥ {target:g}", "Wall s", "Steps", "Samples"])


def summary_table(summary: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> Any:
    """A ``rich.table.Table`` of the summary rows (mean ± std over seeds)."""
    from rich.table import Table

    seeds = summary[0]["seeds"] if summary else 0
    default = f"Final validation metrics, mean ± std over {seeds} seed(s)"
    if _any_diverged(summary):
        default = f"Final validation metrics, mean ± std over the seeds (of {seeds}) that did not diverge"
    table = Table(title=title or default)
    for i, header in enumerate(_headers(summary)):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in summary:
        table.add_row(*_cells(row, _any_diverged(summary)))
    return table


def print_summary(summary: Sequence[Mapping[str, Any]], console: Any = None, title: Optional[str] = None) -> None:
    """Print :func:`summary_table` on ``console`` (a new ``rich.console.Console`` by default)."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)  # a log file or pipe: do not squeeze the table into 80 columns
    console.print(summary_table(summary, title))


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a GitHub markdown table, the same columns as the console table.

    Example:
        >>> from lightning_balance.compare import RunResult, summarize
        >>> run = RunResult("natural", "T=1", "natural", 0, 10, 320, 1.0, 1, {"recall_tail": 0.5}, 10, 1.0, 10, [])
        >>> print(summary_markdown(summarize([run])).splitlines()[0])
        | Strategy | Temperature | Head R | ... | Worst R | Steps to tail R ≥ 0.5 | Wall s | Steps | Samples |
    """
    headers = _headers(summary)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
    lines += ["| " + " | ".join(_cells(row, _any_diverged(summary))) + " |" for row in summary]
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(obj: Any, path: Union[str, Path]) -> Path:
    """Write ``obj`` as indented JSON, with NaN as ``null``."""
    path = Path(path)
    path.write_text(json.dumps(_clean(obj), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: Union[str, Path], columns: Sequence[str]) -> Path:
    """Write ``rows`` with the given ``columns`` (missing values empty, NaN as ``nan``)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def write_compare_outputs(result: CompareResult, out_dir: Union[str, Path], plots: bool = True) -> dict[str, Path]:
    """Write ``summary.csv``, ``runs.csv``, ``curves.csv``, ``results.json`` and the two plots into ``out_dir``.

    ``results.json`` has ``"complete": false`` and every row of ``summary.csv`` a ``complete`` column of
    ``False`` while the comparison runs or when it was interrupted.

    Returns:
        The written files by kind: ``summary``, ``runs``, ``curves``, ``json``, ``curves_plot``, ``tradeoff_plot``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [{**{k: v for k, v in run.to_dict().items() if k not in ("final", "curve")}, **run.final}
            for run in result.runs]
    curves = [{"name": run.name, "seed": run.seed, **point} for run in result.runs for point in run.curve]
    summary = [{**row, "complete": result.complete} for row in result.summary]
    files = {
        "summary": write_csv(summary, out / "summary.csv", SUMMARY_COLUMNS),
        "runs": write_csv(runs, out / "runs.csv", RUN_COLUMNS),
        "curves": write_csv(curves, out / "curves.csv", CURVE_COLUMNS),
        "json": write_json(result.to_dict(), out / "results.json"),
    }
    if plots:
        from lightning_balance.plots import plot_curves, plot_tradeoff

        files["curves_plot"] = out / "curves.png"
        plot_curves(result.runs, files["curves_plot"])
        files["tradeoff_plot"] = out / "tradeoff.png"
        plot_tradeoff(result.summary, files["tradeoff_plot"])
    return files


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


def paired_difference(
    runs: Sequence[RunResult], a: str, b: str, metric: str, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """:func:`paired_t` of the final ``metric`` of strategy ``a`` minus strategy ``b``, seed by seed.

    Diverged runs are left out, so a seed is paired only where both strategies trained.

    Example:
        >>> from lightning_balance.compare import RunResult
        >>> def run(name, seed, recall):
        ...     return RunResult(name, "T", name, seed, 10, 320, 1.0, 1, {"recall_tail": recall}, None, 1.0, None, [])
        >>> runs = [run("upsample", s, r) for s, r in enumerate([0.8, 0.75, 0.7])]
        >>> runs += [run("upweight", s, r) for s, r in enumerate([0.7, 0.7, 0.66])]
        >>> round(paired_difference(runs, "upsample", "upweight", "recall_tail")["half_width"], 3)
        0.08
    """

    def values(name: str) -> dict[int, float]:
        return {r.seed: r.final.get(metric, math.nan) for r in runs if r.name == name and not r.diverged}

    out = paired_t(values(a), values(b), confidence)
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
        return f"{side} is better by {abs(diff):.3f} ({_interval(stat)})"
    return f"no clear difference ({diff:+.3f}, {_interval(stat)})"


def verdict(summary: Sequence[Mapping[str, Any]], runs: Sequence[RunResult] = ()) -> list[str]:
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
    metrics = (("recall_tail", "tail recall"), ("recall_head", "head recall"), ("f1_tail", "tail F1"),
               ("recall_worst", "worst-class recall"))
    if not runs:
        lines.append("  (the metrics are compared seed by seed: pass the runs too,"
                     " verdict(result.summary, result.runs))")
        metrics = ()
    for metric, words in metrics:
        stat = paired_difference(runs, "upsample", "upweight", metric)
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
