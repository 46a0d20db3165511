"""The registry on a real SQLite file, and on the PostgreSQL of this machine when it is reachable."""

from __future__ import annotations

import uuid

import pytest

from sdk.cloud.registry import Registry
from sdk.errors import Conflict, NotFound


def pg_url():
    try:
        import pg8000.native
    except ImportError:
        pytest.skip("no PostgreSQL driver (pg8000) installed")
    name = f"fedge_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = pg8000.native.Connection("postgres", host="127.0.0.1", database="postgres", timeout=3)
    except Exception as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1 not reachable: {exc}")
    admin.run(f"CREATE DATABASE {name}")
    return admin, name


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path, repo):
    notices = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        admin = name = None
    else:
        admin, name = pg_url()
        url = f"postgresql+pg8000://postgres@127.0.0.1/{name}"
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
