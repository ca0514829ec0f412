"""Balanced training on heavily imbalanced, long-tailed data with PyTorch Lightning."""

from lightning_balance.callbacks.adaptive_mixing import AdaptiveMixing
from lightning_balance.callbacks.mixture_monitor import MixtureMonitor
from lightning_balance.callbacks.saln import SALN
from lightning_balance.callbacks.tail_recall_monitor import TailRecallMonitor
from lightning_balance.datamodule import (
    BalancedDataModule,
    IndexedBatch,
    Reordered,
    balanced_cross_entropy,
    balanced_loss,
)
from lightning_balance.functional.spectral import spectral_scores
from lightning_balance.functional.tail_recall import long_tail_split
from lightning_balance.mixture import Mixture
from lightning_balance.sampler import GroupIndex, MixtureSampler, TemperatureSampler
from lightning_balance.schedules import Constant, Cooldown, LinearRamp, resolve_temperature
from lightning_balance.tail_recall import TailRecall
from lightning_balance.temperature import (
    scalarization_variance_factor,
    scalarization_weights,
    temperature_probs,
    unimax_probs,
)
from lightning_balance.weighting import weighted_mean

__version__ = "0.2.0"

__all__ = [
    "SALN",
    "AdaptiveMixing",
    "BalancedDataModule",
    "Constant",
    "Cooldown",
    "GroupIndex",
    "IndexedBatch",
    "LinearRamp",
    "Mixture",
    "MixtureMonitor",
    "MixtureSampler",
    "Reordered",
    "TailRecall",
    "TailRecallMonitor",
    "TemperatureSampler",
    "balanced_cross_entropy",
    "balanced_loss",
    "long_tail_split",
    "resolve_temperature",
    "scalarization_variance_factor",
    "scalarization_weights",
    "spectral_scores",
    "temperature_probs",
    "unimax_probs",
    "weighted_mean",
]
