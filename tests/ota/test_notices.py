"""Release notices and status over a real Mosquitto; power loss at every step of an install."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import threading

import pytest
from extras import DEVICE_PYTHON
from peers import publish
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.edge import EdgeConfig
from sdk.edge.install import ModelStore
from sdk.edge.status import DeviceLink, notice_payload
from sdk.edge.updater import open_installed
from sdk.mqtt import MqttSettings, connect, make_client


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
