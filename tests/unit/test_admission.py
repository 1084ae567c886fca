"""The ingress's hold on a refusing variant: driven by a stub clock, no timing."""

import pytest

from service.admission import RefusalHold


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_refusal_holds_the_variant_until_its_replica_expects_to_admit_again():
    clock = Clock()
    hold = RefusalHold(clock)
    assert hold.remaining_s(("qa", "dense")) is None  # never refused: requests go to the replicas
    hold.refused(("qa", "dense"), 0.5)
    assert hold.remaining_s(("qa", "dense")) == pytest.approx(0.5)
    assert hold.remaining_s(("qa", "pruned")) is None  # per variant
    clock.now += 0.3
    assert hold.remaining_s(("qa", "dense")) == pytest.approx(0.2)
    clock.now += 0.2
    assert hold.remaining_s(("qa", "dense")) is None  # over: the next request goes to a replica again


def test_a_shorter_later_refusal_does_not_shorten_the_hold():
    clock = Clock()
    hold = RefusalHold(clock)
    hold.refused("v", 2.0)
    clock.now += 0.5
    hold.refused("v", 0.1)  # another replica answered with a shorter queue
    assert hold.remaining_s("v") == pytest.approx(1.5)
    hold.refused("v", 3.0)
    assert hold.remaining_s("v") == pytest.approx(3.0)


def test_a_refusal_at_the_limit_holds_nothing():
    clock = Clock()
    hold = RefusalHold(clock)
    hold.refused("v", 0.0)
    assert hold.remaining_s("v") is None
    hold.refused("v", -1.0)  # never negative
    assert hold.remaining_s("v") is None
