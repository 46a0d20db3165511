"""The model registry: models, versions with lineage, artifacts per target, releases, the fleet and its telemetry.

SQLAlchemy on a SQLite file by default (``sqlite:///registry.db``); a PostgreSQL URL
(``postgresql+pg8000://user@host/db``) works the same. Artifact files live on the
filesystem under ``store_dir/<model>/v<N>/``; the database holds what is known about them.
Releasing a version signs it into the TUF repository (:mod:`sdk.cloud.repository`) and
announces it with a retained MQTT notice. Device status reports (validated by
:mod:`sdk.cloud.status_report`) keep each device's last state and add its telemetry to one
row per device and version; a report claiming a version that has no release is a counted
rejection on the device's row, never its running version or telemetry.
Aborting a release recalls it (:meth:`Registry.recall`): the signed metadata names the version
its devices go back to, and the registry keeps that version and the reason with the release.
Schema changes are additive: a column a newer registry declares is added to an older database.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from sdk.cloud.repository import MAX_REASON_CHARS, ReleaseRepository, ReleaseState
from sdk.cloud.status_report import VersionStats, validate_status
from sdk.errors import Conflict, NotFound
from sdk.manifest import load_manifest, verify_files
from sdk.telemetry import LATENCY_BOUNDS_MS, percentile

__all__ = ["REFUSALS", "STALE_AFTER_S", "Registry"]


#: A device that is not offline and has said nothing for this long is shown as stale (3 default check intervals).
STALE_AFTER_S = 3 * 900.0

#: Status steps that refuse a release; their ``reason`` stays in the fleet view until the next refusal.
REFUSALS = ("rejected", "rolled-back", "rollback-impossible")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC with its offset; SQLite hands back naive datetimes, which we stored in UTC."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the registry tables."""


class ModelRow(Base):
    """A model name (``digits``)."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    versions: Mapped[list[VersionRow]] = relationship(back_populates="model")


class VersionRow(Base):
    """One version of a model, with its lineage and metrics from the manifest."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    number: Mapped[int] = mapped_column(Integer)
    lineage: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    directory: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    model: Mapped[ModelRow] = relationship(back_populates="versions")
    artifacts: Mapped[list[ArtifactRow]] = relationship(back_populates="version", cascade="all, delete-orphan")
    releases: Mapped[list[ReleaseRow]] = relationship(back_populates="version")


class ArtifactRow(Base):
    """One artifact of a version, per target (``onnx-fp32``, ``onnx-int8``, ``tflite``)."""

    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    target: Mapped[str] = mapped_column(String(32))
    file: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(default=None)
    version: Mapped[VersionRow] = relationship(back_populates="artifacts")


class ReleaseRow(Base):
    """A version offered to a channel, to a percentage of the fleet."""

    __tablename__ = "releases"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    rollout: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="active")
    reason: Mapped[str | None] = mapped_column(String(MAX_REASON_CHARS), default=None)  # why it was aborted
    recall_to: Mapped[int | None] = mapped_column(Integer, default=None)  # where its devices go back to
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    version: Mapped[VersionRow] = relationship(back_populates="releases")


