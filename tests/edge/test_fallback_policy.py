"""The fallback policy's decision function on its own: no broker, no model, no clock.

A scripted driver plays the outcomes a case names (the local model's confidences or its
failure, the cloud's reply or error) and records the actions :func:`decide` asks for.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from sdk.edge.fallback import (
    MODES,
    AnswerCloud,
    AskCloud,
    Call,
    CloudFailed,
    CloudReplied,
    Degrade,
    Fail,
    LocalFailed,
    LocalRan,
    Merge,
    RunLocal,
    cloud_budget,
    decide,
)
from sdk.errors import (
    BackendError,
    CloudError,
    CloudUnavailable,
    DeadlineExceeded,
    InputOutOfRange,
    ModelNotFound,
    Overloaded,
    RemoteError,
)

CLASSES = 10
CONFIDENT = np.array([0.9, 0.8, 0.6])
SOME_LOW = np.array([0.9, 0.2, 0.4])  # rows 1 and 2 below 0.5
LOW_ROWS = [False, True, True]


class Script:
    """Plays one call: what the local model and the cloud do when the decision asks them."""

    def __init__(self, local="confident", cloud="ok", *, reply_shape=None):
        self.local, self.cloud, self.reply_shape = local, cloud, reply_shape
        self.backend_error = BackendError("engine failed")

    def run_local(self, action: RunLocal) -> LocalRan | LocalFailed:
        if self.local == "failed":
            return LocalFailed(self.backend_error)
        confidence = {"confident": CONFIDENT, "some-low": SOME_LOW}[self.local]
        return LocalRan((len(confidence), CLASSES), confidence if action.score else None)

    def ask_cloud(self, action: AskCloud, rows: int) -> CloudReplied | CloudFailed:
        if isinstance(self.cloud, CloudError):
            return CloudFailed(action.rows, self.cloud)
        n = rows if action.rows is None else int(action.rows.sum())
        return CloudReplied(action.rows, (n, CLASSES) if self.reply_shape is None else self.reply_shape)


def play(call: Call, script: Script, elapsed_s: float = 0.0) -> list:
    """The actions ``decide`` names for ``call`` until a final one, the outcomes recorded between them."""
    actions = []
    for _ in range(6):
        action = decide(call, elapsed_s)
        actions.append(action)
        if isinstance(action, RunLocal):
            call.local = script.run_local(action)
        elif isinstance(action, AskCloud):
            call.cloud = script.ask_cloud(action, call.rows or 3)
        else:
            return actions
    raise AssertionError(f"no final action after {actions}")


def make_call(mode="edge-first", *, has_local=True, breaker_open=False, deadline_s=1.0, local_s=0.0, threshold=0.5):
    return Call(
        mode=mode,
        has_local=has_local,
        rows=3 if has_local else None,
        threshold=threshold,
        deadline_s=deadline_s,
        local_s=local_s,
        breaker_open=breaker_open,
    )


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


# --- every mode x local outcome x cloud outcome x time x breaker --------------------------------------------------

CLOUD_OUTCOMES = {
    "ok": "ok",
    "unavailable": CloudUnavailable("not connected to the broker"),
    "timeout": DeadlineExceeded("no answer from the cloud within 100 ms"),
    "overloaded": Overloaded("queue full"),
    "remote-error": RemoteError("internal", "boom"),
}
LOCAL_OUTCOMES = ("confident", "some-low", "failed")


def expected(mode, local, cloud, asked):
    """What the README's table says, as action kinds, with the error the call raises (None: it answers)."""
    usable = asked and cloud == "ok"
    ask = ["AskCloud"] if asked else []
    if mode == "edge-only":
        return (["RunLocal", "Fail"], BackendError) if local == "failed" else (["RunLocal", "AnswerLocal"], None)
    if mode == "edge-first":
        if local == "confident":
            return ["RunLocal", "AnswerLocal"], None
        if local == "some-low":
            return ["RunLocal", *ask, "Merge" if usable else "Degrade"], None
        return (["RunLocal", *ask, "AnswerCloud"], None) if usable else (["RunLocal", *ask, "Fail"], CloudError)
    if usable:
        return ["AskCloud", "AnswerCloud"], None
    if mode == "cloud-only":
        return [*ask, "Fail"], CloudError
    if local == "failed":
        return [*ask, "RunLocal", "Fail"], BackendError
    return [*ask, "RunLocal", "Degrade"], None


CASES = [
    pytest.param(
        mode, local, cloud, time_left, breaker, id=f"{mode}-{local}-cloud_{cloud}-{time_left}-breaker_{breaker}"
    )
    for mode, local, cloud, time_left, breaker in itertools.product(
        MODES, LOCAL_OUTCOMES, CLOUD_OUTCOMES, ("time-left", "deadline-passed"), ("closed", "open")
    )
]


