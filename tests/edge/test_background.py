"""The background check worker's decisions: backoff with jitter, and when a poked or scheduled check is due."""

from __future__ import annotations

import math

import pytest

from sdk.edge.background import Backoff, CheckSchedule, next_due
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
    assert backoff.delay(failures, rng=lambda: 0.0) == high
    assert backoff.delay(failures, rng=lambda: 1.0) == low
    assert low < backoff.delay(failures, rng=lambda: 0.3) < high


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
