"""`fedge keys init`, `fedge cloud serve` with a registry, and `fedge registry` as separate processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys

import httpx
from waiting import poll

from sdk.mosquitto import free_port

ADMIN = "cli-admin-0123456789abcdef"


def fedge(*args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "sdk.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_key_ceremony_serve_upload_release(tmp_path, versions):
    online, root, repo = tmp_path / "online", tmp_path / "offline-root", tmp_path / "repository"
    out = fedge("keys", "init", "--online-dir", str(online), "--root-dir", str(root), "--repository", str(repo))
    assert "offline" in out.stdout
    assert sorted(p.name for p in root.iterdir()) == ["root-1.pem", "root-2.pem", "root-3.pem"]
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in online.glob("*.pem"))
    assert not list(online.glob("root*"))

    port = free_port()
    env = {"FEDGE_CLOUD__ADMIN_KEYS": ADMIN, "FEDGE_ADMIN_KEY": ADMIN}
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "sdk.cli", "cloud", "serve", "--port", str(port)]
    command += ["--registry-url", f"sqlite:///{tmp_path / 'registry.db'}", "--repository", str(repo)]
    command += ["--keys", str(online), "--store", str(tmp_path / "store")]
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=log,
        env={**os.environ, **env},
    )
    try:

        def healthy():
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                return False

        poll(healthy, "the server's /healthz", interval_s=0.2)
        assert fedge("registry", "upload", str(versions(1)), "--url", url, env=env).returncode == 0
        denied = fedge("registry", "upload", str(versions(2)), "--url", url, env={"FEDGE_ADMIN_KEY": ""}, check=False)
        assert denied.returncode == 2
        assert "401" in denied.stderr + denied.stdout
        fedge("registry", "release", "digits", "1", "--rollout", "50", "--url", url, env=env)
        listed = json.loads(fedge("registry", "versions", "digits", "--url", url, "--json", env=env).stdout)
        assert listed[0]["released"] is True
        changed = json.loads(
            fedge("registry", "set", "digits", "1", "--state", "paused", "--url", url, "--json", env=env).stdout
        )
        assert changed["state"] == "paused"
        assert httpx.get(f"{url}/tuf/metadata/1.root.json").json()["signed"]["_type"] == "root"
        assert 'data-release="1"' in httpx.get(f"{url}/dashboard").text  # no API keys: the dashboard is open too
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
    assert ADMIN not in (tmp_path / "serve.log").read_text()
    assert "fleet dashboard at /dashboard" in (tmp_path / "serve.log").read_text()


def test_root_rotation_from_the_command_line_is_followed_by_devices(tmp_path, versions):
    from sdk.cloud.app import create_app
    from sdk.cloud.repository import ReleaseRepository
    from sdk.cloud.server import BackgroundServer
    from sdk.cloud.signing import KeySet
    from sdk.edge.install import ModelStore
    from sdk.edge.updater import ModelUpdater, UpdateConfig

    online, root, repo_dir = tmp_path / "online", tmp_path / "root-1", tmp_path / "repository"
    fedge("keys", "init", "--online-dir", str(online), "--root-dir", str(root), "--repository", str(repo_dir))
    repo = ReleaseRepository(repo_dir, KeySet.online_only(online))
    root_v1 = repo.root_bytes(1)
    repo.release(versions(1))
    out = fedge(
        "keys",
        "rotate-root",
        "--repository",
        str(repo_dir),
        "--online-dir",
        str(online),
        "--old-root-dir",
        str(root),
        "--new-root-dir",
        str(tmp_path / "root-2"),
    )
    assert "root v2" in out.stdout
    assert repo.root_version() == 2
    repo.release(versions(2))
    with BackgroundServer(create_app({}, repository_dir=repo_dir)) as server:
        config = UpdateConfig(model="digits", device_id="pi-rot", repository_url=f"{server.url}/tuf")
        updater = ModelUpdater(ModelStore(tmp_path / "device"), config, root_v1)
        assert updater.check().outcome == "installed"
        assert updater.installed_version == 2


def test_registry_fleet_table_shows_state_staleness_and_the_refusal(tmp_path, repo):
    from sdk.cloud.app import create_app
    from sdk.cloud.config import CloudConfig
    from sdk.cloud.registry import Registry
    from sdk.cloud.server import BackgroundServer

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    registry.record_status({"device_id": "pi-quiet", "step": "healthy", "installed_version": 1}, at=long_ago)
    registry.record_status({"device_id": "pi-refused", "step": "rejected", "reason": "UpdateRejected: bad hash"})
    registry.record_status({"device_id": "pi-refused", "step": "up-to-date", "installed_version": 1})
    registry.record_status({"device_id": "pi-stopped", "state": "offline", "step": "stopped"})
    config = CloudConfig(api_keys=(ADMIN,))
    wide = {"FEDGE_API_KEY": ADMIN, "COLUMNS": "250"}  # one table row per line
    try:
        with BackgroundServer(create_app({}, config, registry=registry)) as server:
            table = fedge("registry", "fleet", "--url", server.url, env=wide).stdout
            patient = fedge("registry", "fleet", "--url", server.url, "--stale-after", "86400", env=wide).stdout
            as_json = json.loads(fedge("registry", "fleet", "--url", server.url, "--json", env=wide).stdout)
    finally:
        registry.close()
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("│ pi-")}
    assert " stale " in rows["pi-quiet"]
    assert "UpdateRejected: bad hash" in rows["pi-refused"]
    assert " online " in rows["pi-refused"]
    assert " offline " in rows["pi-stopped"]
    assert " stale " not in patient
    assert "+00:00" in rows["pi-refused"]  # last seen, timezone-aware
    assert {d["device_id"]: d["stale"] for d in as_json} == {"pi-quiet": True, "pi-refused": False, "pi-stopped": False}
