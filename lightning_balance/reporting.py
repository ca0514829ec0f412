"""Tables, files and paired comparisons of a comparison: they live in :mod:`lightning_balance.experiments`.

Kept so that ``from lightning_balance.reporting import print_summary, verdict, write_compare_outputs`` (and every
name below) keeps working: the tables and files are in ``experiments.report``, the statistics and verdicts in
``experiments.summary``.
"""

from lightning_balance.experiments.report import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    best_table,
    print_summary,
    summary_markdown,
    summary_table,
    write_compare_outputs,
    write_csv,
    write_json,
)
from lightning_balance.experiments.summary import (
    CONFIDENCE,
    adaptive_goal,
    format_mean_std,
    paired_difference,
    paired_t,
    recommend,
    verdict,
)

__all__ = [
    "CONFIDENCE",
    "CURVE_COLUMNS",
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "adaptive_goal",
    "best_table",
    "format_mean_std",
    "paired_difference",
    "paired_t",
    "print_summary",
    "recommend",
    "summary_markdown",
    "summary_table",
    "verdict",
    "write_compare_outputs",
    "write_csv",
    "write_json",
]
