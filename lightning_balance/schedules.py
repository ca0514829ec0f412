r"""
Temperature schedules
^^^^^^^^^^^^^^^^^^^^^

A schedule is any callable ``schedule(progress) -> temperature`` where ``progress`` in ``[0, 1]`` is the
fraction of training done. Wherever the package accepts a temperature it also accepts a schedule.
The classes here are plain callables with constructor arguments, so a ``LightningCLI`` YAML can name them
by ``class_path``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

from lightning_balance.temperature import _validate_temperature

__all__ = ["Cooldown", "Constant", "LinearRamp", "TemperatureLike", "resolve_temperature", "is_schedule"]

TemperatureLike = Union[float, Callable[[float], float]]


class Constant:
    """A fixed temperature, as a schedule.

    Example:
        >>> Constant(5.0)(0.7)
        5.0
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = _validate_temperature(temperature)

    def __call__(self, progress: float) -> float:
        return self.temperature

    def __repr__(self) -> str:
        return f"Constant(temperature={self.temperature})"


class Cooldown:
    """Sample at ``start`` temperature until ``at`` of training is done, then at ``end``.

    The schedule proposed by Li et al. (2025): ``T = 5`` for the first half, then ``T = 1``. It is a step,
    as in the paper; use :class:`LinearRamp` for a gradual change.

    Args:
        start: temperature before the switch.
        end: temperature after the switch.
        at: fraction of training, in ``[0, 1]``, at which the temperature switches to ``end``.

    Example:
        >>> schedule = Cooldown(start=5.0, end=1.0, at=0.5)
        >>> schedule(0.0), schedule(0.49), schedule(0.5), schedule(1.0)
        (5.0, 5.0, 1.0, 1.0)
    """

    def __init__(self, start: float = 5.0, end: float = 1.0, at: float = 0.5) -> None:
        self.start = _validate_temperature(start, "start")
        self.end = _validate_temperature(end, "end")
        self.at = _fraction(at, "at", "the fraction of training in [0, 1] at which to switch")

    def __call__(self, progress: float) -> float:
        return self.start if progress < self.at else self.end

    def __repr__(self) -> str:
        return f"Cooldown(start={self.start}, end={self.end}, at={self.at})"


class LinearRamp:
    """Move the temperature linearly from ``start`` to ``end`` between ``begin`` and ``finish`` of training.

    Example:
        >>> ramp = LinearRamp(start=5.0, end=1.0)
        >>> ramp(0.0), ramp(0.5), ramp(1.0)
        (5.0, 3.0, 1.0)
    """

    def __init__(self, start: float = 5.0, end: float = 1.0, begin: float = 0.0, finish: float = 1.0) -> None:
        self.start = _validate_temperature(start, "start")
        self.end = _validate_temperature(end, "end")
        if math.isinf(self.start) or math.isinf(self.end):
            raise ValueError(
                "`LinearRamp` needs finite `start` and `end` temperatures; use `Cooldown` for a step to inf."
            )
        self.begin = _fraction(begin, "begin", "a fraction of training in [0, 1]")
        self.finish = _fraction(finish, "finish", "a fraction of training in [0, 1]")
        if not self.begin < self.finish:
            raise ValueError(
                f"Expected 0 <= `begin` < `finish` <= 1 (fractions of training), but got begin={begin!r},"
                f" finish={finish!r}."
            )

    def __call__(self, progress: float) -> float:
        frac = min(max((progress - self.begin) / (self.finish - self.begin), 0.0), 1.0)
        return self.start + (self.end - self.start) * frac

    def __repr__(self) -> str:
        return f"LinearRamp(start={self.start}, end={self.end}, begin={self.begin}, finish={self.finish})"


def _fraction(value: object, name: str, meaning: str) -> float:
    """``value`` as a float in [0, 1], or a ``ValueError`` naming the argument."""
    try:
        fraction = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fraction = math.nan
    if isinstance(value, (bool, str)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"Expected argument `{name}` to be {meaning}, but got {value!r}.")
    return fraction


def is_schedule(temperature: TemperatureLike) -> bool:
    """Whether ``temperature`` is a schedule (a callable) rather than a fixed number."""
    return callable(temperature)


def resolve_temperature(temperature: TemperatureLike, progress: float) -> float:
    """The temperature in force at ``progress``, validated.

    A fixed number is returned as it is; a schedule is called with ``progress`` clamped to ``[0, 1]`` and
    its answer checked, so a buggy schedule fails loudly instead of sampling from a wrong distribution.

    Example:
        >>> resolve_temperature(Cooldown(), 0.75)
        1.0
        >>> resolve_temperature(lambda p: -1.0, 0.5)
        Traceback (most recent call last):
        ...
        ValueError: The temperature schedule <lambda> returned -1.0 at progress 0.5; a schedule must return ...
    """
    if not callable(temperature):
        return _validate_temperature(temperature)
    progress = min(max(float(progress), 0.0), 1.0)
    value = temperature(progress)
    try:
        return _validate_temperature(value)
    except (TypeError, ValueError):
        name = getattr(temperature, "__name__", type(temperature).__name__)
        raise ValueError(
            f"The temperature schedule {name} returned {value!r} at progress {progress}; a schedule must return"
            " a temperature > 0 (or float('inf'))."
        ) from None
