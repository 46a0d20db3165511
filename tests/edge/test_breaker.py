import pytest

from sdk.edge.breaker import CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_opens_after_consecutive_failures_only():
    breaker = CircuitBreaker(3, 5.0, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the streak is broken
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_half_open_lets_one_probe_through_then_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_failed_probe_opens_again_for_a_full_timeout():
    clock = Clock()
    breaker = CircuitBreaker(2, 1.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now = 1.5
    assert not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0)
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(1, 0)


def test_a_reconnect_half_opens_an_open_breaker_at_once():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.now = 0.1  # far from the reset wait
    assert not breaker.allow()
    breaker.on_reconnect()
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one at a time
    breaker.record_success()
    assert breaker.state == "closed"


def test_a_probe_that_fails_after_a_reconnect_opens_for_a_full_wait():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    breaker.on_reconnect()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now = 4.9
    assert not breaker.allow()


def test_a_reconnect_leaves_a_closed_breaker_closed_and_its_count():
    breaker = CircuitBreaker(2, 5.0, clock=Clock())
    breaker.record_failure()
    breaker.on_reconnect()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"  # the failure before the reconnect still counted


def test_release_gives_the_probe_turn_back_without_a_verdict():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()  # the probe was cut off by a lost connection: it says nothing about the cloud
    assert breaker.state == "half-open"
    assert breaker.allow()
