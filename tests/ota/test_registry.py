"""The registry on a real SQLite file, and on the PostgreSQL of this machine when it is reachable."""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

import pg8000.native
import pytest
from sqlalchemy.engine import make_url

from sdk.cloud.registry import Registry
from sdk.errors import Conflict, NotFound

#: Where the PostgreSQL tests connect; the user must be allowed to create databases.
POSTGRES_URL = os.environ.get("FEDGE_TEST_POSTGRES_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")


def pg_url():
    """A fresh database on the test server: skipped only when no server listens there, failed on any other error."""
    url = make_url(POSTGRES_URL)
    host, port = url.host or "127.0.0.1", url.port or 5432
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        pytest.skip(
            f"no PostgreSQL server at {host}:{port} ({exc}): install one (apt-get install postgresql) "
            "or point FEDGE_TEST_POSTGRES_URL at one whose user may create databases"
        )
    name = f"fedge_test_{uuid.uuid4().hex[:8]}"
    # A server that listens but refuses us (password, user, database) is a configuration error: it fails.
    admin = pg8000.native.Connection(
        url.username or "postgres", host=host, port=port, password=url.password, database=url.database, timeout=10
    )
    admin.run(f"CREATE DATABASE {name}")
    return admin, name, url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path, repo):
    notices = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        admin = name = None
    else:
        admin, name, url = pg_url()
    reg = Registry(url, tmp_path / "store", repo, notify=lambda m, v: notices.append((m, v)))
    reg.notices = notices
    yield reg
    reg.close()
    if admin is not None:
        admin.run(f"DROP DATABASE {name}")
        admin.close()


def test_versions_releases_and_fleet(registry, versions, device):
    v1 = registry.add_version(versions(1))
    assert v1["version"] == 1
    assert set(v1["artifacts"]) == {"onnx-fp32", "onnx-int8", "tflite"}
    with pytest.raises(Conflict):
        registry.add_version(versions(1))
    registry.add_version(versions(2))
    assert [v["version"] for v in registry.versions("digits")] == [1, 2]
    with pytest.raises(NotFound):
        registry.versions("nope")

    release = registry.release("digits", 1, channel="stable", rollout=100)
    assert release == {"model": "digits", "version": 1, "channel": "stable", "rollout": 100, "state": "active"}
    assert registry.notices == [("digits", 1)]
    updater = device(
        "pi-r1",
    )
    updater.reporter = registry.record_status
    assert updater.check().outcome == "installed"
    (entry,) = registry.fleet()
    assert entry["device_id"] == "pi-r1"
    assert entry["running_version"] == 1
    assert entry["last_step"] == "installed"

    registry.release("digits", 2, channel="stable", rollout=0)
    assert updater.check().outcome == "up-to-date"
    registry.update_release("digits", 2, rollout=100)
    registry.update_release("digits", 2, state="paused")
    assert updater.check().outcome == "up-to-date"
    registry.update_release("digits", 2, state="active")
    assert updater.check().outcome == "installed"
    assert registry.fleet()[0]["running_version"] == 2
    registry.update_release("digits", 2, state="aborted")
    with pytest.raises(Conflict):
        registry.update_release("digits", 2, state="active")
    assert [r["state"] for r in registry.releases("digits")] == ["aborted", "active"]


def test_fleet_shows_the_last_refusal_offline_and_stale_devices(registry, device, repo, versions):
    repo.release(versions(1))
    updater = device("pi-r2")
    updater.reporter = registry.record_status
    assert updater.check().outcome == "installed"
    repo.release(versions(2), patches=False)  # no patch: the attack is on the full artifact
    (stored,) = (repo.targets_dir / "digits" / "2").glob("*.model-int8.onnx")
    stored.write_bytes(stored.read_bytes()[:-10])  # a truncated artifact: a real refusal
    assert updater.check().outcome == "rejected"
    registry.record_status({"device_id": "pi-r2", "state": "offline", "step": "stopped"})  # a clean stop
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    registry.record_status({"device_id": "pi-quiet", "step": "healthy", "installed_version": 1}, at=long_ago)

    fleet = {d["device_id"]: d for d in registry.fleet()}
    stopped, quiet = fleet["pi-r2"], fleet["pi-quiet"]
    assert stopped["status"] == "offline"
    assert "UpdateRejected" in stopped["last_refusal"]  # kept after later reports
    assert stopped["stale"] is False  # offline is what it said, not silence
    assert quiet["status"] == "online"
    assert quiet["stale"] is True  # silent for more than 3 check intervals
    assert quiet["last_refusal"] is None
    assert not any(d["stale"] for d in registry.fleet(stale_after_s=3 * 3600))
    for entry in (stopped, quiet):
        assert dt.datetime.fromisoformat(entry["last_seen"]).utcoffset() == dt.timedelta(0)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    registry.record_status({"device_id": "pi-r2", "step": "checking"})
    assert all(d["stale"] for d in registry.fleet(now=later))  # pi-r2 is online again, then silent
