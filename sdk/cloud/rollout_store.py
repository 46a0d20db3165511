"""Staged rollouts in the registry's database: their stage and decisions, and the evidence their devices gave.

A staged release starts a rollout at the first stage of its model's policy
(:mod:`sdk.cloud.rollout_policy`). The rollout remembers the previous good release (its
baseline), so that the new version is compared with it on the same devices; the driver
(:mod:`sdk.cloud.rollouts`) records every decision here, with its reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from sdk.cloud.registry import REFUSALS, Base, DeviceRow, Registry, TelemetryRow, _utc
from sdk.cloud.rollout_controller import Decision, DeviceEvidence, Evidence, Served, measure
from sdk.cloud.rollout_policy import RolloutPolicies, RolloutPolicy
from sdk.errors import Conflict, NotFound

__all__ = ["MAX_HISTORY", "RolloutRecord", "RolloutRow", "RolloutStore"]

#: Decisions a rollout keeps (a hold is kept once per stage, not every tick).
MAX_HISTORY = 200


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RolloutRow(Base):
    """A staged release: where it stands, and what the controller decided and why."""

    __tablename__ = "rollouts"
    __table_args__ = (UniqueConstraint("model", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    baseline: Mapped[int | None] = mapped_column(Integer, default=None)  # the release it replaces
    stage: Mapped[int] = mapped_column(Integer, default=0)  # 0-based index into the policy's stages
    stage_started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    state: Mapped[str] = mapped_column(String(16), default="running")  # running, complete, aborted, superseded
    reason: Mapped[str] = mapped_column(String(1000), default="")
    last_decision: Mapped[dict] = mapped_column(JSON, default=dict)
    history: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True, kw_only=True)
class RolloutRecord:
    """A rollout as the driver reads it."""

    model: str
    version: int
    baseline: int | None
    stage: int
    stage_started_at: dt.datetime
    state: str


class RolloutStore:
    """Rollouts of ``registry``'s releases under ``policies``."""

    def __init__(self, registry: Registry, policies: RolloutPolicies | None = None) -> None:
        """Create the rollout table in the registry's database if it is not there."""
        self.registry = registry
        self.policies = policies or RolloutPolicies()
        Base.metadata.create_all(registry.engine, tables=[RolloutRow.__table__])  # type: ignore[list-item]
        self._session = sessionmaker(registry.engine, expire_on_commit=False)

    def policy(self, model: str) -> RolloutPolicy:
        """The policy ``model``'s rollouts follow."""
        return self.policies.for_model(model)

    def start(self, model: str, version: int, *, channel: str = "stable") -> dict[str, Any]:
        """Release ``version`` to the first stage of its policy and start its rollout; return the release.

        Raises:
            NotFound: no such version.
            Conflict: it was released already, or it lacks an artifact kind the policy's targets name.
        """
        policy = self.policy(model)
        held = next((v for v in self.registry.versions(model) if v["version"] == version), None)
        if held is None:
            raise NotFound(f"no version {version} of {model!r}")
        lacking = [kind for kind in policy.targets if kind not in held["artifacts"]]
        if lacking:
            raise Conflict(f"{model} v{version} has no {', '.join(lacking)} artifact, which the fleet runs")
        earlier = [r for r in self.registry.releases(model) if r["version"] < version and r["state"] != "aborted"]
        baseline = max((r["version"] for r in earlier), default=None)
        release = self.registry.release(model, version, channel=channel, rollout=policy.stages[0])
        now = _now()
        entry = _entry(now, "start", f"released to stage 1 ({policy.stages[0]} %)", 0, policy.stages[0])
        with self._session.begin() as session:
            # An older rollout still running stops here: its release keeps the devices it reached, and the
            # newer one, which the devices prefer, takes its place stage by stage.
            older = select(RolloutRow).where(
                RolloutRow.model == model, RolloutRow.state == "running", RolloutRow.version < version
            )
            for row in session.scalars(older).all():
                reason = f"superseded by v{version}"
                row.state, row.reason = "superseded", reason
                row.history = [*(row.history or []), _entry(now, "superseded", reason, row.stage, None)][-MAX_HISTORY:]
            session.add(
                RolloutRow(
                    model=model, version=version, baseline=baseline, stage=0, stage_started_at=now, history=[entry]
                )
            )
        return {**release, "staged": True, "stages": list(policy.stages), "baseline": baseline}

    def running(self) -> list[RolloutRecord]:
        """Every rollout still running, oldest first."""
        with self._session() as session:
            rows = session.scalars(select(RolloutRow).where(RolloutRow.state == "running").order_by(RolloutRow.id))
            return [_record(row) for row in rows.all()]

    def evidence(self, model: str, version: int, baseline: int | None) -> Evidence:
        """What the devices that run or served ``version`` served on it and on ``baseline``, and who refused it."""
        with self._session() as session:
            wanted = [version] if baseline is None else [version, baseline]
            query = select(TelemetryRow).where(TelemetryRow.model == model, TelemetryRow.version.in_(wanted))
            served: dict[int, dict[str, Served]] = {v: {} for v in wanted}
            for row in session.scalars(query).all():
                served[row.version][row.device_id] = Served(
                    calls=row.calls,
                    errors=row.errors,
                    rows=row.rows,
                    fallbacks=row.fallbacks,
                    confident_rows=row.confident_rows,
                    confidence_sum=row.confidence_sum,
                )
            on_new, failures = set(served[version]), []
            for device in session.scalars(select(DeviceRow).where(DeviceRow.model == model)).all():
                refusal = (device.detail or {}).get("last_refusal") or {}
                if device.running_version == version:
                    on_new.add(device.id)
                elif refusal.get("version") == version and refusal.get("step") in REFUSALS:
                    failures.append(device.id)
        previous = served.get(baseline, {}) if baseline is not None else {}
        devices = tuple(
            DeviceEvidence(device_id=d, new=served[version].get(d, Served()), previous=previous.get(d))
            for d in sorted(on_new)
        )
        return Evidence(devices=devices, install_failures=tuple(sorted(failures)))

    def record(self, model: str, version: int, decision: Decision, *, at: dt.datetime | None = None) -> None:
        """Keep ``decision`` as the rollout's last, move it to the decision's stage, and end it if it ended."""
        at = at or _now()
        with self._session.begin() as session:
            row = self._row(session, model, version)
            history = list(row.history or [])
            repeated = decision.action == "hold" and history and history[-1]["action"] == "hold"
            if not repeated:  # a hold is news once per stage; the last decision shows the current one
                history.append(_entry(at, decision.action, decision.reason, decision.stage, decision.percent))
            row.history = history[-MAX_HISTORY:]
            row.last_decision = {**decision.as_dict(), "at": at.isoformat()}
            row.reason = decision.reason[:1000]
            if decision.action == "advance":
                row.stage, row.stage_started_at = decision.stage, at
            elif decision.action in ("complete", "abort"):
                row.state = "complete" if decision.action == "complete" else "aborted"

    def end(self, model: str, version: int, reason: str, *, at: dt.datetime | None = None) -> None:
        """Mark a rollout aborted from outside the controller (an operator aborted its release)."""
        at = at or _now()
        with self._session.begin() as session:
            row = self._row(session, model, version)
            row.state, row.reason = "aborted", reason[:1000]
            row.history = [*(row.history or []), _entry(at, "abort", reason, row.stage, None)][-MAX_HISTORY:]

    def status(self, model: str, version: int | None = None) -> dict[str, Any]:
        """The newest rollout of ``model`` (or ``version``'s): release, stage, devices per version, checks, decisions.

        Raises:
            NotFound: ``model`` has no rollout (of ``version``).
        """
        with self._session() as session:
            query = select(RolloutRow).where(RolloutRow.model == model)
            if version is not None:
                query = query.where(RolloutRow.version == version)
            row = session.scalar(query.order_by(RolloutRow.id.desc()))
            if row is None:
                raise NotFound(f"{model!r} has no staged rollout")
            record = _record(row)
            devices: dict[str, int] = {}
            for device in session.scalars(select(DeviceRow).where(DeviceRow.model == model)).all():
                key = "none" if device.running_version is None else str(device.running_version)
                devices[key] = devices.get(key, 0) + 1
            out = {
                "model": model,
                "version": row.version,
                "baseline": row.baseline,
                "state": row.state,
                "reason": row.reason,
                "last_decision": row.last_decision or None,
                "history": list(row.history or []),
            }
        policy = self.policy(model)
        release = next((r for r in self.registry.releases(model) if r["version"] == record.version), None)
        stage = min(record.stage, len(policy.stages) - 1)
        checks = measure(policy, stage, self.evidence(model, record.version, record.baseline))
        return {
            **out,
            "stage": record.stage,
            "stages": list(policy.stages),
            "percent": release["rollout"] if release else None,
            "release": release,
            "stage_started_at": record.stage_started_at.isoformat(),
            "soak_s": policy.soak_for(stage),
            "min_devices": policy.min_devices_for(stage),
            "min_calls": policy.min_calls,
            "devices": dict(sorted(devices.items())),
            "checks": [{**vars(c), "breached": c.breached} for c in checks],
        }

    @staticmethod
    def _row(session: Any, model: str, version: int) -> RolloutRow:
        row = session.scalar(select(RolloutRow).where(RolloutRow.model == model, RolloutRow.version == version))
        if row is None:
            raise NotFound(f"{model} v{version} has no staged rollout")
        return row


def _record(row: RolloutRow) -> RolloutRecord:
    return RolloutRecord(
        model=row.model,
        version=row.version,
        baseline=row.baseline,
        stage=row.stage,
        stage_started_at=_utc(row.stage_started_at),
        state=row.state,
    )


def _entry(at: dt.datetime, action: str, reason: str, stage: int, percent: int | None) -> dict[str, Any]:
    return {"at": at.isoformat(), "action": action, "reason": reason[:1000], "stage": stage, "percent": percent}