@pytest.mark.parametrize(("mode", "local", "cloud", "time_left", "breaker"), CASES)
def test_every_mode_and_outcome(mode, local, cloud, time_left, breaker):
    call = make_call(mode, breaker_open=breaker == "open")
    elapsed_s = 0.1 if time_left == "time-left" else 1.0
    script = Script(local, CLOUD_OUTCOMES[cloud])
    actions = play(call, script, elapsed_s)

    asked = breaker == "closed" and time_left == "time-left"
    want, error = expected(mode, local, cloud, asked)
    assert kinds(actions) == want
    final = actions[-1]
    if error is BackendError:
        assert final.error is script.backend_error
    cloud_error = None  # the cloud's failure as the final action carries it, if it carries one
    if isinstance(final, Degrade):
        cloud_error = final.cause
    elif error is CloudError:
        cloud_error = final.error
    elif error is BackendError and mode == "cloud-first":
        cloud_error = final.cause
    if cloud_error is not None and asked:
        assert cloud_error is CLOUD_OUTCOMES[cloud]  # the cloud's own error, whatever its kind
    elif cloud_error is not None:  # not asked: the error its client would have raised at once
        assert type(cloud_error) is (CloudUnavailable if breaker == "open" else DeadlineExceeded)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cloud", CLOUD_OUTCOMES)
def test_without_a_local_model(mode, cloud):
    actions = play(make_call(mode, has_local=False), Script(cloud=CLOUD_OUTCOMES[cloud]))

    if mode == "edge-only":
        assert kinds(actions) == ["Fail"]
        assert isinstance(actions[0].error, ModelNotFound)
        return
    assert kinds(actions) == ["AskCloud", "AnswerCloud" if cloud == "ok" else "Fail"]
    assert actions[0].rows is None
    assert actions[0].reason == "no-local-model"
    if cloud != "ok":
        assert actions[-1].error is CLOUD_OUTCOMES[cloud]


@pytest.mark.parametrize(
    ("breaker_open", "elapsed_s", "error"),
    [
        pytest.param(True, 0.0, CloudUnavailable, id="breaker-open"),
        pytest.param(False, 1.0, DeadlineExceeded, id="late"),
    ],
)
def test_without_a_local_model_a_cloud_that_may_not_be_asked_fails_at_once(breaker_open, elapsed_s, error):
    actions = play(make_call("cloud-first", has_local=False, breaker_open=breaker_open), Script(), elapsed_s)
    assert kinds(actions) == ["Fail"]
    assert type(actions[0].error) is error


# --- rows, thresholds, budgets -------------------------------------------------------------------------------------


def test_only_the_low_confidence_rows_go_to_the_cloud_and_come_back():
    actions = play(make_call(), Script("some-low"), elapsed_s=0.25)

    run, ask, merge = actions
    assert run == RunLocal(score=True)
    assert ask.rows.tolist() == LOW_ROWS
    assert ask.reason == "low-confidence"
    assert ask.budget_s == pytest.approx(cloud_budget(1.0, 0.25))
    assert isinstance(merge, Merge)
    assert merge.rows.tolist() == LOW_ROWS


def test_only_the_low_confidence_rows_are_degraded_when_the_cloud_fails():
    error = DeadlineExceeded("late")
    (_, _, degrade) = play(make_call(), Script("some-low", error))
    assert isinstance(degrade, Degrade)
    assert degrade.rows.tolist() == LOW_ROWS
    assert degrade.cause is error


@pytest.mark.parametrize(
    ("threshold", "asked_rows"),
    [
        pytest.param(0.0, None, id="zero-never-asks"),
        pytest.param(0.6, None, id="equal-stays-local"),
        pytest.param(0.61, [False, False, True], id="just-above"),
        pytest.param(1.0, [True, True, True], id="one-asks-all"),
    ],
)
def test_the_threshold_is_strict(threshold, asked_rows):
    actions = play(make_call(threshold=threshold), Script("confident"))  # confidences 0.9, 0.8, 0.6
    if asked_rows is None:
        assert kinds(actions) == ["RunLocal", "AnswerLocal"]
    else:
        assert kinds(actions) == ["RunLocal", "AskCloud", "Merge"]
        assert actions[1].rows.tolist() == asked_rows


def test_cloud_first_keeps_room_for_two_local_calls():
    (ask, _) = play(make_call("cloud-first", local_s=0.1), Script(), elapsed_s=0.2)
    assert ask == AskCloud(None, pytest.approx(cloud_budget(1.0, 0.2, 0.2)), "cloud-first")
    assert ask.budget_s < cloud_budget(1.0, 0.2)


def test_cloud_first_answers_locally_when_only_the_room_for_the_local_model_is_left():
    # 0.75 s spent of 1 s, a local call takes 0.2 s: asking the cloud would leave too little to fall back.
    cloud_first = play(make_call("cloud-first", local_s=0.2), Script(), elapsed_s=0.75)
    edge_first = play(make_call("edge-first", local_s=0.2, threshold=1.0), Script(), elapsed_s=0.75)

    assert kinds(cloud_first) == ["RunLocal", "Degrade"]
    assert isinstance(cloud_first[-1].cause, DeadlineExceeded)
    assert kinds(edge_first) == ["RunLocal", "AskCloud", "Merge"]  # the local answer is already there


