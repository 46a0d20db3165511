"""The update state machine on its own: no network, no disk, no clock; every decision it takes."""

from __future__ import annotations

import pytest

from sdk.backoff import Backoff
from sdk.edge.update_machine import HealthRules, Release, State, UpdateMachine, choose_release
from sdk.errors import (
    DeviceResourceError,
    EngineLoadFailed,
    ModelSignatureMismatch,
    ReleaseUnusable,
    RepositoryUnreachable,
    SmokeTestFailed,
    UpdateRejected,
)

BACKOFF = Backoff(base_s=5.0, max_s=900.0, interval_s=900.0)
RULES = HealthRules(window_s=10.0, probes=2, max_error_rate=0.05, max_error_run=3)


def machine(failures: int = 0, draw: float = 0.0) -> UpdateMachine:
    return UpdateMachine(backoff=BACKOFF, health=RULES, failures=failures, draw=lambda: draw)


def release(version: int, targets=("onnx-int8", "onnx-fp32", "tflite"), **fields) -> Release:
    base = {"channel": "stable", "rollout": 100, "state": "active"}
    return Release(version=version, targets=tuple(targets), **{**base, **fields})


def at(state: State, version: int = 2) -> UpdateMachine:
    """A machine walked along the happy path up to ``state``."""
    m = machine()
    m.advance(State.CHECKING)
    m.chosen(release(version))
    for step in (State.VERIFYING, State.STAGED, State.SWAPPING, State.WATCHING):
        if m.state is state:
            break
        m.advance(step)
    assert m.state is state
    return m


def choose(releases, installed=1, target="tflite", refused=()):
    """The release chosen (None: none), for the tests of upgrades; tests/ota/test_recall.py covers recalls."""
    choice = choose_release(
        releases, installed=installed, target=target, channel="stable", admitted=lambda r: True, refused=refused
    )
    return choice.release if choice is not None else None


def test_the_newest_release_with_the_device_target_is_chosen_and_newer_ones_without_it_are_skipped():
    releases = [release(2), release(3, targets=("onnx-int8",)), release(4, targets=("onnx-fp32",))]
    assert choose(releases).version == 2
    assert choose(releases, target="onnx-int8").version == 3


def test_refused_paused_other_channel_and_old_releases_are_not_chosen():
    releases = [
        release(1),
        release(2),
        release(3, state="paused"),
        release(4, channel="canary"),
        release(5),
    ]
    assert choose(releases).version == 5
    assert choose(releases, refused={5}).version == 2
    assert choose(releases, refused={2, 5}) is None
    assert choose(releases, installed=5) is None


def test_an_index_entry_without_targets_is_skipped_not_fatal():
    assert Release.from_index({"version": 3, "channel": "stable", "rollout": 100, "state": "active"}) is None
    parsed = Release.from_index(
        {"version": 3, "channel": "stable", "rollout": 100, "state": "active", "targets": ["tflite"]}
    )
    assert parsed == release(3, targets=("tflite",))


def test_the_happy_path_ends_committed_and_waits_the_interval_with_jitter():
    m = at(State.WATCHING)
    verdict = m.committed()
    assert (verdict.outcome, verdict.version, verdict.remember) == ("installed", 2, False)
    assert verdict.retry_after_s == pytest.approx(900.0 * 0.9)
    assert m.history == [
        State.IDLE,
        State.CHECKING,
        State.DOWNLOADING,
        State.VERIFYING,
        State.STAGED,
        State.SWAPPING,
        State.WATCHING,
        State.COMMITTED,
        State.IDLE,
    ]


def test_nothing_to_take_is_up_to_date():
    m = machine(failures=3)
    m.advance(State.CHECKING)
    verdict = m.chosen(None)
    assert verdict.outcome == "up-to-date"
    assert verdict.failures == 0  # a clean check resets the backoff
    assert m.state is State.IDLE


@pytest.mark.parametrize(
    ("skip_from", "to"),
    [
        pytest.param(State.IDLE, State.DOWNLOADING, id="download-before-refresh"),
        pytest.param(State.DOWNLOADING, State.STAGED, id="stage-unverified"),
        pytest.param(State.VERIFYING, State.SWAPPING, id="swap-before-staged"),
        pytest.param(State.WATCHING, State.IDLE, id="leave-watch-undecided"),
    ],
)
def test_steps_out_of_order_are_a_driver_bug(skip_from, to):
    m = machine() if skip_from is State.IDLE else at(skip_from)
    with pytest.raises(RuntimeError, match="may not go from"):
        m.advance(to)


