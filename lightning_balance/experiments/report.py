r"""
Tables and files
^^^^^^^^^^^^^^^^

What a comparison writes: a console table that fits 100 columns (the headline metrics, mean ± std over seeds),
a markdown table with every column, and the files: ``summary.csv``, ``runs.csv``, ``curves.csv``,
``results.json``, ``summary.md`` and the plots. Every writer takes plain rows (dicts), so the numbers come only
from the runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from lightning_balance.experiments.runner import CompareResult
from lightning_balance.experiments.settings import METRICS, PREFERENCES
from lightning_balance.experiments.summary import format_mean_std

__all__ = [
    "CURVE_COLUMNS",
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "TABLE_WIDTH",
    "best_table",
    "print_summary",
    "summary_markdown",
    "summary_table",
    "write_compare_outputs",
    "write_csv",
    "write_json",
]

#: Widest console line a table may take.
TABLE_WIDTH = 100

#: Columns of ``summary.csv``, one row per strategy.
SUMMARY_COLUMNS = (
    ["name", "label", "seeds", "diverged", "select"]
    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    + ["best_metric", "best_step_mean", "best_step_std", "best_value_mean", "best_value_std", "final_value_mean",
       "final_value_std"]
    + [f"{k}_{s}" for k in ("wall_time_s", "steps", "samples_seen") for s in ("mean", "std")]
    + ["load_average_mean", "epochs_per_group_mean"]
    + ["tail_target", "steps_to_tail_target_mean", "steps_to_tail_target_std", "tail_target_reached"]
    + ["tail_loss_min_step_mean", "tail_loss_min_step_std", "tail_loss_rise_mean", "tail_loss_rise_std"]
    + ["complete"]
)
#: Columns of ``runs.csv``, one row per (strategy, seed).
RUN_COLUMNS = (
    ["name", "label", "strategy", "seed", "diverged", "diverged_at", "steps", "samples_seen", "wall_time_s",
     "load_average_start", "load_average_end", "world_size", "steps_to_tail_target", "tail_loss_min",
     "tail_loss_min_step", "tail_loss_rise", "best_metric", "best_step", "best_value", "epochs_per_group"]
    + list(METRICS)
)
#: Columns of ``curves.csv``, one row per validation of every run.
CURVE_COLUMNS = ["name", "seed", "step"] + list(METRICS) + ["val_nonfinite", "train_nonfinite", "probs"]

# (header, summary key) of the console table: the headline metrics only; the files hold every one.
_CONSOLE = (("Head R", "recall_head"), ("Tail R", "recall_tail"), ("Tail F1", "f1_tail"), ("Worst R", "recall_worst"))
# (header, summary key) of the markdown table.
_MARKDOWN = (
    ("Head R", "recall_head"), ("Medium R", "recall_medium"), ("Tail R", "recall_tail"), ("Head F1", "f1_head"),
    ("Medium F1", "f1_medium"), ("Tail F1", "f1_tail"), ("Worst R", "recall_worst"),
)


def _compact(mean: Optional[float], std: Optional[float]) -> str:
    """``"0.912±.012"``: a metric in [0, 1] with its std, in 10 characters.

    Example:
        >>> _compact(0.9123, 0.0121), _compact(0.5, float("nan")), _compact(float("nan"), 0.1)
        ('0.912±.012', '0.500', '—')
    """
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{mean:.3f}"
    text = f"{std:.3f}"
    return f"{mean:.3f}±{text[1:] if text.startswith('0.') else text}"


def _any_diverged(summary: Sequence[Mapping[str, Any]]) -> bool:
    return any(row.get("diverged", 0) for row in summary)


def _headers(summary: Sequence[Mapping[str, Any]], label_groups: bool = True) -> list[str]:
    target = summary[0]["tail_target"] if summary else 0.5
    metric_headers = [h if label_groups else h.replace(" R", " acc") for h, _ in _CONSOLE]
    return (["Strategy"] + (["Div"] if _any_diverged(summary) else []) + metric_headers
            + [f"Tail≥{target:g} at", "Wall s"])


def _console_cells(row: Mapping[str, Any], diverged_column: bool) -> list[str]:
    cells = [str(row["name"])]
    if diverged_column:
        cells.append(f"{row.get('diverged', 0)}/{row['seeds']}")
    if row.get("diverged", 0) >= row["seeds"]:
        # Nothing was measured: a diverged model's recall is that of a constant prediction, not a result.
        cells += ["diverged"] * (len(_CONSOLE) + 1)
    else:
        cells += [_compact(row[f"{key}_mean"], row[f"{key}_std"]) for _, key in _CONSOLE]
        reached = row["tail_target_reached"]
        steps = row["steps_to_tail_target_mean"]
        cells.append(f"{steps:.0f} ({reached})" if not reached.startswith("0/") else f"— ({reached})")
    cells.append(f"{row['wall_time_s_mean']:.1f}")
    return cells


def summary_table(summary: Sequence[Mapping[str, Any]], title: Optional[str] = None,
                  label_groups: bool = True) -> Any:
    """A ``rich.table.Table`` of the summary rows (mean ± std over seeds) that fits :data:`TABLE_WIDTH` columns.

    Labels, F1 of every split, losses and costs are in the files (``summary.csv``, ``summary.md``).
    """
    from rich import box
    from rich.table import Table

    seeds = summary[0]["seeds"] if summary else 0
    which = "best validation" if summary and summary[0].get("select") == "best" else "final validation"
    default = f"{which.capitalize()}, mean ± std over {seeds} seed(s)"
    if _any_diverged(summary):
        default = f"{which.capitalize()}, mean ± std over the seeds (of {seeds}) that did not diverge"
    if not label_groups:
        default += "; accuracy per group"
    table = Table(title=title or default, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  title_justify="left")
    for i, header in enumerate(_headers(summary, label_groups)):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for row in summary:
        table.add_row(*_console_cells(row, _any_diverged(summary)))
    return table


def best_table(summary: Sequence[Mapping[str, Any]]) -> Any:
    """A ``rich.table.Table`` of every strategy's best validation point beside its final one."""
    from rich import box
    from rich.table import Table

    metric = summary[0].get("best_metric", "f1_tail") if summary else "f1_tail"
    words = {v: k for k, v in PREFERENCES.items() if k != "balanced"}.get(metric, metric)
    table = Table(title=f"Best validation by {metric} ({words}) beside the final one, mean over seeds",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    for i, header in enumerate(["Strategy", "Best step", f"Best {metric}", f"Final {metric}", "Final − best"]):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for row in summary:
        best, final = row.get("best_value_mean", math.nan), row.get("final_value_mean", math.nan)
        step = row.get("best_step_mean", math.nan)
        table.add_row(str(row["name"]), "—" if not math.isfinite(step) else f"{step:.0f}",
                      _compact(best, row.get("best_value_std")), _compact(final, row.get("final_value_std")),
                      "—" if not (math.isfinite(best) and math.isfinite(final)) else f"{final - best:+.3f}")
    return table


def console(width: int = TABLE_WIDTH) -> Any:
    """A ``rich`` console for reports: the terminal's, or ``width`` columns for a log file or a pipe."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=width)


def print_summary(summary: Sequence[Mapping[str, Any]], out: Any = None, title: Optional[str] = None,
                  label_groups: bool = True) -> None:
    """Print :func:`summary_table` on the console ``out`` (a new one of :data:`TABLE_WIDTH` columns by default)."""
    (out or console()).print(summary_table(summary, title, label_groups))


def _markdown_cells(row: Mapping[str, Any], diverged_column: bool) -> list[str]:
    cells = [str(row["name"]), str(row["label"])]
    if diverged_column:
        cells.append(f"{row.get('diverged', 0)}/{row['seeds']}")
    if row.get("diverged", 0) >= row["seeds"]:
        cells += ["diverged"] * (len(_MARKDOWN) + 1)
    else:
        cells += [format_mean_std(row[f"{key}_mean"], row[f"{key}_std"]) for _, key in _MARKDOWN]
        reached = row["tail_target_reached"]
        steps = format_mean_std(row["steps_to_tail_target_mean"], row["steps_to_tail_target_std"], 0)
        cells.append(f"{steps} ({reached})" if not reached.startswith("0/") else f"— ({reached})")
    best = row.get("best_step_mean", math.nan)
    cells.append("—" if not math.isfinite(best) else f"{best:.0f}")
    cells.append(format_mean_std(row["wall_time_s_mean"], row["wall_time_s_std"], 1))
    cells.append(f"{row['samples_seen_mean']:.0f}")
    return cells


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a GitHub markdown table, every headline column (wider than the console's).

    Example:
        >>> from lightning_balance.experiments.runner import RunResult
        >>> from lightning_balance.experiments.summary import summarize
        >>> run = RunResult("natural", "T=1", "natural", 0, 10, 320, 1.0, 1, {"recall_tail": 0.5}, 10, 1.0, 10, [])
        >>> print(summary_markdown(summarize([run])).splitlines()[0])
        | Strategy | Setting | Head R | ... | Worst R | Steps to tail R ≥ 0.5 | Best step | Wall s | Samples |
    """
    target = summary[0]["tail_target"] if summary else 0.5
    diverged = _any_diverged(summary)
    headers = (["Strategy", "Setting"] + (["Diverged"] if diverged else []) + [h for h, _ in _MARKDOWN]
               + [f"Steps to tail R ≥ {target:g}", "Best step", "Wall s", "Samples"])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
    lines += ["| " + " | ".join(_markdown_cells(row, diverged)) + " |" for row in summary]
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
    """Write ``obj`` as indented JSON, with NaN as ``null`` (written to a temporary file, then renamed)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(_clean(obj), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: Union[str, Path], columns: Sequence[str]) -> Path:
    """Write ``rows`` with the given ``columns`` (missing values empty, NaN as ``nan``, lists space-separated)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return path


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
    return value


def _run_row(run: Any) -> dict[str, Any]:
    row = {k: v for k, v in run.to_dict().items() if k not in ("final", "curve", "best", "mixing", "load_average")}
    load = run.load_average or [None, None]
    row.update(load_average_start=load[0], load_average_end=load[-1], best_step=run.best.get("step"),
               best_value=run.best.get(run.best_metric) if run.best_metric else None)
    return {**row, **run.final}


def write_compare_outputs(
    result: CompareResult, out_dir: Union[str, Path], plots: bool = True, lines: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``summary.csv``, ``runs.csv``, ``curves.csv``, ``results.json``, ``summary.md`` and the plots.

    ``results.json`` has ``"complete": false`` and every row of ``summary.csv`` a ``complete`` column of
    ``False`` while the comparison runs or when it was interrupted. ``lines`` (the recommendation and the
    verdicts) go into ``summary.md`` below the table.

    Returns:
        The written files by kind: ``summary``, ``runs``, ``curves``, ``json``, ``markdown``, and with ``plots``
        ``curves_plot``, ``tradeoff_plot`` (and ``mixing_plot`` when a run changed its mixture).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = [{"name": run.name, "seed": run.seed, **point} for run in result.runs for point in run.curve]
    summary = [{**row, "complete": result.complete} for row in result.summary]
    files = {
        "summary": write_csv(summary, out / "summary.csv", SUMMARY_COLUMNS),
        "runs": write_csv([_run_row(run) for run in result.runs], out / "runs.csv", RUN_COLUMNS),
        "curves": write_csv(curves, out / "curves.csv", CURVE_COLUMNS),
        "json": write_json(result.to_dict(), out / "results.json"),
    }
    markdown = ["# Comparison", "", summary_markdown(result.summary) if result.summary else "(no finished run)", ""]
    if lines:
        markdown += ["```text", *lines, "```", ""]
    files["markdown"] = out / "summary.md"
    files["markdown"].write_text("\n".join(markdown), encoding="utf-8")
    if plots and result.runs:
        from lightning_balance.experiments.plots import plot_curves, plot_mixing, plot_tradeoff
        from lightning_balance.experiments.summary import recommend

        prefer = result.settings.get("prefer", "balanced")
        rec = recommend(result.summary, result.runs, prefer, result.settings.get("select", "final"))
        files["curves_plot"] = out / "curves.png"
        plot_curves(result.runs, files["curves_plot"])
        files["tradeoff_plot"] = out / "tradeoff.png"
        plot_tradeoff(result.summary, files["tradeoff_plot"], highlight=rec.get("winner"),
                      label_groups=result.settings.get("label_groups", True))
        if any(run.mixing for run in result.runs):
            files["mixing_plot"] = out / "mixing.png"
            plot_mixing(result.runs, files["mixing_plot"], group_counts=result.settings.get("group_counts"))
    return files
