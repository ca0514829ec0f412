"""Lightning callbacks of the package."""

from lightning_balance.callbacks.adaptive_mixing import AdaptiveMixing
from lightning_balance.callbacks.mixture_monitor import MixtureMonitor
from lightning_balance.callbacks.saln import SALN
from lightning_balance.callbacks.tail_recall_monitor import TailRecallMonitor

__all__ = ["SALN", "AdaptiveMixing", "MixtureMonitor", "TailRecallMonitor"]
