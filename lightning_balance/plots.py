"""The figures of a comparison: they live in :mod:`lightning_balance.experiments.plots`.

Kept so that ``from lightning_balance.plots import plot_curves`` (and every name below) keeps working.
"""

from lightning_balance.experiments.plots import (
    plot_curves,
    plot_mixing,
    plot_temperature_probs,
    plot_tradeoff,
    plot_variance_factor,
)

__all__ = ["plot_curves", "plot_mixing", "plot_temperature_probs", "plot_tradeoff", "plot_variance_factor"]
