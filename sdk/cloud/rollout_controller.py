"""The rollout decision, without I/O: hold, advance, complete or abort a staged release on its devices' evidence.

Rules, in order:

1. A device is *judged* once it has served ``min_calls`` calls on the new version; a device
   *tried* the new version if it runs it, served it, or refused it (rejected, rolled back).
2. Each threshold is measured on the judged devices (install failures on the tried ones);
   the fallback-rate increase and the confidence drop compare the new version with the
   previous one on the same devices, those that reported both.
3. Once the stage has ``min_devices`` judged (tried, for install failures), a measure above
   its threshold aborts at once, soaked or not; the reason names the threshold and the value.
4. Otherwise the stage holds until it has soaked ``soak_s`` and has ``min_devices`` judged;
   then it advances to the next stage's percent, or completes after the last.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sdk.cloud.rollout_policy import RolloutPolicy

__all__ = ["Action", "Check", "Decision", "DeviceEvidence", "Evidence", "Served", "decide", "judged_devices", "measure"]

Action = Literal["hold", "advance", "complete", "abort"]


@dataclass(frozen=True, kw_only=True)
class Served:
    """What devices served on one version: the registry's telemetry counts."""

    calls: int = 0
    errors: int = 0
    rows: int = 0
    fallbacks: int = 0
    confident_rows: int = 0
    confidence_sum: float = 0.0

    def __add__(self, other: Served) -> Served:
        return Served(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    @property
    def error_rate(self) -> float | None:
        """Failed calls per call (None: no calls)."""
        return self.errors / self.calls if self.calls else None

    @property
    def fallback_rate(self) -> float | None:
        """Rows answered by the cloud per row (None: no rows)."""
        return self.fallbacks / self.rows if self.rows else None

    @property
    def mean_confidence(self) -> float | None:
        """The local model's mean top-class confidence (None: no confident rows)."""
        return self.confidence_sum / self.confident_rows if self.confident_rows else None


@dataclass(frozen=True, kw_only=True)
class DeviceEvidence:
    """One device's telemetry on the new version and, if it reported it, on the previous one."""

    device_id: str
    new: Served
    previous: Served | None = None


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """The devices of a rollout: those that run or served the new version, and those that refused it."""

    devices: tuple[DeviceEvidence, ...] = ()
    install_failures: tuple[str, ...] = ()  # device ids


@dataclass(frozen=True, kw_only=True)
class Check:
    """One threshold against its measure; ``measured`` is None when no device tells it yet."""

    threshold: str
    limit: float
    measured: float | None
    devices: int
    enforced: bool  # enough devices for the measure to decide

    @property
    def breached(self) -> bool:
        """Whether this measure aborts the rollout."""
        return self.enforced and self.measured is not None and self.measured > self.limit


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What to do with a rollout, why, and the stage and percent it is at afterwards."""

    action: Action
    reason: str
    stage: int
    percent: int
    checks: tuple[Check, ...] = ()
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (checks with their ``breached`` flag)."""
        out = asdict(self)
        out["checks"] = [{**asdict(c), "breached": c.breached} for c in self.checks]
        out["missing"] = list(self.missing)
        return out


def decide(
    policy: RolloutPolicy, stage: int, stage_started: dt.datetime, now: dt.datetime, evidence: Evidence
) -> Decision:
    """The decision for a rollout at ``stage`` (0-based) that started it at ``stage_started``."""
    if not 0 <= stage < len(policy.stages):
        raise ValueError(f"stage {stage} is not one of the policy's {len(policy.stages)} stages")
    percent = policy.stages[stage]
    checks = measure(policy, stage, evidence)
    breached = [c for c in checks if c.breached]
    if breached:
        reason = "; ".join(
            f"{c.threshold}: {c.measured:.4g} > {c.limit:.4g} on {c.devices} device(s)" for c in breached
        )
        return Decision(action="abort", reason=reason, stage=stage, percent=percent, checks=checks)
    missing = []
    soaked, soak = (now - stage_started).total_seconds(), policy.soak_for(stage)
    if soaked < soak:
        missing.append(f"soak: {max(soaked, 0.0):.1f} s of {soak:g} s")
    judged, needed = judged_devices(policy, evidence), policy.min_devices_for(stage)
    if len(judged) < needed:
        missing.append(f"devices: {len(judged)} of {needed} with >= {policy.min_calls} calls on the new version")
    if missing:
        reason = f"stage {stage + 1} ({percent} %) holds: " + "; ".join(missing)
        missed = tuple(missing)
        return Decision(action="hold", reason=reason, stage=stage, percent=percent, checks=checks, missing=missed)
    healthy = f"{len(judged)} device(s) soaked {soaked:.1f} s within every threshold"
    if stage + 1 == len(policy.stages):
        reason = f"complete at {percent} %: {healthy}"
        return Decision(action="complete", reason=reason, stage=stage, percent=percent, checks=checks)
    following = policy.stages[stage + 1]
    reason = f"stage {stage + 1} ({percent} %) healthy: {healthy}; widening to {following} %"
    return Decision(action="advance", reason=reason, stage=stage + 1, percent=following, checks=checks)


def judged_devices(policy: RolloutPolicy, evidence: Evidence) -> list[DeviceEvidence]:
    """The devices with enough calls on the new version to be judged."""
    return [d for d in evidence.devices if d.new.calls >= policy.min_calls]


def measure(policy: RolloutPolicy, stage: int, evidence: Evidence) -> tuple[Check, ...]:
    """Every threshold of ``policy`` against ``evidence``, at ``stage``'s device minimum."""
    needed = policy.min_devices_for(stage)
    judged = judged_devices(policy, evidence)
    failed = set(evidence.install_failures)
    tried = failed | {d.device_id for d in evidence.devices}
    new = sum((d.new for d in judged), Served())
    compared = [d for d in judged if d.previous is not None]
    by_rows = [d for d in compared if d.new.rows and d.previous.rows]  # type: ignore[union-attr]
    by_confidence = [d for d in compared if d.new.confident_rows and d.previous.confident_rows]  # type: ignore[union-attr]
    enough = len(judged) >= needed
    return (
        Check(
            threshold="max_install_failure_rate",
            limit=policy.max_install_failure_rate,
            measured=len(failed) / len(tried) if tried else None,
            devices=len(tried),
            enforced=len(tried) >= needed,
        ),
        Check(
            threshold="max_error_rate",
            limit=policy.max_error_rate,
            measured=new.error_rate,
            devices=len(judged),
            enforced=enough,
        ),
        Check(
            threshold="max_fallback_rate_increase",
            limit=policy.max_fallback_rate_increase,
            measured=_difference(by_rows, "fallback_rate"),
            devices=len(by_rows),
            enforced=enough,
        ),
        Check(
            threshold="max_confidence_drop",
            limit=policy.max_confidence_drop,
            measured=_difference(by_confidence, "mean_confidence", drop=True),
            devices=len(by_confidence),
            enforced=enough,
        ),
    )


def _difference(devices: list[DeviceEvidence], measure: str, *, drop: bool = False) -> float | None:
    """The new version's ``measure`` minus the previous one's (``drop``: the other way), pooled over ``devices``."""
    if not devices:
        return None
    new = getattr(sum((d.new for d in devices), Served()), measure)
    previous = getattr(sum((d.previous for d in devices if d.previous is not None), Served()), measure)
    return previous - new if drop else new - previous
