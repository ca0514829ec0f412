"""The reference MLP: it lives in :mod:`lightning_balance.experiments.models`.

Kept so that ``from lightning_balance.models import MLPClassifier`` keeps working.
"""

from lightning_balance.experiments.models import MLPClassifier

__all__ = ["MLPClassifier"]
