import pytest

from pruning.methods.movement.schedules import CubicSchedule


def test_holds_initial_during_warmup_and_final_during_hold():
    schedule = CubicSchedule(initial=1.0, final=0.25, total_steps=100, warmup_steps=10, hold_steps=20)
    assert [schedule(step) for step in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert [schedule(step) for step in (80, 90, 100, 150)] == [0.25] * 4


def test_follows_the_cubic_curve_between():
    schedule = CubicSchedule(initial=1.0, final=0.25, total_steps=100, warmup_steps=10, hold_steps=20)
    # p = (35 - 10) / 70
    p = 25 / 70
    assert schedule(35) == pytest.approx(0.25 + 0.75 * (1 - p) ** 3)


def test_moves_fast_first_then_flattens():
    schedule = CubicSchedule(initial=1.0, final=0.0, total_steps=100)
    first_decile = schedule(0) - schedule(10)
    last_decile = schedule(90) - schedule(100)
    assert first_decile > 100 * last_decile > 0


def test_increasing_schedules_work_too():
    schedule = CubicSchedule(initial=0.0, final=0.1, total_steps=10)
    values = [schedule(step) for step in range(11)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == pytest.approx(0.1)


def test_no_ramp_jumps_to_final_after_warmup():
    schedule = CubicSchedule(initial=1.0, final=0.5, total_steps=10, warmup_steps=4, hold_steps=6)
    assert schedule(3) == 1.0 and schedule(4) == 0.5


@pytest.mark.parametrize(("total", "warmup", "hold"), [(0, 0, 0), (10, 6, 5), (10, -1, 0)])
def test_rejects_impossible_step_counts(total, warmup, hold):
    with pytest.raises(ValueError):
        CubicSchedule(1.0, 0.5, total, warmup, hold)
