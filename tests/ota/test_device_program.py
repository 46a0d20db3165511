"""`fedge edge run`, the device program, as a fleet runs it: a real broker, a real signed repository, real processes.

It serves from its first second whatever the broker and the repository do, connects and checks
in the background, and a clean stop leaves its retained status, and the fleet view, offline.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess

import pytest
from device_program import edge_run_command
from peers import publish, subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.mosquitto import free_port
from sdk.mqtt import MqttSettings
from sdk.notices import notice_payload

SECRET = "mqtt-password-never-logged"


@pytest.fixture
def edge_run(tmp_path, repo, digits_split):
    """``edge_run(device_id=..., broker=..., repository_url=...)``: a device provisioned with root v1 and 3 samples."""
    samples = digits_split.x_test[:3]
    return functools.partial(
        edge_run_command, tmp_path, root=repo.root_bytes(1), samples=samples, state_dir=tmp_path / "state"
    )


@pytest.mark.device_subprocess
@pytest.mark.parametrize("installed", [pytest.param(True, id="installed-model"), pytest.param(False, id="no-model")])
def test_edge_run_serves_with_the_broker_and_the_repository_down(broker, device, repo, versions, edge_run, installed):
    options = {}
    if installed:
        repo.release(versions(1))
        updater = device("pi-down")
        assert updater.check().outcome == "installed"
        options["state_dir"] = updater.store.root
    broker.stop()  # nobody answers on the broker's port, nor on the repository's
    dead_repository = f"http://127.0.0.1:{free_port()}/tuf"
    command = edge_run(device_id="pi-down", broker=broker.address, repository_url=dead_repository, **options)
    command += ["--count", "3", "--interval", "0.1"]
    env = {**os.environ, "FEDGE_MQTT__USERNAME": "pi-down", "FEDGE_MQTT__PASSWORD": SECRET}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("pi-down: ")]
    assert len(lines) == 3, proc.stdout
    if installed:
        assert all("from edge, v1" in line for line in lines), proc.stdout
    else:  # no model and no cloud: each sample is answered with the reason, and the program goes on
        assert all("no answer (CloudUnavailable" in line for line in lines), proc.stdout
    assert "fedge.edge.device: device pi-down starts" in proc.stderr  # the log reaches stderr (the journal)
    assert "stopped after 3 samples" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.device_subprocess
def test_edge_run_connects_later_installs_and_a_clean_stop_leaves_it_offline(
    tmp_path, broker, server, repo, versions, edge_run
):
    settings = MqttSettings.from_address(broker.address)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    repo.release(versions(1))
    broker.stop()  # the device starts while the broker is down
    command = edge_run(
        device_id="pi-late",
        broker=broker.address,
        repository_url=f"{server.url}/tuf",
        update="health_window_s = 0.2\nmin_check_interval_s = 0",
    )
    command += ["--interval", "0.2", "--log-level", "debug"]
    out = tmp_path / "device.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
    statuses: list[dict] = []
    try:

        def answered(version: int) -> bool:
            assert proc.poll() is None, out.read_text()
            return f"from edge, v{version}" in out.read_text()

        poll(lambda: "pi-late: " in out.read_text(), "an answer before any broker")
        poll(lambda: answered(1), "v1 installed in the background, with no broker")

        broker.start()
        with ReleaseService(registry, settings):
            watcher = subscribed_client(
                settings, topics.device_status("pi-late"), lambda c, u, m: statuses.append(json.loads(m.payload))
            )
            poll(lambda: any(s.get("installed_version") == 1 for s in statuses), "the device's status, once connected")
            repo.release(versions(2))
            publish(settings, topics.release("digits"), [notice_payload("digits", 2)], retain=True)
            poll(lambda: answered(2), "v2 installed on the notice")
            poll(lambda: any(s.get("step") == "healthy" and s.get("installed_version") == 2 for s in statuses), "v2")

            proc.send_signal(signal.SIGTERM)  # systemctl stop
            assert proc.wait(PATIENCE_S) == 0, out.read_text()
            poll(lambda: statuses[-1].get("state") == "offline", "the offline status of a clean stop")
            fleet = poll(lambda: [d for d in registry.fleet() if d["status"] == "offline"], "the fleet view's offline")
            watcher.disconnect()
            watcher.loop_stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        registry.close()
    assert fleet[0]["device_id"] == "pi-late"
    assert fleet[0]["last_step"] == "stopped"
    assert fleet[0]["stale"] is False
    # Every status after the v2 notice was seen; each telemetry window, sent again with later statuses, counts once.
    windows = {s["telemetry"]["window"]: s["telemetry"] for s in statuses if "telemetry" in s}
    on_v2 = sum(e["calls"] for w in windows.values() for e in w["versions"] if e["version"] == 2)
    assert on_v2 == len(re.findall(r"from edge(?:-degraded)?, v2,", out.read_text())) > 0
    # A bare client that connects now is handed the retained status: offline, not the Last Will (the stop was clean).
    retained: list[dict] = []
    late = subscribed_client(
        settings, topics.device_status("pi-late"), lambda c, u, m: retained.append(json.loads(m.payload))
    )
    poll(lambda: retained, "the retained status")
    late.disconnect()
    late.loop_stop()
    assert retained[0]["state"] == "offline"
    assert retained[0]["step"] == "stopped"
    log = out.read_text()
    assert "fedge.edge.updater: update installed" in log  # the updater's steps reach the log
    assert "SIGTERM: stopping" in log
