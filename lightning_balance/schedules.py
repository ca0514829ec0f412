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

import numpy as np

from lightning_balance.temperature import _validate_temperature

__all__ = [
    "Cooldown",
    "Constant",
    "LinearRamp",
    "TemperatureLike",
    "resolve_temperature",
    "is_schedule",
    "constant_runs",
]

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
    try:
        value = temperature(progress)
    except TypeError as err:
        if isinstance(temperature, type):
            raise TypeError(
                f"Expected a temperature schedule instance, but got the class {temperature.__name__}. Instantiate"
                f" it, e.g. `temperature={temperature.__name__}()`."
            ) from err
        name = getattr(temperature, "__name__", type(temperature).__name__)
        raise TypeError(
            f"The temperature schedule {name} could not be called as schedule(progress): {err}. A schedule takes"
            " one argument, the fraction of training done in [0, 1], and returns a temperature."
        ) from err
    try:
        return _validate_temperature(value)
    except (TypeError, ValueError):
        name = getattr(temperature, "__name__", type(temperature).__name__)
        raise ValueError(
            f"The temperature schedule {name} returned {value!r} at progress {progress}; a schedule must return"
            " a temperature > 0 (or float('inf'))."
        ) from None


def _step_progress(step: int, total_steps: int) -> float:
    # The one place progress is computed from a step, so every caller sees the same float.
    return min(step / total_steps, 1.0)


def constant_runs(schedule: TemperatureLike, total_steps: int) -> tuple[np.ndarray, list[float]]:
    """The schedule evaluated at every optimizer step, as runs of constant temperature.

    Step ``s`` has progress ``s / total_steps``; from step ``total_steps`` on the schedule holds its value at
    progress 1. Returns the first step of every run and its temperature. Known schedules are resolved in closed
    form; any other callable is called once per step, so an excursion of a single step is found.

    Example:
        >>> constant_runs(Cooldown(5.0, 1.0, 0.5), total_steps=10)
        (array([0, 5]), [5.0, 1.0])
        >>> constant_runs(lambda p: 3.0 if 0.3 <= p < 0.4 else 1.0, total_steps=10)
        (array([0, 3, 4]), [1.0, 3.0, 1.0])
    """
    if not callable(schedule):
        return np.zeros(1, dtype=np.int64), [resolve_temperature(schedule, 0.0)]
    if isinstance(schedule, Constant):
        return np.zeros(1, dtype=np.int64), [schedule.temperature]
    if isinstance(schedule, Cooldown) and type(schedule).__call__ is Cooldown.__call__:
        if schedule.start == schedule.end:
            return np.zeros(1, dtype=np.int64), [schedule.start]
        # The first step whose progress reaches `at`, found with the same float comparison the schedule makes.
        switch = min(max(math.ceil(schedule.at * total_steps), 0), total_steps)
        while switch > 0 and _step_progress(switch - 1, total_steps) >= schedule.at:
            switch -= 1
        while switch <= total_steps and _step_progress(switch, total_steps) < schedule.at:
            switch += 1
        if switch == 0:
            return np.zeros(1, dtype=np.int64), [schedule.end]
        if switch > total_steps:
            return np.zeros(1, dtype=np.int64), [schedule.start]
        return np.array([0, switch], dtype=np.int64), [schedule.start, schedule.end]
    starts: list[int] = []
    temps: list[float] = []
    for step in range(total_steps + 1):
        value = resolve_temperature(schedule, _step_progress(step, total_steps))
        if not temps or value != temps[-1]:
            starts.append(step)
            temps.append(value)
    return np.asarray(starts, dtype=np.int64), temps
