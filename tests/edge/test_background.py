"""The background check worker's decisions: backoff with jitter, and when a poked or scheduled check is due."""

from __future__ import annotations

import math

import pytest
from waiting import poll

from sdk.backoff import Backoff
from sdk.edge.background import CheckSchedule, CheckWorker, next_due
from sdk.errors import ConfigError


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        pytest.param(1, 0.5, 1.0, id="first-retry"),
        pytest.param(4, 4.0, 8.0, id="doubles"),
        pytest.param(30, 150.0, 300.0, id="capped"),
    ],
)
def test_backoff_doubles_up_to_its_cap_and_jitters_downwards(failures, low, high):
    backoff = Backoff(base_s=1.0, max_s=300.0, jitter=0.5)
    assert backoff.delay(failures, 0.0) == low
    assert backoff.delay(failures, 1.0) == high  # the draw's bound, never reached: the ceiling is never passed
    assert low < backoff.delay(failures, 0.3) < high


def test_a_poke_waits_for_the_minimum_gap_and_a_schedule_does_not():
    assert next_due(now=10.0, scheduled=math.inf, poked=False, earliest=0.0) == math.inf
    assert next_due(now=10.0, scheduled=math.inf, poked=True, earliest=0.0) == 10.0  # at once
    assert next_due(now=10.0, scheduled=math.inf, poked=True, earliest=40.0) == 40.0  # coalesced
    assert next_due(now=10.0, scheduled=25.0, poked=True, earliest=40.0) == 25.0  # the timer comes first


@pytest.mark.parametrize(
    ("make", "key"),
    [
        pytest.param(lambda: CheckSchedule(min_interval_s=-1.0), "min_interval_s", id="negative-gap"),
        pytest.param(lambda: CheckSchedule(every_s=0.0), "every_s", id="zero-period"),
        pytest.param(lambda: Backoff(jitter=1.0), "jitter", id="full-jitter"),
        pytest.param(lambda: Backoff(base_s=10.0, max_s=1.0), "base_s", id="base-over-cap"),
    ],
)
def test_schedule_errors_name_the_key(make, key):
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.key == key


def test_the_worker_checks_again_when_the_result_asks_and_only_then():
    results = [0.0, 0.0, None]  # seconds until the next check each result asks for; None: the schedule's (never)
    worker = CheckWorker(
        lambda: results.pop(0),
        name="follows-the-outcome",
        schedule=CheckSchedule(min_interval_s=0, at_start=True),
        next_check_in=lambda wait_s: wait_s,
    ).start()
    try:
        poll(lambda: worker.runs == 3, "the checks the results asked for")
    finally:
        worker.stop()
    assert worker.runs == 3  # the third result asked for no check, and nothing else schedules one
    assert worker.errors == 0


def test_the_task_knows_whether_only_a_poke_asked_for_it():
    seen: list[bool] = []
    worker = CheckWorker(
        lambda: seen.append(worker.for_poke),
        name="poke-or-schedule",
        schedule=CheckSchedule(min_interval_s=0, at_start=True),  # then only pokes: no interval
    ).start()
    try:
        poll(lambda: len(seen) == 1, "the check at start")
        worker.poke()
        poll(lambda: len(seen) == 2, "the check the poke asked for")
    finally:
        worker.stop()
    assert seen == [False, True]  # the start was due by the schedule; the second, only by the poke


def test_a_result_the_schedule_cannot_read_is_a_counted_failure_and_the_thread_goes_on(caplog):
    runs: list[int] = []

    def unreadable(result):
        raise TypeError("not a number of seconds")

    # No retry before the next poke: the second check can only be the poke's.
    schedule = CheckSchedule(min_interval_s=0, at_start=True, backoff=Backoff(base_s=3600, max_s=3600))
    worker = CheckWorker(lambda: runs.append(1), name="unreadable", schedule=schedule, next_check_in=unreadable)
    with caplog.at_level("ERROR", logger="fedge.edge.background"):
        worker.start()
        try:
            poll(lambda: worker.errors == 1, "the failure counted")
            worker.poke()
            poll(lambda: len(runs) == 2, "a second check on the poke")
            assert worker.alive
        finally:
            worker.stop()
    assert worker.restarts == 0
    assert "TypeError" in caplog.records[0].getMessage()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_dies_anyway_is_found_on_the_next_poke_logged_and_started_again(caplog):
    runs: list[int] = []

    def exits_once():
        # Fault injection: a library calling sys.exit() inside a check, past the Exception boundary.
        runs.append(1)
        if len(runs) == 1:
            raise SystemExit(3)

    worker = CheckWorker(exits_once, name="exits", schedule=CheckSchedule(min_interval_s=0, at_start=True))
    with caplog.at_level("ERROR", logger="fedge.edge.background"):
        worker.start()
        try:
            poll(lambda: not worker.alive, "the thread ended by SystemExit")
            worker.poke()
            poll(lambda: len(runs) == 2, "a check by the restarted thread")
            assert worker.alive
        finally:
            worker.stop()
    assert worker.restarts == 1
    assert any("had died" in r.getMessage() for r in caplog.records)
