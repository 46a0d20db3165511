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
