"""A device's status report as the registry reads it: bounded, validated, and its identity taken from the topic.

A status arrives on ``fedge/v1/devices/<id>/status`` (the broker's ACL lets only device
``<id>`` publish there), so ``<id>`` is the device; a payload naming another device is refused,
never believed. Everything else is checked against :class:`StatusReport` (strict types, bounded
numbers and strings, telemetry whose counts add up) before the registry stores any of it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdk import topics
from sdk.errors import StatusRejected
from sdk.telemetry import LATENCY_BOUNDS_MS, MAX_STATUS_BYTES, MAX_VERSIONS

__all__ = ["StatusReport", "TelemetryWindow", "VersionStats", "read_status", "validate_status"]

_MAX_INT = 2**31 - 1  # a 32-bit INTEGER column on PostgreSQL
_MAX_COUNT = 2**53  # exact in a float, so rates computed from counts stay exact
_STRICT = ConfigDict(strict=True, extra="ignore")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class VersionStats(BaseModel):
    """One version's share of a telemetry window: the counts, and the non-empty latency buckets."""

    model_config = _STRICT
    version: int = Field(ge=0, le=_MAX_INT)
    calls: int = Field(ge=0, le=_MAX_COUNT)
    errors: int = Field(0, ge=0, le=_MAX_COUNT)
    rows: int = Field(0, ge=0, le=_MAX_COUNT)
    fallbacks: int = Field(0, ge=0, le=_MAX_COUNT)
    confident_rows: int = Field(0, ge=0, le=_MAX_COUNT)
    mean_confidence: float | None = Field(None, ge=0, le=1)
    latency: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list, max_length=len(LATENCY_BOUNDS_MS) + 1
    )  # [bucket index, count] pairs

    @model_validator(mode="after")
    def _adds_up(self) -> VersionStats:
        if self.errors > self.calls or self.fallbacks > self.rows or self.confident_rows > self.rows:
            raise ValueError("errors exceed calls, or fallbacks or confident rows exceed rows")
        if (self.mean_confidence is None) != (self.confident_rows == 0):
            raise ValueError("mean_confidence is given exactly when confident_rows > 0")
        indices = [index for index, _ in self.latency]
        if len(set(indices)) != len(indices) or not all(0 <= i <= len(LATENCY_BOUNDS_MS) for i in indices):
            raise ValueError("latency buckets must be distinct indices within the shared layout")
        if any(count <= 0 for _, count in self.latency) or sum(n for _, n in self.latency) != self.calls:
            raise ValueError("latency bucket counts must be positive and add up to calls")
        return self

    def buckets(self) -> list[int]:
        """The latency counts as a full list over the shared buckets."""
        dense = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        for index, count in self.latency:
            dense[index] = count
        return dense


class TelemetryWindow(BaseModel):
    """What a device served between two reports, per version."""

    model_config = _STRICT
    window: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9-]+$")
    seconds: float = Field(ge=0, le=10**8)
    versions: list[VersionStats] = Field(default_factory=list, max_length=MAX_VERSIONS)

    @model_validator(mode="after")
    def _one_entry_per_version(self) -> TelemetryWindow:
        if len({v.version for v in self.versions}) != len(self.versions):
            raise ValueError("a version appears twice in one window")
        return self


class StatusReport(BaseModel):
    """The fields of a status the registry keeps; others (a step's details) are ignored."""

    model_config = _STRICT
    device_id: str | None = Field(None, pattern=_NAME)
    model: str | None = Field(None, pattern=_NAME)
    target: str | None = Field(None, max_length=32)
    state: str = Field("online", max_length=32)
    step: str | None = Field(None, max_length=64)
    reason: str | None = None  # bounded by the message; stored cut to 500 characters
    version: int | None = Field(None, ge=0, le=_MAX_INT)
    installed_version: int | None = Field(None, ge=0, le=_MAX_INT)
    target_version: int | None = Field(None, ge=0, le=_MAX_INT)
    telemetry: TelemetryWindow | None = None

    @property
    def running_version(self) -> int | None:
        """The version the device says it runs."""
        return self.installed_version if self.installed_version is not None else self.version


def validate_status(event: dict[str, Any], device_id: str) -> StatusReport:
    """``event`` checked as a status of ``device_id``.

    Raises:
        StatusRejected: a field is malformed or out of bounds, or the event names another device.
    """
    try:
        report = StatusReport.model_validate(event)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
        raise StatusRejected(f"malformed status: {problems}"[:300]) from None
    if report.device_id is not None and report.device_id != device_id:
        raise StatusRejected(f"a status on {device_id!r}'s topic names device {report.device_id!r}")
    return report


def read_status(topic: str, payload: bytes) -> tuple[str, dict[str, Any]]:
    """The device id (from ``topic``) and the decoded object of a status message, before validation.

    Raises:
        StatusRejected: the topic is not a device's status topic, the payload is over
            :data:`~sdk.telemetry.MAX_STATUS_BYTES` (checked before parsing), or not a JSON object.
    """
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{topics.PREFIX}/devices" or parts[4] != "status":
        raise StatusRejected(f"not a device status topic: {topic[:100]!r}")
    try:
        device_id = topics.check_segment(parts[3], "device id")
    except ValueError as exc:
        raise StatusRejected(str(exc)[:200]) from None
    if len(payload) > MAX_STATUS_BYTES:
        raise StatusRejected(f"a status of {len(payload)} bytes, over {MAX_STATUS_BYTES}")
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise StatusRejected(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(event, dict):
        raise StatusRejected("a status must be a JSON object")
    return device_id, event
