r"""
Experiments
^^^^^^^^^^^

The tool that compares balancing strategies on a data set, ``lightning-balance compare`` / ``paper``, kept apart
from the library it measures (sampling, weighting, metrics, selection). One module per concern:

=====================  ==================================================================================
module                 concern
=====================  ==================================================================================
``settings``           what a comparison runs: :class:`RunSpec`, :func:`default_runs`, :class:`CompareSettings`
``checks``             checks at the boundary: import paths, classes, data, Trainer settings, output folders
``recorder``           the callback that measures every run (per-group recall, F1, loss, probabilities)
``progress``           the progress bar, Lightning's messages kept quiet, the machine's load
``runner``             :func:`compare` and :func:`run_once`: the run loop, resume, loggers
``summary``            mean ± std over seeds, paired t intervals, verdicts and the recommendation
``report``             console and markdown tables, CSV and JSON files
``plots``              the figures
``paper``              the checks of Li et al. (2025)
``cli``                the ``lightning-balance`` command line
``datasets``           the long-tailed digits and data helpers
``models``             the reference MLP
``mnist1d``            the default task: long-tailed MNIST-1D and its 1-D CNN
``adaptive_study``     does an adaptive mixing policy win? (``docs/adaptive.md``)
=====================  ==================================================================================

The names below are imported on first use, so that importing one module does not import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "COMPARE_SETTINGS",
    "CNN1DClassifier",
    "CompareResult",
    "CompareSettings",
    "ComponentSpec",
    "ConfigurationError",
    "LongTailDigits",
    "LongTailMNIST1D",
    "MLPClassifier",
    "RunResult",
    "RunSpec",
    "compare",
    "default_runs",
    "recommend",
    "run_once",
    "summarize",
]

_HOMES = {
    "CompareResult": "runner", "RunResult": "runner", "compare": "runner", "run_once": "runner",
    "CompareSettings": "settings", "ComponentSpec": "settings", "ConfigurationError": "settings",
    "RunSpec": "settings", "default_runs": "settings", "recommend": "summary", "summarize": "summary",
    "LongTailDigits": "datasets", "MLPClassifier": "models", "LongTailMNIST1D": "mnist1d",
    "CNN1DClassifier": "mnist1d", "COMPARE_SETTINGS": "mnist1d",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
