"""The model registry: models, versions with lineage, artifacts per target, releases, and the fleet.

SQLAlchemy on a SQLite file by default (``sqlite:///registry.db``); a PostgreSQL URL
(``postgresql+pg8000://user@host/db``) works the same. Artifact files live on the
filesystem under ``store_dir/<model>/v<N>/``; the database holds what is known about them.
Releasing a version signs it into the TUF repository (:mod:`sdk.cloud.repository`) and
announces it with a retained MQTT notice.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from sdk.cloud.repository import ReleaseRepository, ReleaseState
from sdk.errors import Conflict, NotFound
from sdk.manifest import load_manifest, verify_files

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
        self, model: str, version: int, *, state: ReleaseState | None = None, rollout: int | None = None
    ) -> dict[str, Any]:
        """Pause, resume, abort or widen a release, in the signed metadata and here."""
        with self._session.begin() as session:
            row = self._version(session, model, version)
            if not row.releases:
                raise NotFound(f"{model} v{version} has no release")
            release = row.releases[0]
            if release.state == "aborted":
                raise Conflict(f"the release of {model} v{version} was aborted")
            self.repository.update_release(model, version, state=state, rollout=rollout)
            if state is not None:
                release.state = state
            if rollout is not None:
                release.rollout = rollout
            session.flush()
            out = _release_dict(release)
        self.notify(model, version)
        return out

    def releases(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every release (of ``model``), newest first."""
        with self._session() as session:
            query = select(ReleaseRow).join(VersionRow).join(ModelRow).order_by(ReleaseRow.id.desc())
            if model is not None:
                query = query.where(ModelRow.name == model)
            return [_release_dict(r) for r in session.scalars(query).all()]

    def record_status(self, event: dict[str, Any], *, at: dt.datetime | None = None) -> None:
        """Store a device's status report (from ``fedge/v1/devices/<id>/status``), received ``at`` (default now).

        The reason of the last refusal (a rejected or rolled-back release) is kept until the next one.
        """
        device_id = str(event.get("device_id", ""))[:64]
        if not device_id:
            return
        received = _utc(at) if at is not None else _now()
        with self._session.begin() as session:
            row = session.get(DeviceRow, device_id) or DeviceRow(id=device_id)
            row.model = event.get("model", row.model)
            row.target = event.get("target", row.target)
            version = event.get("installed_version", event.get("version"))
            row.running_version = int(version) if isinstance(version, int) else row.running_version
            row.status = str(event.get("state", "online"))[:32]
            row.last_step = str(event.get("step", ""))[:64] or row.last_step
            refusal = (row.detail or {}).get("last_refusal")
            if event.get("step") in REFUSALS:
                reason = str(event.get("reason", ""))[:500]
                refusal = {"step": event["step"], "reason": reason, "at": received.isoformat()}
            detail = {k: v for k, v in event.items() if k in ("reason", "target_version")}
            row.detail = {**detail, **({"last_refusal": refusal} if refusal else {})}
            row.last_seen = received
            session.merge(row)

    def fleet(self, *, stale_after_s: float = STALE_AFTER_S, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Every device's last report; ``stale`` when one that is not offline has said nothing for ``stale_after_s``."""
        now = _utc(now) if now is not None else _now()
        with self._session() as session:
            out = []
            for d in session.scalars(select(DeviceRow).order_by(DeviceRow.id)).all():
                seen = _utc(d.last_seen)
                refusal = (d.detail or {}).get("last_refusal") or {}
                out.append(
                    {
                        "device_id": d.id,
                        "model": d.model,
                        "running_version": d.running_version,
                        "status": d.status,
                        "stale": d.status != "offline" and (now - seen).total_seconds() > stale_after_s,
                        "last_step": d.last_step,
                        "last_refusal": refusal.get("reason"),
                        "detail": d.detail,
                        "last_seen": seen.isoformat(),
                    }
                )
            return out


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
    return {
        "model": row.version.model.name,
        "version": row.version.number,
        "channel": row.channel,
        "rollout": row.rollout,
        "state": row.state,
    }