def test_run_local_asks_for_scores_only_under_edge_first():
    assert decide(make_call("edge-first"), 0.0) == RunLocal(score=True)
    assert decide(make_call("edge-only"), 0.0) == RunLocal(score=False)
    call = make_call("cloud-first")
    call.cloud = CloudFailed(None, Overloaded("full"))
    assert decide(call, 0.0) == RunLocal(score=False)


def test_an_engine_failure_sends_the_whole_call_and_says_why():
    (_, ask, answer) = play(make_call(), Script("failed"))
    assert ask.rows is None
    assert ask.reason == "engine-failed"
    assert isinstance(answer, AnswerCloud)


# --- what a failure carries ----------------------------------------------------------------------------------------


def test_the_cloud_failing_a_call_the_engine_failed_raises_the_cloud_error_from_the_engine_error():
    script = Script("failed", Overloaded("full"))
    fail = play(make_call(), script)[-1]
    assert fail == Fail(script.cloud, cause=script.backend_error)


def test_cloud_first_whose_safety_net_fails_raises_the_engine_error_from_the_cloud_error():
    script = Script("failed", CloudUnavailable("down"))
    fail = play(make_call("cloud-first"), script)[-1]
    assert fail == Fail(script.backend_error, cause=script.cloud)


@pytest.mark.parametrize(
    ("mode", "local", "reply_shape", "final"),
    [
        pytest.param("edge-first", "some-low", (3, CLASSES), Degrade, id="edge-first-too-many-rows"),
        pytest.param("edge-first", "some-low", (2, CLASSES + 1), Degrade, id="edge-first-wrong-classes"),
        pytest.param("edge-first", "some-low", (), Degrade, id="edge-first-scalar"),
        pytest.param("edge-first", "failed", (2, CLASSES), Fail, id="engine-failed-too-few-rows"),
        pytest.param("cloud-first", "confident", (2, CLASSES), Degrade, id="cloud-first-too-few-rows"),
        pytest.param("cloud-only", "confident", (4, CLASSES), Fail, id="cloud-only-too-many-rows"),
    ],
)
def test_a_reply_of_the_wrong_shape_is_a_failed_cloud(mode, local, reply_shape, final):
    actions = play(make_call(mode), Script(local, reply_shape=reply_shape))
    assert isinstance(actions[-1], final)
    error = actions[-1].cause if final is Degrade else actions[-1].error
    assert isinstance(error, RemoteError)
    assert error.code == "bad_reply"


def test_cloud_first_checks_only_the_rows_of_a_reply():
    actions = play(make_call("cloud-first"), Script(reply_shape=(3, CLASSES + 5)))
    assert kinds(actions) == ["AskCloud", "AnswerCloud"]  # nothing local to hold the classes against


def test_without_a_local_model_any_reply_is_the_answer():
    actions = play(make_call("cloud-only", has_local=False), Script(reply_shape=(CLASSES,)))
    assert kinds(actions) == ["AskCloud", "AnswerCloud"]


# --- rows outside the training range (range_policy = "cloud") ----------------------------------------------------

OUTSIDE = np.array([False, False, True])


def test_rows_outside_the_range_go_to_the_cloud_however_confident():
    call = make_call()
    call.outside = OUTSIDE
    run, ask, merge = play(call, Script("confident"))
    assert run == RunLocal(score=True)  # the local answer stays the safety net
    assert ask.rows.tolist() == OUTSIDE.tolist()
    assert ask.reason == "out-of-range"
    assert merge.rows.tolist() == OUTSIDE.tolist()


def test_rows_outside_the_range_join_the_low_confidence_ones():
    call = make_call()
    call.outside = np.array([True, False, False])
    _, ask, _ = play(call, Script("some-low"))
    assert ask.rows.tolist() == [True, True, True]
    assert ask.reason == "low-confidence"


def test_rows_outside_the_range_are_degraded_when_the_cloud_fails():
    call = make_call()
    call.outside = OUTSIDE
    *_, degrade = play(call, Script("confident", CloudUnavailable("down")))
    assert isinstance(degrade, Degrade)
    assert degrade.rows.tolist() == OUTSIDE.tolist()


def test_rows_outside_the_range_with_no_cloud_to_ask_fail_before_the_engine_runs():
    call = make_call("edge-only")
    call.outside = OUTSIDE
    actions = play(call, Script("confident"))
    assert kinds(actions) == ["Fail"]
    assert isinstance(actions[0].error, InputOutOfRange)
    assert "1 rows" in str(actions[0].error)


# --- purity --------------------------------------------------------------------------------------------------------


def test_decide_reads_the_call_and_changes_nothing():
    call = make_call()
    call.local = LocalRan((3, CLASSES), SOME_LOW)
    before = dataclasses.replace(call)
    first, second = decide(call, 0.3), decide(call, 0.3)
    assert isinstance(first, AskCloud)
    assert first.rows.tolist() == second.rows.tolist() == LOW_ROWS
    assert first.budget_s == second.budget_s
    assert all(getattr(call, f.name) is getattr(before, f.name) for f in dataclasses.fields(Call))
