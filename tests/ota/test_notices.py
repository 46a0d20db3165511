"""Release notices and status over a real Mosquitto; power loss at every step of an install."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import textwrap
import threading

import pytest
from extras import DEVICE_PYTHON
from faults import kill_network_thread
from peers import publish
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.backoff import Backoff
from sdk.edge import EdgeConfig
from sdk.edge.background import CheckSchedule
from sdk.edge.install import ModelStore
from sdk.edge.status import DeviceLink
from sdk.edge.updater import open_installed
from sdk.mqtt import MqttSettings, connect, make_client
from sdk.notices import notice_payload


def publish_retained(settings, topic, payload):
    publish(settings, topic, [payload], retain=True)


def test_a_notice_triggers_a_check_and_status_is_reported(broker, device, repo, versions):
    settings = MqttSettings.from_address(broker.address)
    updater = device("pi-n1")
    statuses: list[dict] = []
    done = threading.Event()
    watcher = make_client(settings, "fleet-view")
    watcher.on_connect = lambda c, *a: c.subscribe(topics.device_status("pi-n1"), qos=1)
    watcher.on_message = lambda c, u, m: statuses.append(json.loads(m.payload))
    connect(watcher, settings)

    def on_notice():
        updater.check()
        done.set()

    with DeviceLink(settings, "pi-n1", "digits", on_notice) as link:
        updater.reporter = link.report
        repo.release(versions(1))
        publish_retained(settings, topics.release("digits"), notice_payload("digits", 1))
        assert done.wait(PATIENCE_S)
        poll(lambda: any(s.get("step") in ("installed", "healthy") for s in statuses), "an installed status")
    assert updater.installed_version == 1
    watcher.disconnect()
    watcher.loop_stop()


def test_a_forged_notice_alone_installs_nothing(broker, device, repo):
    settings = MqttSettings.from_address(broker.address)
    updater = device("pi-n2")
    outcomes = []
    checked = threading.Event()
    with DeviceLink(settings, "pi-n2", "digits", lambda: (outcomes.append(updater.check()), checked.set())):
        publish_retained(settings, topics.release("digits"), notice_payload("digits", 99))
        assert checked.wait(PATIENCE_S)
    assert outcomes[0].outcome == "up-to-date"
    assert updater.installed_version is None


def test_a_flood_of_notices_causes_one_check_per_interval(broker, device):
    settings = MqttSettings.from_address(broker.address)
    updater = device("pi-flood")
    # The real updater checks the real repository; a second check would wait an hour, far past this test.
    # (With no minimum interval the same flood causes several checks: 6 were seen here.)
    schedule = CheckSchedule(min_interval_s=3600)
    with DeviceLink(settings, "pi-flood", "digits", updater.check, schedule=schedule) as link:
        publish_retained(settings, topics.release("digits"), notice_payload("digits", 99))
        poll(lambda: link.notices >= 1, "the first notice (the device is subscribed)")
        forged = [notice_payload("digits", 100 + i) for i in range(999)]
        publish(settings, topics.release("digits"), forged)
        poll(lambda: link.notices == 1000, "all 1,000 notices")
        poll(lambda: any(e["step"] == "up-to-date" for e in updater.events), "the first check's outcome")
        checks = [e for e in updater.events if e["step"] == "checking"]
    assert len(checks) == 1, f"{len(checks)} checks for 1,000 notices"
    assert link.checks.runs == 1
    assert updater.installed_version is None


def test_a_check_that_raises_is_logged_counted_and_the_worker_goes_on(broker, caplog):
    settings = MqttSettings.from_address(broker.address)
    calls: list[int] = []

    def full_disk_once() -> str:
        # Fault injection: a disk that fills up during the first check, which the real updater cannot do on demand.
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return "up-to-date"

    # No retry before the next notice: the second check can only be the notice's.
    schedule = CheckSchedule(min_interval_s=0, backoff=Backoff(base_s=3600, max_s=3600))
    with (
        caplog.at_level(logging.ERROR, logger="fedge.edge.background"),
        DeviceLink(settings, "pi-fault", "digits", full_disk_once, schedule=schedule) as link,
    ):
        publish_retained(settings, topics.release("digits"), notice_payload("digits", 1))
        poll(lambda: link.errors == 1, "the failed check counted")
        publish(settings, topics.release("digits"), [notice_payload("digits", 2)])
        poll(lambda: len(calls) == 2, "a check on the next notice")
    assert link.errors == 1
    assert link.checks.runs == 2
    (record,) = [r for r in caplog.records if r.name == "fedge.edge.background"]
    assert "OSError" in record.getMessage()
    assert "No space left on device" in record.getMessage()


@pytest.mark.device_subprocess
def test_last_will_marks_a_vanished_device_offline(broker):
    settings = MqttSettings.from_address(broker.address, keepalive_s=5)
    seen: list[dict] = []
    watcher = make_client(settings, "fleet-view-2")
    watcher.on_connect = lambda c, *a: c.subscribe(topics.device_status("pi-gone"), qos=1)
    watcher.on_message = lambda c, u, m: seen.append(json.loads(m.payload))
    connect(watcher, settings)
    script = textwrap.dedent(
        f"""
        import time
        from sdk.edge.status import DeviceLink
        from sdk.mqtt import MqttSettings
        link = DeviceLink(MqttSettings.from_address("{broker.address}", keepalive_s=5), "pi-gone", "digits").start()
        link.report({{"step": "up"}})
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([DEVICE_PYTHON, "-c", script])
    poll(lambda: any(s.get("step") == "up" for s in seen), "the device's first status")
    proc.send_signal(signal.SIGKILL)  # no clean disconnect: the broker sends the will
    proc.wait()
    poll(lambda: any(s.get("state") == "offline" for s in seen), "the Last Will's offline status")
    watcher.disconnect()
    watcher.loop_stop()


