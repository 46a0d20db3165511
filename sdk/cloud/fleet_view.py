"""What the fleet dashboard shows, read from the registry's fleet and releases and the rollouts' status.

Only what :class:`~sdk.cloud.registry.Registry` and :class:`~sdk.cloud.rollout_store.RolloutStore`
already answer, arranged for a person: every device with its version and rates on it, and each
model's releases with the stage of its rollout and how many devices run each version.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sdk.cloud.registry import Registry
from sdk.cloud.rollout_store import RolloutStore
from sdk.errors import NotFound

__all__ = ["DeviceLine", "FleetView", "ModelView", "ReleaseLine", "fleet_view"]


@dataclass(frozen=True, kw_only=True)
class DeviceLine:
    """One device: what it runs, how it is, when it last spoke, and how its running version serves."""

    device_id: str
    model: str | None
    target: str | None
    version: int | None
    status: str
    stale: bool
    last_seen: str
    seen_ago_s: float
    calls: int
    fallback_rate: float | None
    error_rate: float | None
    last_refusal: str | None


@dataclass(frozen=True, kw_only=True)
class ReleaseLine:
    """One release of a model, the stage of its staged rollout if it is the newest one, and its devices."""

    version: int
    channel: str
    state: str
    percent: int
    stage: str | None
    devices: int


@dataclass(frozen=True, kw_only=True)
class ModelView:
    """A model's releases, newest first, and the devices per running version (``None``: none yet)."""

    name: str
    releases: tuple[ReleaseLine, ...]
    devices_per_version: tuple[tuple[int | None, int], ...]


@dataclass(frozen=True, kw_only=True)
class FleetView:
    """The whole page's data, taken at ``at``."""

    at: str
    devices: tuple[DeviceLine, ...]
    models: tuple[ModelView, ...]


def fleet_view(registry: Registry, rollouts: RolloutStore | None, *, now: dt.datetime | None = None) -> FleetView:
    """The fleet and its models' releases as they stand ``now`` (default: the current time)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    devices = tuple(_device_line(d, now) for d in registry.fleet(now=now))
    releases: dict[str, list[dict[str, Any]]] = {}
    for release in registry.releases():
        releases.setdefault(release["model"], []).append(release)
    running = Counter((d.model, d.version) for d in devices)
    names = sorted(releases.keys() | {d.model for d in devices if d.model})
    models = []
    for name in names:
        rollout = _newest_rollout(rollouts, name)
        lines = tuple(
            ReleaseLine(
                version=r["version"],
                channel=r["channel"],
                state=r["state"],
                percent=r["rollout"],
                stage=_stage(rollout) if rollout and rollout["version"] == r["version"] else None,
                devices=running[(name, r["version"])],
            )
            for r in releases.get(name, [])
        )
        per_version = sorted(((v, n) for (m, v), n in running.items() if m == name), key=_version_order)
        models.append(ModelView(name=name, releases=lines, devices_per_version=tuple(per_version)))
    return FleetView(at=now.isoformat(timespec="seconds"), devices=devices, models=tuple(models))


def _device_line(device: dict[str, Any], now: dt.datetime) -> DeviceLine:
    served = device["telemetry"] or {}
    return DeviceLine(
        device_id=device["device_id"],
        model=device["model"],
        target=device["target"],
        version=device["running_version"],
        status="stale" if device["stale"] else device["status"],
        stale=device["stale"],
        last_seen=device["last_seen"],
        seen_ago_s=max(0.0, (now - dt.datetime.fromisoformat(device["last_seen"])).total_seconds()),
        calls=served.get("calls", 0),
        fallback_rate=served.get("fallback_rate"),
        error_rate=served.get("error_rate"),
        last_refusal=device["last_refusal"],
    )


def _newest_rollout(rollouts: RolloutStore | None, model: str) -> dict[str, Any] | None:
    if rollouts is None:
        return None
    try:
        return rollouts.status(model)
    except NotFound:  # a model released without a staged rollout
        return None


def _stage(rollout: dict[str, Any]) -> str:
    """``stage 2/3 (50 %), running``."""
    stages = rollout["stages"]
    number = min(rollout["stage"], len(stages) - 1) + 1
    return f"stage {number}/{len(stages)} ({rollout['percent']} %), {rollout['state']}"


def _version_order(entry: tuple[int | None, int]) -> tuple[bool, int]:
    """Newest version first, devices on none last."""
    version = entry[0]
    return (version is None, -(version or 0))
