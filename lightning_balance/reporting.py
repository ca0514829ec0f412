r"""
Reporting
^^^^^^^^^

Tables and files of a comparison: a rich table for the console, CSV and JSON for analysis, markdown for
reports. Every writer takes plain rows (dicts), so the numbers come only from the runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from lightning_balance.compare import METRICS, CompareResult

__all__ = [
    "CURVE_COLUMNS",
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "difference",
    "format_mean_std",
    "print_summary",
    "summary_markdown",
    "summary_table",
    "verdict",
    "write_compare_outputs",
    "write_csv",
    "write_json",
]

#: Columns of ``summary.csv``, one row per strategy.
SUMMARY_COLUMNS = (
    ["name", "label", "seeds"]
    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    + [f"{k}_{s}" for k in ("wall_time_s", "steps", "samples_seen") for s in ("mean", "std")]
    + ["tail_target", "steps_to_tail_target_mean", "steps_to_tail_target_std", "tail_target_reached"]
    + ["tail_loss_min_step_mean", "tail_loss_min_step_std", "tail_loss_rise_mean", "tail_loss_rise_std"]
)
#: Columns of ``runs.csv``, one row per (strategy, seed).
RUN_COLUMNS = (
    ["name", "label", "strategy", "seed", "steps", "samples_seen", "wall_time_s", "world_size",
     "steps_to_tail_target", "tail_loss_min", "tail_loss_min_step"]
    + list(METRICS)
)
#: Columns of ``curves.csv``, one row per validation of every run.
CURVE_COLUMNS = ["name", "seed", "step"] + list(METRICS)

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


def _cells(row: Mapping[str, Any]) -> list[str]:
    cells = [str(row["name"]), str(row["label"])]
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
    return (["Strategy", "Temperature"] + [h for h, _ in _TABLE]
            + [f"Steps to tail R ≥ {target:g}", "Wall s", "Steps", "Samples"])


def summary_table(summary: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> Any:
    """A ``rich.table.Table`` of the summary rows (mean ± std over seeds)."""
    from rich.table import Table

    seeds = summary[0]["seeds"] if summary else 0
    table = Table(title=title or f"Final validation metrics, mean ± std over {seeds} seed(s)")
    for i, header in enumerate(_headers(summary)):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in summary:
        table.add_row(*_cells(row))
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
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in summary]
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

    Returns:
        The written files by kind: ``summary``, ``runs``, ``curves``, ``json``, ``curves_plot``, ``tradeoff_plot``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [{**{k: v for k, v in run.to_dict().items() if k not in ("final", "curve")}, **run.final}
            for run in result.runs]
    curves = [{"name": run.name, "seed": run.seed, **point} for run in result.runs for point in run.curve]
    files = {
        "summary": write_csv(result.summary, out / "summary.csv", SUMMARY_COLUMNS),
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


def difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> tuple[float, float]:
    r"""Difference of two strategies' means of ``metric`` and its standard error :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}`.

    Example:
        >>> a = {"recall_tail_mean": 0.8, "recall_tail_std": 0.03, "seeds": 3}
        >>> b = {"recall_tail_mean": 0.7, "recall_tail_std": 0.04, "seeds": 3}
        >>> [round(v, 4) for v in difference(a, b, "recall_tail")]
        [0.1, 0.0289]
    """
    diff = a[f"{metric}_mean"] - b[f"{metric}_mean"]
    var = [row[f"{metric}_std"] ** 2 / max(row["seeds"], 1) for row in (a, b)]
    # A single seed has no spread (std NaN): its standard error is unknown, reported as NaN.
    return float(diff), float(math.sqrt(sum(var)))


def _compare_words(diff: float, se: float, higher: str, lower: str) -> str:
    if math.isnan(diff):
        return "no value"
    if abs(diff) < 1e-12:
        return "equal"
    if math.isnan(se):
        return f"{higher if diff > 0 else lower} by {abs(diff):.3f} (one seed: no error estimate)"
    if abs(diff) <= 2 * se or abs(diff) < 1e-12:
        return f"no clear difference ({diff:+.3f} ± {se:.3f}, within 2 standard errors over seeds)"
    return f"{higher if diff > 0 else lower} is better by {abs(diff):.3f} (± {se:.3f})"


def verdict(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain-language lines answering "upsample or upweight?" from the summary (empty without both runs)."""
    rows = {row["name"]: row for row in summary}
    if "upsample" not in rows or "upweight" not in rows:
        return []
    up, uw = rows["upsample"], rows["upweight"]
    lines = [f"Upsample vs upweight ({up['label']}):"]
    for metric, words in (("recall_tail", "tail recall"), ("recall_head", "head recall"), ("f1_tail", "tail F1"),
                          ("recall_worst", "worst-class recall")):
        lines.append(f"  {words}: " + _compare_words(*difference(up, uw, metric), "upsample", "upweight"))
    target = up["tail_target"]
    s_up, s_uw = up["steps_to_tail_target_mean"], uw["steps_to_tail_target_mean"]
    reach = f"  steps to tail recall ≥ {target:g}: upsample {format_mean_std(s_up, up['steps_to_tail_target_std'], 0)}"
    reach += f" ({up['tail_target_reached']}), upweight {format_mean_std(s_uw, uw['steps_to_tail_target_std'], 0)}"
    lines.append(reach + f" ({uw['tail_target_reached']})")
    rise_up, rise_uw = up["tail_loss_rise_mean"], uw["tail_loss_rise_mean"]
    if not (math.isnan(rise_up) or math.isnan(rise_uw)):
        lines.append(
            f"  tail validation loss rose after its minimum by {rise_up:.3f} (upsample) and {rise_uw:.3f} (upweight):"
            " a rise means the tail is overfitting."
        )
    return lines