KILL_SCRIPT = """
import os, signal, sys
from sdk.backoff import Backoff
from sdk.edge.background import CheckSchedule
from sdk.edge.install import ModelStore
from sdk.edge.updater import ModelUpdater, UpdateConfig

store_dir, url, root_file, kill_at = sys.argv[1:5]

def reporter(event):
    if event["step"] == kill_at or event.get("kill") == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # power loss at this step

import sdk.edge.install as install
original = install.ModelStore._set
def set_then_maybe_die(self, name, directory):
    original(self, name, directory)
    if kill_at == f"after-pointer-{name}":
        os.kill(os.getpid(), signal.SIGKILL)
install.ModelStore._set = set_then_maybe_die
config = UpdateConfig(model="digits", device_id="pi-k", repository_url=url)
updater = ModelUpdater(ModelStore(store_dir), config, open(root_file, "rb").read(), reporter=reporter)
print(updater.check().outcome)
"""


@pytest.mark.device_subprocess
@pytest.mark.parametrize(
    ("kill_at", "boots_on"),
    [
        ("checking", 1),
        ("downloading", 1),
        ("smoke-test", 1),
        ("installing", 1),
        ("after-pointer-previous", 1),  # v2 is in place, but `current` still says v1
        ("after-pointer-current", 2),  # the one write that switches versions
        ("never", 2),
    ],
)
def test_power_loss_at_any_step_leaves_a_valid_model(tmp_path, device, repo, versions, server, kill_at, boots_on):
    updater = device("pi-k")
    repo.release(versions(1))
    assert updater.check().outcome == "installed"
    repo.release(versions(2))
    root_file = tmp_path / "root.json"
    root_file.write_bytes(repo.root_bytes(1))
    proc = subprocess.run(
        [DEVICE_PYTHON, "-c", KILL_SCRIPT, str(updater.store.root), f"{server.url}/tuf", str(root_file), kill_at],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if kill_at == "never":
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = ModelStore(updater.store.root)  # the device boots again
    model = open_installed(store, EdgeConfig(artifacts=("onnx-int8",)))
    assert model is not None
    assert model.manifest.version == boots_on
    assert store.version_of(store.current()) == boots_on
    model.close()
    assert not list(store.root.glob(".staging-*"))
    assert os.path.isdir(store.current())


def test_a_dead_network_thread_is_restarted_by_the_next_check_and_notices_arrive_again(broker, monkeypatch):
    from sdk.mqtt import loop_alive

    settings = MqttSettings.from_address(broker.address)
    schedule = CheckSchedule(min_interval_s=0, every_s=0.05)  # checks keep running: each one looks at the link
    with DeviceLink(settings, "pi-revive", "digits", schedule=schedule, next_check_in=lambda result: None) as link:
        publish_retained(settings, topics.release("digits"), notice_payload("digits", 1))  # waits for the subscription
        poll(lambda: link.notices == 1, "the first notice")
        kill_network_thread(monkeypatch, link._client, settings, topics.release("digits"))
        poll(lambda: link.loop_restarts == 1 and loop_alive(link._client), "restarted by a check")
        publish(settings, topics.release("digits"), [notice_payload("digits", 3)])
        poll(lambda: link.notices >= 2, "a notice through the restarted thread (the retained one, at least)")
