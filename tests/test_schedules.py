import pytest

from lightning_balance import Constant, Cooldown, LinearRamp, resolve_temperature


def test_cooldown_steps_at_the_switch():
    schedule = Cooldown(start=5.0, end=1.0, at=0.5)
    assert [schedule(p) for p in (0.0, 0.25, 0.4999, 0.5, 0.75, 1.0)] == [5.0, 5.0, 5.0, 1.0, 1.0, 1.0]


def test_increasing_schedule_is_allowed():
    assert Cooldown(start=1.0, end=5.0, at=0.2)(0.3) == 5.0


def test_linear_ramp():
    ramp = LinearRamp(start=4.0, end=2.0, begin=0.5, finish=1.0)
    assert [ramp(p) for p in (0.0, 0.5, 0.75, 1.0)] == [4.0, 4.0, 3.0, 2.0]


def test_constant():
    assert Constant(3.0)(0.9) == 3.0


def test_resolve_accepts_any_callable_and_clamps_progress():
    seen = []

    def schedule(progress):
        seen.append(progress)
        return 2.0

    assert resolve_temperature(schedule, 1.7) == 2.0
    assert resolve_temperature(schedule, -0.2) == 2.0
    assert seen == [1.0, 0.0]


@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), None, "hot"])
def test_schedule_returning_invalid_temperature(value):
    with pytest.raises(ValueError, match="returned .* at progress 0.5; a schedule must return a temperature > 0"):
        resolve_temperature(lambda p: value, 0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"start": 0.0}, "`start`"),
    ({"end": float("nan")}, "`end`"),
    ({"at": 1.5}, "`at`"),
    ({"at": float("nan")}, "`at`"),
])
def test_cooldown_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cooldown(**kwargs)


def test_ramp_validates():
    with pytest.raises(ValueError, match="`begin` < `finish`"):
        LinearRamp(begin=0.8, finish=0.2)


def test_numpy_scalars_are_accepted():
    import numpy as np

    assert Cooldown(at=np.float32(0.5))(0.6) == 1.0


def test_ramp_rejects_non_numbers():
    with pytest.raises(ValueError, match="`begin` to be a fraction of training"):
        LinearRamp(begin=None)
