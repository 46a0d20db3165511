"""The fallback policy: which rows of a call the cloud should answer, and what happens when it cannot.

Modes (``EdgeConfig.fallback``):

- ``edge-first`` (default): the local model answers; rows whose confidence is below the
  threshold go to the cloud; if the cloud cannot answer in time they keep the local
  answer, flagged ``edge-degraded``. A local engine failure sends the whole call to the cloud.
- ``edge-only``: never the cloud.
- ``cloud-first``: the cloud answers; the local model is the safety net (``edge-degraded``).
- ``cloud-only``: the cloud answers or the call raises a ``CloudError``; no local safety net.

Without a local model every mode but ``edge-only`` asks the cloud and raises when it cannot.

Decisions only, as in tenacity's ``Retrying.iter``: :func:`decide` reads what a :class:`Call`
has seen so far and the time spent, and names the next action; the driver
(:class:`~sdk.edge.runtime.EdgeRuntime`) carries it out, records the outcome on the call and
asks again, until a final action (an answer, or :class:`Fail`)::

    edge-only     RunLocal -> AnswerLocal | Fail
    edge-first    RunLocal -> AnswerLocal | AskCloud(low rows) -> Merge | Degrade(low rows)
                           -> (engine failed) AskCloud(all) -> AnswerCloud | Fail
    cloud-first   AskCloud(all) -> AnswerCloud | RunLocal -> Degrade(all) | Fail
    cloud-only    AskCloud(all) -> AnswerCloud | Fail
    no local      AskCloud(all) -> AnswerCloud | Fail          (edge-only: Fail)

Rows far outside the manifest's value range under ``range_policy = "cloud"`` (``Call.outside``)
go to the cloud with the low-confidence ones under ``edge-first`` and keep the local answer,
flagged ``edge-degraded``, when it cannot answer; under ``edge-only`` (or without a cloud client)
the call fails with :class:`~sdk.errors.InputOutOfRange`; the cloud answers them anyway under
``cloud-first`` and ``cloud-only``.

No I/O and no clock here: the driver passes the time spent. A cloud the decision may not ask
(an open breaker, no time left) is skipped and counts as a cloud that failed with the error its
client would have raised at once; the client still has the last word at send time (one probe
in half-open, a lost connection). New inputs of the policy belong on :class:`Call`; the
confidence the driver records is the one to calibrate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from sdk.errors import (
    BackendError,
    CloudError,
    CloudUnavailable,
    DeadlineExceeded,
    FedgeError,
    InputOutOfRange,
    ModelNotFound,
    RemoteError,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "MODES",
    "Action",
    "AnswerCloud",
    "AnswerLocal",
    "AskCloud",
    "Call",
    "CloudFailed",
    "CloudReplied",
    "Degrade",
    "Fail",
    "LocalFailed",
    "LocalRan",
    "Merge",
    "Mode",
    "Reason",
    "RunLocal",
    "cloud_budget",
    "decide",
    "low_confidence",
    "resolve_threshold",
]

Mode = Literal["edge-first", "edge-only", "cloud-first", "cloud-only"]
MODES: tuple[Mode, ...] = get_args(Mode)
#: Why a call asks the cloud.
Reason = Literal["low-confidence", "out-of-range", "engine-failed", "cloud-first", "no-local-model"]
#: The threshold when neither the config nor a calibrated manifest sets one.
DEFAULT_THRESHOLD = 0.5
_SAFETY_S = 0.001


def resolve_threshold(configured: float | None, calibrated: float | None) -> float:
    """The confidence threshold in force: the config's, else the manifest's calibrated one, else the default."""
    if configured is not None:
        return configured
    if calibrated is not None:
        return calibrated
    return DEFAULT_THRESHOLD


def low_confidence(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Rows the cloud should answer under ``edge-first``: confidence strictly below the threshold."""
    return confidence < threshold


def cloud_budget(deadline_s: float, elapsed_s: float, local_s: float = 0.0) -> float:
    """Seconds a cloud call may take and still leave ``local_s`` to answer locally before the deadline."""
    return deadline_s - elapsed_s - local_s - _SAFETY_S


# What the driver saw, recorded on the call.


@dataclass(frozen=True, slots=True)
class LocalRan:
    """The local model answered every row with outputs of ``shape``; ``confidence`` per row when asked for."""

    shape: tuple[int, ...]
    confidence: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class LocalFailed:
    """The local engine failed."""

    error: BackendError


@dataclass(frozen=True, slots=True)
class CloudReplied:
    """The cloud answered ``rows`` (None: the whole input) with a tensor of ``shape``."""

    rows: np.ndarray | None
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CloudFailed:
    """The cloud could not answer ``rows`` (None: the whole input)."""

    rows: np.ndarray | None
    error: CloudError


@dataclass(slots=True)
class Call:
    """What one ``predict`` call knows: fixed at its start, then the outcomes the driver records.

    ``rows`` is the batch size (None without a local model: the input is not prepared, the
    cloud alone tells its shape); ``local_s`` is the driver's estimate of one local call;
    ``breaker_open`` whether the cloud's breaker refused calls when this one started;
    ``outside`` the rows far outside the manifest's value range that the cloud should answer.
    """

    mode: Mode
    has_local: bool
    rows: int | None
    threshold: float
    deadline_s: float
    local_s: float = 0.0
    breaker_open: bool = False
    outside: np.ndarray | None = None
    local: LocalRan | LocalFailed | None = None
    cloud: CloudReplied | CloudFailed | None = None


# What the driver should do next.


@dataclass(frozen=True, slots=True)
class RunLocal:
    """Run the local model on the whole batch; ``score``: record each row's confidence for the next decision."""

    score: bool


