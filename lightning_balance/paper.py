"""The checks of Li et al. (2025): they live in :mod:`lightning_balance.experiments.paper`.

Kept so that ``from lightning_balance.paper import reproduce`` (and every name below) keeps working.
"""

from lightning_balance.experiments.paper import (
    BIAS_Z_LIMIT,
    DRAW_TEST_LEVEL,
    GD_TOLERANCE,
    KNOWN_PROBS,
    RATIO_TOLERANCE,
    TEMPERATURES,
    cooldown_check,
    digits_training_set,
    full_batch_equivalence,
    gradient_variance,
    per_sample_gradients,
    reproduce,
    tail_dynamics,
    temperature_known_answer,
    variance_experiment,
    variance_verdict,
)

__all__ = [
    "BIAS_Z_LIMIT",
    "DRAW_TEST_LEVEL",
    "GD_TOLERANCE",
    "KNOWN_PROBS",
    "RATIO_TOLERANCE",
    "TEMPERATURES",
    "cooldown_check",
    "digits_training_set",
    "full_batch_equivalence",
    "gradient_variance",
    "per_sample_gradients",
    "reproduce",
    "tail_dynamics",
    "temperature_known_answer",
    "variance_experiment",
    "variance_verdict",
]