class DeviceRow(Base):
    """What a device last reported."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    target: Mapped[str | None] = mapped_column(String(32), default=None)
    running_version: Mapped[int | None] = mapped_column(Integer, default=None)
    status: Mapped[str] = mapped_column(String(32), default="unknown")
    last_step: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TelemetryRow(Base):
    """What one device served on one version, summed over every telemetry window it reported."""

    __tablename__ = "device_telemetry"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    windows: Mapped[int] = mapped_column(BigInteger, default=0)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    fallbacks: Mapped[int] = mapped_column(BigInteger, default=0)
    confident_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    confidence_sum: Mapped[float] = mapped_column(Float, default=0.0)
    latency: Mapped[list] = mapped_column(JSON, default=list)  # counts per bucket of sdk.telemetry
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


Notifier = Callable[[str, int], None]


class Registry:
    """Versions, releases and the fleet, backed by a database and a signed release repository."""

    def __init__(
        self,
        url: str,
        store_dir: str | os.PathLike[str],
        repository: ReleaseRepository,
        *,
        notify: Notifier | None = None,
    ) -> None:
        """Open (and create) the tables at ``url``; ``notify(model, version)`` announces a release."""
        self.engine = create_engine(url)
        Base.metadata.create_all(self.engine)
        _add_new_columns(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.store_dir = Path(store_dir)
        self.repository = repository
        self.notify: Notifier = notify or (lambda model, version: None)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def _model(self, session: Session, name: str, *, create: bool = False) -> ModelRow:
        row = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            if not create:
                raise NotFound(f"no model named {name!r}")
            row = ModelRow(name=name)
            session.add(row)
            session.flush()
        return row

    def _version(self, session: Session, model: str, number: int) -> VersionRow:
        row = session.scalar(
            select(VersionRow).join(ModelRow).where(ModelRow.name == model, VersionRow.number == number)
        )
        if row is None:
            raise NotFound(f"no version {number} of {model!r}")
        return row

    def add_version(self, model_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Verify a model directory and keep it as a new version; return it.

        Raises:
            ModelError: the directory fails verification.
            Conflict: that version of that model exists.
        """
        source = Path(model_dir)
        manifest = load_manifest(source)
        verify_files(source, [*manifest.artifacts.values(), *([manifest.probe] if manifest.probe else [])])
        target = self.store_dir / manifest.name / f"v{manifest.version}"
        with self._session.begin() as session:
            model = self._model(session, manifest.name, create=True)
            if session.scalar(
                select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.number == manifest.version)
            ):
                raise Conflict(f"{manifest.name} v{manifest.version} is already registered")
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".incoming-"))
            try:
                for name in ["manifest.json", *(a.file for a in manifest.artifacts.values())]:
                    shutil.copyfile(source / name, staging / name)
                if manifest.probe:
                    shutil.copyfile(source / manifest.probe.file, staging / manifest.probe.file)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            row = VersionRow(
                model=model,
                number=manifest.version,
                lineage=dict(manifest.lineage),
                metrics=dict(manifest.lineage.get("metrics", {})),
                directory=str(target),
                artifacts=[
                    ArtifactRow(target=a.kind, file=a.file, sha256=a.sha256, size=a.size, accuracy=a.accuracy)
                    for a in manifest.artifacts.values()
                ],
            )
            session.add(row)
            session.flush()
            return _version_dict(row)

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every version of ``model``, oldest first."""
        with self._session() as session:
            rows = session.scalars(
                select(VersionRow).join(ModelRow).where(ModelRow.name == model).order_by(VersionRow.number)
            ).all()
            if not rows:
                self._model(session, model)  # NotFound for an unknown model
            return [_version_dict(r) for r in rows]

    def release(self, model: str, version: int, *, channel: str = "stable", rollout: int = 100) -> dict[str, Any]:
        """Sign ``version`` into the release repository, record the release, and announce it."""
        with self._session.begin() as session:
            row = self._version(session, model, version)
            if row.releases:
                raise Conflict(f"{model} v{version} was released already")
            self.repository.release(row.directory, channel=channel, rollout=rollout)
            release = ReleaseRow(version=row, channel=channel, rollout=rollout, state="active")
            session.add(release)
            session.flush()
            out = _release_dict(release)
        self.notify(model, version)
        return out

    def update_release(
        self,
        model: str,
        version: int,
        *,
        state: ReleaseState | None = None,
        rollout: int | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Pause, resume, abort or widen a release, in the signed metadata and here; an abort recalls (``reason``).

        A reason longer than ``MAX_REASON_CHARS`` is cut there: an abort never fails for its wording.

        Raises:
            NotFound: no such version, or it has no release.
            Conflict: the release was aborted already.
            ValueError: a rollout outside 0..100, or a reason without an abort.
        """
        reason = reason[:MAX_REASON_CHARS] if reason is not None else None
        with self._session.begin() as session:
            row = self._version(session, model, version)
            if not row.releases:
                raise NotFound(f"{model} v{version} has no release")
            release = row.releases[0]
            if release.state == "aborted":
                raise Conflict(f"the release of {model} v{version} was aborted")
            signed = self.repository.update_release(model, version, state=state, rollout=rollout, reason=reason)
            if state is not None:
                release.state = state
            if rollout is not None:
                release.rollout = rollout
            if "recall" in signed:
                self._copy_recalls(session, model)
            session.flush()
            out = _release_dict(release)
        self.notify(model, version)
        return out

    def _copy_recalls(self, session: Session, model: str) -> None:
        """Keep each recall of ``model`` as the signed metadata says (an abort also moves the recalls leading to it)."""
        signed = {
            r["version"]: r["recall"] for r in self.repository.releases() if r["model"] == model and "recall" in r
        }
        query = select(ReleaseRow).join(VersionRow).join(ModelRow).where(ModelRow.name == model)
        for row in session.scalars(query).all():
            if (recall := signed.get(row.version.number)) is not None:
                row.recall_to, row.reason = recall["to"], recall["reason"]

    def recall(self, model: str, version: int, *, reason: str) -> dict[str, Any]:
        """Abort a release: its devices go back to the newest earlier release of its channel not aborted.

        Raises:
            NotFound: no such version, or it has no release.
            Conflict: the release was aborted already.
        """
        return self.update_release(model, version, state="aborted", reason=reason)

    def releases(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every release (of ``model``), newest first."""
        with self._session() as session:
            query = select(ReleaseRow).join(VersionRow).join(ModelRow).order_by(ReleaseRow.id.desc())
            if model is not None:
                query = query.where(ModelRow.name == model)
            return [_release_dict(r) for r in session.scalars(query).all()]

    def record_status(
        self, event: dict[str, Any], *, device_id: str | None = None, at: dt.datetime | None = None
    ) -> str | None:
        """Store a status report of ``device_id`` (default: the event's), received ``at`` (default now).

        The release service passes the id from the topic, and an event naming another device
        is refused. The reason of the last refusal (a rejected or rolled-back release) is kept
        until the next one. A telemetry window already stored (a status sent again on
        reconnect, or an older one delivered again late) is not added twice. A version that
        has no release of the device's model is neither its running version nor a telemetry
        row: the report's other fields are kept, the rejection is counted on the device, and
        its reason is returned (None: all was kept).

        Raises:
            StatusRejected: the event is malformed, out of bounds, or names another device.
        """
        device_id = device_id or str(event.get("device_id", ""))
        if not device_id:
            return None
        report = validate_status(event, device_id)
        received = _utc(at) if at is not None else _now()
        with self._session.begin() as session:
            row = session.get(DeviceRow, device_id) or DeviceRow(id=device_id, detail={})
            previous = dict(row.detail or {})
            row.model = report.model or row.model
            row.target = report.target or row.target
            rejected = []
            claimed = report.running_version
            if claimed is not None:
                if self._released(session, row.model, claimed):
                    row.running_version = claimed
                else:
                    rejected.append(f"{row.model} v{claimed} has no release")
            window = report.telemetry
            fresh = window is not None and _later_window(window.window, previous.get("telemetry_window"))
            if window is not None and fresh:
                for stats in window.versions:
                    if self._released(session, row.model, stats.version):
                        self._add_telemetry(session, device_id, row.model or "", stats, received)
                    else:
                        rejected.append(f"telemetry of {row.model} v{stats.version}, which has no release")
            row.status = report.state
            row.last_step = report.step or row.last_step
            refusal = previous.get("last_refusal")
            if report.step in REFUSALS:
                refusal = {"step": report.step, "reason": (report.reason or "")[:500], "at": received.isoformat()}
                refusal["version"] = report.target_version  # the refused one: a rollout counts it as an install failure
            detail: dict[str, Any] = {"reason": report.reason, "target_version": report.target_version}
            detail = {k: v for k, v in detail.items() if v is not None}
            if refusal:
                detail["last_refusal"] = refusal
            for key in ("telemetry_window", "rejected_reports", "last_rejection"):
                if key in previous:
                    detail[key] = previous[key]
            if window is not None and fresh:
                detail["telemetry_window"] = window.window
            if rejected:
                reason = "; ".join(rejected)[:500]
                detail["rejected_reports"] = int(previous.get("rejected_reports", 0)) + 1
                detail["last_rejection"] = {"reason": reason, "at": received.isoformat()}
            row.detail = detail
            row.last_seen = received
            session.merge(row)
        return "; ".join(rejected) if rejected else None

    def _released(self, session: Session, model: str | None, version: int) -> bool:
        """Whether ``version`` of ``model`` was ever released (an aborted release counts: devices may run it)."""
        if model is None:
            return False
        query = (
            select(ReleaseRow.id)
            .join(VersionRow)
            .join(ModelRow)
            .where(ModelRow.name == model, VersionRow.number == version)
        )
        return session.scalar(query) is not None

    @staticmethod
    def _add_telemetry(
        session: Session, device_id: str, model: str, stats: VersionStats, received: dt.datetime
    ) -> None:
        row = session.get(TelemetryRow, (device_id, model, stats.version))
        if row is None:
            row = TelemetryRow(device_id=device_id, model=model, version=stats.version, first_seen=received, latency=[])
            session.add(row)
        row.windows = (row.windows or 0) + 1
        row.calls = (row.calls or 0) + stats.calls
        row.errors = (row.errors or 0) + stats.errors
        row.rows = (row.rows or 0) + stats.rows
        row.fallbacks = (row.fallbacks or 0) + stats.fallbacks
        row.confident_rows = (row.confident_rows or 0) + stats.confident_rows
        row.confidence_sum = (row.confidence_sum or 0.0) + (stats.mean_confidence or 0.0) * stats.confident_rows
        row.latency = _add_buckets(row.latency or [], stats.buckets())  # a new list: JSON columns track assignment
        row.last_seen = received

    def telemetry(self, model: str | None = None, *, per_device: bool = False) -> list[dict[str, Any]]:
        """What the fleet served, per model and version (``per_device``: per device and version), by version.

        Each entry: devices, calls, errors and error rate, rows, fallbacks and fallback rate, mean
        confidence of the local model, p50 and p99 latency in ms (from the summed buckets), last seen.
        """
        with self._session() as session:
            query = select(TelemetryRow).order_by(TelemetryRow.model, TelemetryRow.version, TelemetryRow.device_id)
            if model is not None:
                query = query.where(TelemetryRow.model == model)
            groups: dict[tuple[Any, ...], list[TelemetryRow]] = {}
            for row in session.scalars(query).all():
                key = (row.model, row.version, row.device_id) if per_device else (row.model, row.version)
                groups.setdefault(key, []).append(row)
            return [_telemetry_dict(key, rows) for key, rows in groups.items()]

    def fleet(self, *, stale_after_s: float = STALE_AFTER_S, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Every device's last report; ``stale`` when one that is not offline has said nothing for ``stale_after_s``."""
        now = _utc(now) if now is not None else _now()
        with self._session() as session:
            served = {(t.device_id, t.model, t.version): t for t in session.scalars(select(TelemetryRow)).all()}
            out = []
            for d in session.scalars(select(DeviceRow).order_by(DeviceRow.id)).all():
                seen = _utc(d.last_seen)
                refusal = (d.detail or {}).get("last_refusal") or {}
                current = served.get((d.id, d.model, d.running_version))
                out.append(
                    {
                        "device_id": d.id,
                        "model": d.model,
                        "target": d.target,
                        "running_version": d.running_version,
                        "status": d.status,
                        "stale": d.status != "offline" and (now - seen).total_seconds() > stale_after_s,
                        "last_step": d.last_step,
                        "last_refusal": refusal.get("reason"),
                        "rejected_reports": (d.detail or {}).get("rejected_reports", 0),
                        "telemetry": _telemetry_dict((d.model, d.running_version), [current]) if current else None,
                        "detail": d.detail,
                        "last_seen": seen.isoformat(),
                    }
                )
            return out


def _later_window(window: str, stored: str | None) -> bool:
    """Whether ``window`` (``<boot>-<seq>``) comes after the one ``stored``; a redelivered older one does not."""
    if stored is None:
        return True
    boot, _, seq = window.rpartition("-")
    stored_boot, _, stored_seq = stored.rpartition("-")
    if boot != stored_boot or not (seq.isdigit() and stored_seq.isdigit()):
        return window != stored  # another run of the device: its windows count afresh
    return int(seq) > int(stored_seq)


def _add_buckets(a: list[int], b: list[int]) -> list[int]:
    size = len(LATENCY_BOUNDS_MS) + 1
    a, b = [*a, *[0] * (size - len(a))], [*b, *[0] * (size - len(b))]
    return [x + y for x, y in zip(a, b, strict=True)]


def _telemetry_dict(key: tuple[Any, ...], rows: list[TelemetryRow]) -> dict[str, Any]:
    calls, errors = sum(r.calls for r in rows), sum(r.errors for r in rows)
    n, fallbacks = sum(r.rows for r in rows), sum(r.fallbacks for r in rows)
    confident = sum(r.confident_rows for r in rows)
    latency: list[int] = []
    for r in rows:
        latency = _add_buckets(latency, r.latency or [])
    out: dict[str, Any] = {"model": key[0], "version": key[1]}
    if len(key) > 2:
        out["device_id"] = key[2]
    return {
        **out,
        "devices": len({r.device_id for r in rows}),
        "calls": calls,
        "errors": errors,
        "error_rate": errors / calls if calls else 0.0,
        "rows": n,
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks / n if n else 0.0,
        "mean_confidence": sum(r.confidence_sum for r in rows) / confident if confident else None,
        "p50_ms": _ms(percentile(latency, 0.5)),
        "p99_ms": _ms(percentile(latency, 0.99)),
        "last_seen": max(_utc(r.last_seen) for r in rows).isoformat(),
    }


def _version_dict(row: VersionRow) -> dict[str, Any]:
    return {
        "model": row.model.name,
        "version": row.number,
        "lineage": row.lineage,
        "metrics": row.metrics,
        "artifacts": {a.target: {"file": a.file, "sha256": a.sha256, "size": a.size} for a in row.artifacts},
        "released": bool(row.releases),
    }


def _release_dict(row: ReleaseRow) -> dict[str, Any]:
    out = {
        "model": row.version.model.name,
        "version": row.version.number,
        "channel": row.channel,
        "rollout": row.rollout,
        "state": row.state,
    }
    if row.state == "aborted":
        out["recall"] = {"to": row.recall_to, "reason": row.reason or ""}
    return out


def _add_new_columns(engine: Engine) -> None:
    """Add the columns this registry declares that an older database's tables lack (nullable, so additive)."""
    tables = set(inspect(engine).get_table_names())
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if table.name not in tables:
                continue
            present = {c["name"] for c in inspect(connection).get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