@dataclass(frozen=True, slots=True)
class AskCloud:
    """Ask the cloud to answer ``rows`` (None: the whole input) within ``budget_s`` seconds, because of ``reason``."""

    rows: np.ndarray | None
    budget_s: float
    reason: Reason


@dataclass(frozen=True, slots=True)
class AnswerLocal:
    """Done: every row is the local model's answer."""


@dataclass(frozen=True, slots=True)
class AnswerCloud:
    """Done: every row is the cloud's answer."""


@dataclass(frozen=True, slots=True)
class Merge:
    """Done: the local answers, with the cloud's in place of ``rows``."""

    rows: np.ndarray


@dataclass(frozen=True, slots=True)
class Degrade:
    """Done: the local answers, ``rows`` (None: all) flagged ``edge-degraded``; ``cause``: why the cloud did not."""

    rows: np.ndarray | None
    cause: CloudError


@dataclass(frozen=True, slots=True)
class Fail:
    """Done: raise ``error`` (from ``cause``, the failure before it, if any)."""

    error: FedgeError
    cause: FedgeError | None = None


Action = RunLocal | AskCloud | AnswerLocal | AnswerCloud | Merge | Degrade | Fail

_SCORED = RunLocal(score=True)
_UNSCORED = RunLocal(score=False)
_LOCAL = AnswerLocal()
_CLOUD = AnswerCloud()


def decide(call: Call, elapsed_s: float) -> Action:
    """The next action for ``call``, ``elapsed_s`` seconds after it started."""
    if not call.has_local:
        return _remote_only(call, elapsed_s)
    if call.mode == "edge-only":
        return _local_only(call)
    if call.mode == "edge-first":
        return _edge_first(call, elapsed_s)
    return _cloud_first(call, elapsed_s)


def _remote_only(call: Call, elapsed_s: float) -> Action:
    if call.mode == "edge-only":
        return Fail(ModelNotFound("no local model is loaded and the fallback mode is edge-only"))
    cloud = call.cloud or _ask_or_refuse(call, None, elapsed_s, 0.0, "no-local-model")
    if isinstance(cloud, AskCloud):
        return cloud
    if isinstance(cloud, CloudFailed):
        return Fail(cloud.error)
    return _CLOUD


def _local_only(call: Call) -> Action:
    local = call.local
    if call.outside is not None and call.outside.any():
        return Fail(InputOutOfRange(f"{int(call.outside.sum())} rows are far outside the training range, no cloud"))
    if local is None:
        return _UNSCORED
    if isinstance(local, LocalFailed):
        return Fail(local.error)
    return _LOCAL


def _edge_first(call: Call, elapsed_s: float) -> Action:
    local = call.local
    if local is None:
        return _SCORED
    if isinstance(local, LocalFailed):  # the cloud stands in for the whole call, or the call fails
        cloud = call.cloud or _ask_or_refuse(call, None, elapsed_s, 0.0, "engine-failed")
        if isinstance(cloud, AskCloud):
            return cloud
        failure = _failure(call, cloud)
        return _CLOUD if failure is None else Fail(failure, cause=local.error)
    cloud = call.cloud
    if cloud is None:
        assert local.confidence is not None  # asked for with RunLocal(score=True)
        low = low_confidence(local.confidence, call.threshold)
        reason: Reason = "low-confidence" if low.any() else "out-of-range"
        if call.outside is not None:
            low |= call.outside
        if not low.any():
            return _LOCAL
        cloud = _ask_or_refuse(call, low, elapsed_s, 0.0, reason)
        if isinstance(cloud, AskCloud):
            return cloud
    failure = _failure(call, cloud)
    if failure is not None:
        return Degrade(cloud.rows, failure)
    assert cloud.rows is not None
    return Merge(cloud.rows)


def _cloud_first(call: Call, elapsed_s: float) -> Action:
    # Keep room for two local calls: the local model answers should the cloud fail.
    cloud = call.cloud or _ask_or_refuse(call, None, elapsed_s, 2 * call.local_s, "cloud-first")
    if isinstance(cloud, AskCloud):
        return cloud
    failure = _failure(call, cloud)
    if failure is None:
        return _CLOUD
    if call.mode == "cloud-only":
        return Fail(failure)
    local = call.local
    if local is None:
        return _UNSCORED
    if isinstance(local, LocalFailed):
        return Fail(local.error, cause=failure)
    return Degrade(None, failure)


def _ask_or_refuse(
    call: Call, rows: np.ndarray | None, elapsed_s: float, reserve_s: float, reason: Reason
) -> AskCloud | CloudFailed:
    """Ask the cloud, or the failure its client would raise at once: an open breaker or no time left."""
    if call.breaker_open:
        return CloudFailed(rows, CloudUnavailable("circuit open: the cloud failed recently"))
    budget = cloud_budget(call.deadline_s, elapsed_s, reserve_s)
    if budget <= 0:
        return CloudFailed(rows, DeadlineExceeded("no time left for a cloud call"))
    return AskCloud(rows, budget, reason)


def _failure(call: Call, cloud: CloudReplied | CloudFailed) -> CloudError | None:
    """The cloud's failure, counting a reply of the wrong shape as one; None when it answered well."""
    if isinstance(cloud, CloudFailed):
        return cloud.error
    if call.rows is None:  # no local model: nothing to hold the reply against
        return None
    rows = call.rows if cloud.rows is None else int(cloud.rows.sum())
    local = call.local
    if isinstance(local, LocalRan):  # the reply's rows replace local ones: all but the first dimension must match
        expected: tuple[int, ...] = (rows, *local.shape[1:])
        ok = cloud.shape == expected
    else:
        ok = cloud.shape[:1] == (rows,)
    return None if ok else RemoteError("bad_reply", f"the cloud answered with shape {cloud.shape}")