@pytest.mark.parametrize(
    ("error", "outcome", "remember"),
    [
        pytest.param(ModelSignatureMismatch("input (64,)"), "rejected", True, id="signature-mismatch"),
        pytest.param(SmokeTestFailed("probe"), "rejected", True, id="probe-failed"),
        pytest.param(ReleaseUnusable("manifest says v9"), "rejected", True, id="release-unusable"),
        pytest.param(UpdateRejected("hash mismatch"), "rejected", False, id="bytes-do-not-verify"),
        pytest.param(RepositoryUnreachable("hung up"), "unreachable", False, id="hang-up"),
        pytest.param(DeviceResourceError("disk full"), "failed", False, id="disk-full"),
        pytest.param(EngineLoadFailed("out of memory"), "failed", False, id="engine-cannot-load-here"),
        pytest.param(KeyError("a bug"), "failed", False, id="unexpected"),
    ],
)
def test_a_failure_before_the_swap_blames_the_release_only_when_the_release_is_bad(error, outcome, remember):
    m = at(State.VERIFYING)
    verdict = m.failed(error)
    assert verdict.outcome == outcome
    assert verdict.remember is remember
    assert verdict.version == 2
    assert type(error).__name__ in verdict.detail
    assert m.state is State.IDLE


def test_environment_failures_back_off_exponentially_with_jitter_up_to_the_interval():
    delays = []
    failures = 0
    for _ in range(12):
        m = machine(failures=failures, draw=0.0)
        m.advance(State.CHECKING)
        verdict = m.failed(RepositoryUnreachable("down"))
        failures = verdict.failures
        delays.append(verdict.retry_after_s)
    assert delays[:4] == [2.5, 5.0, 10.0, 20.0]  # half the ceiling with draw 0
    assert max(delays) == 450.0  # the ceiling is the regular interval
    m = machine(failures=2, draw=0.999)
    m.advance(State.CHECKING)
    assert m.failed(DeviceResourceError("full")).retry_after_s == pytest.approx(20.0, rel=1e-3)


def test_a_run_of_failed_live_calls_ends_the_window_at_once():
    m = at(State.WATCHING)
    decision = m.watch(elapsed_s=0.1, calls=3, errors=3, error_run=3, probes_done=1, probe_problem=None)
    assert decision.action == "roll-back"
    assert "3 live calls failed in a row" in decision.reason


def test_scattered_failures_wait_for_the_window_then_judge_the_error_rate():
    m = at(State.WATCHING)
    early = m.watch(elapsed_s=1.0, calls=20, errors=2, error_run=1, probes_done=1, probe_problem=None)
    assert early.action == "watch"
    late = m.watch(elapsed_s=10.0, calls=20, errors=2, error_run=1, probes_done=2, probe_problem=None)
    assert late.action == "roll-back"
    assert "2 of 20 calls failed" in late.reason
    clean = m.watch(elapsed_s=10.0, calls=100, errors=1, error_run=0, probes_done=2, probe_problem=None)
    assert clean.action == "commit"


def test_the_window_waits_for_every_probe_and_a_failed_probe_ends_it():
    m = at(State.WATCHING)
    assert RULES.probe_due_s(0) == 0.0
    assert RULES.probe_due_s(1) == 5.0
    pending = m.watch(elapsed_s=12.0, calls=0, errors=0, error_run=0, probes_done=1, probe_problem=None)
    assert pending.action == "watch"
    failed = m.watch(elapsed_s=0.0, calls=0, errors=0, error_run=0, probes_done=1, probe_problem="mismatch")
    assert failed == ("roll-back", "probe failed: mismatch")


def test_a_rollback_remembers_the_version_unless_the_device_was_at_fault():
    m = at(State.WATCHING)
    verdict = m.rolled_back("3 live calls failed in a row", possible=True)
    assert (verdict.outcome, verdict.remember) == ("rolled-back", True)
    assert "health window" in verdict.detail
    m = at(State.SWAPPING)
    verdict = m.failed(EngineLoadFailed("out of memory"))
    assert (verdict.outcome, verdict.remember, verdict.failures) == ("rolled-back", False, 1)
    m = at(State.WATCHING)
    verdict = m.rolled_back("probe failed", possible=False)
    assert (verdict.outcome, verdict.remember) == ("rejected", True)
