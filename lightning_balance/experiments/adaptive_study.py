r"""
Does an adaptive mixing policy win?
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

The measurement behind ``docs/adaptive.md``: on an embedded task, does an adaptive policy (OverfitGuard on
validation, OnlineMixing, GroupDRO) beat every static strategy and Cooldown on tail F1 or worst-class recall,
with head recall within 1 point of natural sampling's? Every run goes through
:func:`~lightning_balance.experiments.runner.compare`, so the seeds, the budget and the measurement are those of
``lightning-balance compare``, and strategies are compared seed by seed with paired t intervals.

Two phases, on disjoint seeds, so that the tuned setting is judged on seeds it was not chosen on:

* ``tune``: OverfitGuard's ``patience`` x ``smoothing`` grid, each beside natural sampling. A setting replaces the
  default (patience 3, smoothing 0.5) only when its head recall is within 1 point of natural's and its tail F1 beats
  the default's beyond the seed noise (the paired t interval of the difference lies above 0); of several, the
  best. When even the default misses the head condition, the setting with the best head recall is kept, and the
  report says so.
* ``confirm``: every static strategy, Cooldown and the three adaptive runs (OverfitGuard with the kept setting)
  on fresh seeds, and :func:`~lightning_balance.experiments.summary.adaptive_goal` on them.

Run (one torch thread; each phase writes ``<out>/<task>-<phase>.json`` and prints a markdown summary)::

    python -m lightning_balance.experiments.adaptive_study --task mnist1d --phase tune --seeds 0 1 2
    python -m lightning_balance.experiments.adaptive_study --task mnist1d --phase confirm --seeds 10 11 12 \
        --patience 5 --smoothing 0.25 --without logit_adjust
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from lightning_balance.experiments.checks import import_object
from lightning_balance.experiments.progress import cpu_count, load_average
from lightning_balance.experiments.report import write_compare_outputs, write_json
from lightning_balance.experiments.runner import CompareResult, compare
from lightning_balance.experiments.settings import (
    STATIC_NAMES,
    CompareSettings,
    ComponentSpec,
    RunSpec,
    default_runs,
    embedded_task,
)
from lightning_balance.experiments.summary import HEAD_TOLERANCE, adaptive_goal, paired_difference, recommend

__all__ = ["choose", "confirm", "guard_grid", "main", "tune"]

#: OverfitGuard settings tried in the tuning phase.
PATIENCE = (1, 2, 3, 5)
SMOOTHING = (0.25, 0.5, 1.0)


def _components(task_name: str) -> tuple[dict[str, Any], ComponentSpec, Optional[ComponentSpec]]:
    task = embedded_task(task_name)
    data = ComponentSpec(import_object(task["datamodule"]))
    model = None
    if task["model"] is not None:
        model = ComponentSpec(import_object(task["model"], "--model"), {}, "--model", size_from_data=True)
    return task, data, model


def _settings(task: dict[str, Any], seeds: Sequence[int]) -> CompareSettings:
    return CompareSettings(seeds=list(seeds), max_steps=task["max_steps"], val_every=task["val_every"],
                           tail_target=task["tail_target"], split="auto")


def guard_grid(temperature: float = 5.0) -> list[RunSpec]:
    """One OverfitGuard run per (patience, smoothing) of :data:`PATIENCE` x :data:`SMOOTHING`."""
    base = default_runs(temperature, only=["overfit_guard"])[0]
    return [replace(base, name=f"guard_p{p}_s{s:g}", policy_args=(("patience", p), ("smoothing", float(s))))
            for p in PATIENCE for s in SMOOTHING]


def _row(result: CompareResult, name: str) -> dict[str, Any]:
    return next(row for row in result.summary if row["name"] == name)


def tune(task_name: str, seeds: Sequence[int], progress: bool = True) -> dict[str, Any]:
    """The tuning phase: the OverfitGuard grid beside natural sampling on ``seeds``."""
    task, data, model = _components(task_name)
    runs = default_runs(only=["natural"]) + guard_grid()
    started, load = time.perf_counter(), load_average()
    result = compare(data, model, runs, _settings(task, seeds), progress=progress)
    report = choose(result)
    report.update(task=task_name, phase="tune", seeds=list(seeds), wall_time_s=time.perf_counter() - started,
                  load_average=[load, load_average()], cpus=cpu_count(), result=result)
    return report


def choose(result: CompareResult, default: str = "guard_p3_s0.5") -> dict[str, Any]:
    """The grid's rows (head, tail F1, worst recall, paired differences) and the setting to keep.

    See the module docstring for the rule.
    """
    natural = _row(result, "natural")
    floor = natural["recall_head_mean"] - HEAD_TOLERANCE
    names = [row["name"] for row in result.summary if row["name"].startswith("guard_")]
    seeds = sorted({r.seed for r in result.runs})
    rows = []
    for name in names:
        row = _row(result, name)
        patience, smoothing = name[len("guard_p"):].split("_s")
        rows.append({
            "name": name, "patience": int(patience), "smoothing": float(smoothing),
            "head": row["recall_head_mean"], "tail_f1": row["f1_tail_mean"], "worst": row["recall_worst_mean"],
            "head_ok": bool(row["recall_head_mean"] >= floor - 1e-12),
            "head_vs_natural": paired_difference(result.runs, name, "natural", "recall_head"),
            "tail_f1_vs_natural": paired_difference(result.runs, name, "natural", "f1_tail"),
            "tail_f1_vs_default": paired_difference(result.runs, name, default, "f1_tail"),
            "guarded_runs": sum(1 for r in result.runs if r.name == name and _guarded(r)),
            "runs": len(seeds),
        })
    by_name = {r["name"]: r for r in rows}
    better = [r for r in rows if r["head_ok"] and r["name"] != default
              and r["tail_f1_vs_default"]["pairs"] >= 2 and r["tail_f1_vs_default"]["low"] > 0]
    if better:
        kept, why = max(better, key=lambda r: r["tail_f1"]), "its tail F1 beats the default's beyond the seed noise"
    elif by_name[default]["head_ok"]:
        kept, why = by_name[default], "no setting beats the default's tail F1 beyond the seed noise"
    else:
        kept = max(rows, key=lambda r: r["head"])
        why = "no setting keeps the head within 1 point of natural's: the one with the best head recall"
    return {"natural": natural, "rows": rows, "default": default,
            "kept": {"patience": kept["patience"], "smoothing": kept["smoothing"], "name": kept["name"],
                     "head_ok": kept["head_ok"], "why": why}}


def _guarded(run: Any) -> bool:
    return any(entry.get("probs") is not None for entry in (run.mixing or []))


def confirm(task_name: str, seeds: Sequence[int], patience: int, smoothing: float,
            progress: bool = True, without: Sequence[str] = ()) -> dict[str, Any]:
    """The confirmation phase: every static strategy but ``without``, and the adaptive runs, on ``seeds``."""
    task, data, model = _components(task_name)
    runs = default_runs(only=[n for n in STATIC_NAMES if n not in without], adaptive=True,
                        overfit_patience=patience, overfit_smoothing=smoothing)
    started, load = time.perf_counter(), load_average()
    result = compare(data, model, runs, _settings(task, seeds), progress=progress)
    goal = adaptive_goal(result.summary, result.runs)
    return {"task": task_name, "phase": "confirm", "seeds": list(seeds), "without": list(without),
            "patience": patience,
            "smoothing": smoothing, "goal": {k: v for k, v in goal.items() if k != "policies"},
            "policies": {name: {"head_ok": p["head_ok"], "beats": p["beats"],
                                "closest": {m: [other, stat] for m, (other, stat) in p["closest"].items()}}
                         for name, p in goal["policies"].items()},
            "recommendations": {prefer: recommend(result.summary, result.runs, prefer)["lines"]
                                for prefer in ("balanced", "tail", "worst")},
            "wall_time_s": time.perf_counter() - started, "load_average": [load, load_average()],
            "cpus": cpu_count(), "result": result}


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _ci(stat: dict[str, Any]) -> str:
    if stat["all_equal"]:
        return "±0 in every seed"
    return f"{stat['difference']:+.3f} [{stat['low']:+.3f}, {stat['high']:+.3f}]"


def markdown(report: dict[str, Any]) -> str:
    """The phase's results as markdown (what ``docs/adaptive.md`` quotes)."""
    result: CompareResult = report["result"]
    head = (f"**{report['task']}, {report['phase']}** (seeds {', '.join(map(str, report['seeds']))};"
            f" {report['wall_time_s']:.0f} s on {report['cpus']} CPUs, load average"
            f" {_fmt(report['load_average'][0])} to {_fmt(report['load_average'][1])})")
    lines = [head, ""]
    if report["phase"] == "tune":
        n = report["natural"]
        lines += [f"natural: head recall {_fmt(n['recall_head_mean'])}, tail F1 {_fmt(n['f1_tail_mean'])}, worst"
                  f" recall {_fmt(n['recall_worst_mean'])}", "",
                  "| patience | smoothing | head recall | head − natural [95% CI] | tail F1 | tail F1 − natural"
                  " [95% CI] | tail F1 − default [95% CI] | worst recall | runs where a group was guarded |",
                  "|---:|---:|---:|---|---:|---|---|---:|---:|"]
        for r in report["rows"]:
            lines.append(f"| {r['patience']} | {r['smoothing']:g} | {_fmt(r['head'])} | {_ci(r['head_vs_natural'])} |"
                         f" {_fmt(r['tail_f1'])} | {_ci(r['tail_f1_vs_natural'])} | {_ci(r['tail_f1_vs_default'])} |"
                         f" {_fmt(r['worst'])} | {r['guarded_runs']}/{r['runs']} |")
        kept = report["kept"]
        lines += ["", f"Kept: patience {kept['patience']}, smoothing {kept['smoothing']:g} ({kept['why']})."]
        return "\n".join(lines)
    from lightning_balance.experiments.report import summary_markdown

    lines += [summary_markdown(result.summary), "", "```text", *adaptive_goal(result.summary, result.runs)["lines"],
              "```"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one phase, write ``<out>/<task>-<phase>.json`` (and the comparison's files), print markdown."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--task", default="mnist1d", choices=("mnist1d", "digits"))
    parser.add_argument("--phase", required=True, choices=("tune", "confirm"))
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--smoothing", type=float, default=0.5)
    parser.add_argument("--without", nargs="*", default=[], help="static strategies to leave out of the confirmation")
    parser.add_argument("--out", default="balance_runs/adaptive-study")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.phase == "tune":
        report = tune(args.task, args.seeds, progress=not args.no_progress)
    else:
        report = confirm(args.task, args.seeds, args.patience, args.smoothing, progress=not args.no_progress,
                         without=args.without)
    out = Path(args.out) / f"{args.task}-{args.phase}"
    write_compare_outputs(report["result"], out)
    text = markdown(report)
    write_json({k: v for k, v in report.items() if k != "result"}, out / "study.json")
    (out / "study.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nWrote {out}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

