"""``fedge broker init`` and a real Mosquitto started from what it wrote: TLS, accounts, the ACL.

Every forbidden publish is followed by an allowed one on the same topic (a sentinel) after the
broker has answered the first: the broker handles packets in order, so a subscriber that
received the sentinel would already hold the forbidden message had the broker let it through.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import uuid
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from peers import subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.broker.acl import RELEASE_ACCOUNT, WORKER_ACCOUNT
from sdk.broker.layout import BrokerDir
from sdk.broker.passwords import verify_line
from sdk.broker.provision import init_broker
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings, connect, make_client

DEVICES = ("pi-a", "pi-b")
FEDGE = (sys.executable, "-m", "sdk.cli")


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A broker directory for two devices and a Mosquitto running it on 127.0.0.1."""
    layout = init_broker(tmp_path_factory.mktemp("broker"), devices=DEVICES, hosts=("broker.example.net",))
    with Mosquitto(config_dir=layout.root) as broker:
        yield SimpleNamespace(
            layout=layout, broker=broker, as_=lambda account: layout.settings(account, broker.address)
        )


def _connack(settings: MqttSettings) -> str:
    """The reason the broker gives a CONNECT with ``settings`` (paho's text: "Success", "Not authorized")."""
    answered: list[str] = []
    done = threading.Event()
    client = make_client(settings, f"probe-{uuid.uuid4().hex[:8]}")

    def on_connect(c, userdata, flags, reason, props):
        answered.append(str(reason))
        done.set()

    client.on_connect = on_connect
    connect(client, settings, wait=False)
    try:
        assert done.wait(PATIENCE_S), "the broker never answered the CONNECT"
        return answered[0]
    finally:
        client.disconnect()
        client.loop_stop()


def _puback(settings: MqttSettings, topic: str, payload: bytes, *, retain: bool = False) -> str:
    """Publish at QoS 1 and return the broker's PUBACK reason ("Success" or "Not authorized")."""
    acked: list[str] = []
    done = threading.Event()
    client = make_client(settings, f"pub-{uuid.uuid4().hex[:8]}")

    def on_publish(c, userdata, mid, reason, props):
        acked.append(str(reason))
        done.set()

    client.on_publish = on_publish
    connect(client, settings)
    try:
        client.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(PATIENCE_S), f"no PUBACK for {topic}"
        return acked[0]
    finally:
        client.disconnect()
        client.loop_stop()


def _collector(settings: MqttSettings, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    return subscribed_client(settings, topic, lambda c, u, msg: got.append(msg.payload)), got


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_password_lines_are_mosquitto_passwds_format(tmp_path):
    reference = tmp_path / "passwd"
    subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", "-c", str(reference), "u1", "s3cret"])
    line = reference.read_text()

    assert verify_line(line, "u1", "s3cret")
    assert not verify_line(line, "u1", "wrong")


def test_init_writes_private_files_0600_and_prints_no_password(tmp_path):
    target = tmp_path / "broker"
    result = subprocess.run(
        [
            *FEDGE,
            "broker",
            "init",
            "--dir",
            str(target),
            "--device",
            "pi-7",
            "--host",
            "mqtt.example.net",
            "--client-certs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    layout = BrokerDir(target)
    accounts = (WORKER_ACCOUNT, RELEASE_ACCOUNT, "pi-7")
    private = [layout.ca_key, layout.server_key, layout.password_file]
    private += [layout.client_secret(a) for a in accounts] + [layout.client_key(a) for a in accounts]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in private} == {p.name: 0o600 for p in private}
    passwords = [layout.password(a) for a in accounts]
    assert all(len(p) >= 40 for p in passwords)
    assert len(set(passwords)) == 3
    assert not any(p in result.stdout + result.stderr for p in passwords)
    assert str(layout.client_secret("pi-7")) in result.stdout
    lines = layout.password_file.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == list(accounts)
    assert all(re.fullmatch(r"[^:]+:\$7\$\d+\$[A-Za-z0-9+/=]{16}\$[A-Za-z0-9+/=]{88}", line) for line in lines)
    assert verify_line(lines[2], "pi-7", passwords[2])
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in sans} == {"mqtt.example.net", "localhost", "127.0.0.1"}
    conf = layout.config_file.read_text()
    for line in ("allow_anonymous false", "set_tcp_nodelay true", "require_certificate true", "persistence true"):
        assert re.search(rf"^{line}$", conf, re.MULTILINE), line
    fragment = MqttSettings.load(layout.client_config("pi-7"), env={})
    assert (fragment.host, fragment.port, fragment.tls, fragment.username) == ("mqtt.example.net", 8883, True, "pi-7")
    assert fragment.password is None
    assert fragment.key_file == layout.client_key("pi-7")


def test_with_client_certs_a_client_needs_its_certificate_as_well(tmp_path):
    layout = init_broker(tmp_path / "broker", devices=("pi-c",), client_certs=True)
    with Mosquitto(config_dir=layout.root) as broker:
        settings = layout.settings("pi-c", broker.address)
        assert _connack(settings) == "Success"

        with pytest.raises(ssl.SSLError, match=r"CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE"):
            _tls_without_certificate(layout, broker)


def _tls_without_certificate(layout: BrokerDir, broker: Mosquitto) -> None:
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    raw = socket.create_connection((broker.host, broker.port), timeout=PATIENCE_S)
    with context.wrap_socket(raw, server_hostname=broker.host) as tls:
        tls.recv(1)  # TLS 1.3 reports the missing certificate after the handshake; without, this waits


@pytest.mark.parametrize("device_id", [WORKER_ACCOUNT, RELEASE_ACCOUNT, "a/b", "#"])
def test_init_refuses_a_device_id_that_is_a_service_account_or_no_topic_segment(tmp_path, device_id):
    with pytest.raises(ValueError, match="device id"):
        init_broker(tmp_path / "broker", devices=(device_id,))
    assert not (tmp_path / "broker" / "mosquitto.conf").exists()


@pytest.mark.parametrize("who", ["anonymous", "wrong password", "unknown user"])
def test_the_broker_refuses_clients_without_a_valid_account(secured, who):
    from dataclasses import replace

    device = secured.as_("pi-a")
    settings = {
        "anonymous": replace(device, username=None, password=None),
        "wrong password": replace(device, password="not-the-password"),
        "unknown user": replace(device, username="pi-z"),
    }[who]

    assert _connack(settings) == "Not authorized"
    assert _connack(device) == "Success"


def test_a_device_refused_by_the_broker_retries_with_growing_waits_not_in_a_loop(secured):
    import time
    from dataclasses import replace

    from sdk.edge.cloud_client import CloudClient

    settings = replace(secured.as_("pi-a"), password="not-the-password")
    client = CloudClient(settings, device_id="pi-a")
    refusals = []
    own_on_connect = client._client.on_connect

    def counted(c, userdata, flags, reason, props):  # observes the real callback: one call per CONNACK
        refusals.append(str(reason))
        own_on_connect(c, userdata, flags, reason, props)

    client._client.on_connect = counted
    client.start()
    try:
        time.sleep(2.0)  # waits of 0.05 s doubling up to 5 s: a handful of attempts, where no wait would make hundreds
        assert not client.connected
    finally:
        client.close()
    assert 2 <= len(refusals) <= 12, refusals
    assert set(refusals) == {"Not authorized"}


def test_add_device_lets_a_new_device_in_after_a_reload(secured):
    add = [*FEDGE, "broker", "add-device", "--dir", str(secured.layout.root), "--device"]
    result = subprocess.run([*add, "pi-new"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert secured.layout.password("pi-new") not in result.stdout
    refused = subprocess.run([*add, "pi-a"], capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2
    assert "already has an account" in refused.stderr

    secured.broker.reload()

    poll(lambda: _connack(secured.as_("pi-new")) == "Success", "the new device's login after the reload")
    assert _connack(secured.as_("pi-a")) == "Success"


def test_a_device_cannot_read_another_devices_replies(secured):
    snoop, snooped = _collector(secured.as_("pi-a"), topics.device_replies("pi-b"))  # the SUBACK grants it
    own, own_got = _collector(secured.as_("pi-a"), topics.device_replies("pi-a"))
    victim, victim_got = _collector(secured.as_("pi-b"), topics.device_replies("pi-b"))
    try:
        worker = secured.as_(WORKER_ACCOUNT)
        assert _puback(worker, topics.device_replies("pi-b"), b"for pi-b only") == "Success"
        assert _puback(worker, topics.device_replies("pi-a"), b"sentinel") == "Success"

        poll(lambda: own_got and victim_got, "the sentinel at pi-a and the reply at pi-b")
        assert victim_got == [b"for pi-b only"]
        assert own_got == [b"sentinel"]
        assert snooped == []
    finally:
        for client in (snoop, own, victim):
            _close(client)


@pytest.mark.parametrize(
    ("forger", "topic", "reader", "allowed"),
    [
        ("pi-a", topics.device_status("pi-b"), RELEASE_ACCOUNT, "pi-b"),
        ("pi-a", topics.device_replies("pi-b"), "pi-b", WORKER_ACCOUNT),
        ("pi-a", topics.release("digits"), "pi-b", RELEASE_ACCOUNT),
        (WORKER_ACCOUNT, topics.release("digits"), "pi-b", RELEASE_ACCOUNT),
    ],
    ids=["device-writes-another-status", "device-forges-a-reply", "device-publishes-a-release", "worker-releases"],
)
def test_a_forbidden_publish_is_refused_and_never_delivered(secured, forger, topic, reader, allowed):
    live, live_got = _collector(secured.as_(reader), topic)
    late = None
    try:
        assert _puback(secured.as_(forger), topic, b"forged", retain=True) == "Not authorized"
        # Subscribed after the forgery: the broker would hand it a retained copy before the sentinel.
        late, late_got = _collector(secured.as_(reader), topic)
        assert _puback(secured.as_(allowed), topic, b"sentinel") == "Success"

        poll(lambda: live_got and late_got, f"the sentinel on {topic} at both subscribers")
        assert live_got == [b"sentinel"]
        assert late_got == [b"sentinel"]
    finally:
        for client in (live, late):
            if client is not None:
                _close(client)


def test_a_device_and_a_worker_serve_over_tls_and_a_release_notice_reaches_the_device(
    secured, service, model_dir, digits_split
):
    from sdk.cloud.worker import InferenceWorker
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.edge.cloud_client import CloudClient
    from sdk.edge.status import DeviceLink
    from sdk.notices import notice_payload

    x = digits_split.x_test[:4].astype(np.float32)
    statuses, seen = _collector(secured.as_(RELEASE_ACCOUNT), f"{topics.PREFIX}/devices/+/status")
    with (
        InferenceWorker({service.name: service}, secured.as_(WORKER_ACCOUNT), worker_id="tls-worker"),
        CloudClient(secured.as_("pi-a"), device_id="pi-a") as client,
        DeviceLink(secured.as_("pi-a"), "pi-a", service.name) as link,
    ):
        reply = client.infer(service.name, x, timeout_s=PATIENCE_S)
        assert (reply.kind, reply.source) == ("reply", "cloud:tls-worker")
        with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as rt:
            np.testing.assert_allclose(reply.tensor, rt.predict(x).outputs, rtol=1e-4, atol=1e-4)

        link.report({"device_id": "pi-a", "step": "idle"})
        assert _puback(secured.as_(RELEASE_ACCOUNT), topics.release(service.name), notice_payload(service.name, 2)) == (
            "Success"
        )
        poll(lambda: link.notices >= 1, "the release notice at the device")
        poll(lambda: any(b'"step": "idle"' in s for s in seen), "the device's status at the release service")
    _close(statuses)


def test_the_demo_cloud_stage_calibrates_against_the_cloud_tier_it_serves_through_a_secured_broker(
    model_dir, cloud_model_dir, digits_split, tmp_path
):
    from sdk.cli.demo import DEVICE_ARTIFACT, cloud_stage
    from sdk.manifest import ModelRef, load_manifest

    run = cloud_stage(model_dir, cloud_model_dir, digits_split, tmp_path / "cloud")

    n = len(digits_split.y_test)
    sources = [call.source for call in run.calls]
    assert run.rows == n
    assert len(sources) == n + 20  # then 20 more calls with the workers stopped
    assert "cloud" in sources[:n]  # answers came back from the two workers over TLS
    assert "cloud" not in sources[n:]
    assert run.fallback_rate == sources[:n].count("cloud") / n
    assert run.cascade_accuracy == sum(call.correct for call in run.calls[:n]) / n
    # The threshold the device ran is the one calibrated against the served cloud tier, written into a copy only.
    assert run.calibration.reached
    assert run.threshold == run.calibration.threshold
    cloud = load_manifest(cloud_model_dir)
    calibrated = load_manifest(tmp_path / "cloud" / "device")
    assert calibrated.threshold_for(DEVICE_ARTIFACT) == run.threshold
    assert calibrated.cloud_model == ModelRef(cloud.name, cloud.version)
    assert load_manifest(model_dir).cloud_model is None
    # A degraded answer is the device's own: only the cloud tier's answers move the cascade off the device alone.
    assert run.cloud_accuracy > run.device_accuracy
    assert run.cascade_accuracy >= run.device_accuracy
    assert "allow_anonymous false" in (tmp_path / "cloud" / "broker" / "mosquitto.conf").read_text()


def test_fedge_calibrate_asks_the_served_cloud_through_a_secured_broker_as_its_own_account(
    secured, model_dir, cloud_model_dir, digits_split, tmp_path
):
    import json
    import os

    from sdk.broker.layout import PASSWORD_ENV
    from sdk.cli.demo import _stop_all, _wait_for_workers
    from sdk.edge.cloud_client import CloudClient
    from sdk.manifest import load_manifest

    layout, address = secured.layout, secured.broker.address
    model = shutil.copytree(model_dir, tmp_path / "device")
    serve = ["cloud", "worker", "-m", str(cloud_model_dir), "--broker", address, "--id", "calibrated-against"]
    worker = subprocess.Popen(
        [*FEDGE, *serve, "--config", str(layout.client_config(WORKER_ACCOUNT))],
        env={**os.environ, PASSWORD_ENV: layout.password(WORKER_ACCOUNT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with CloudClient(secured.as_("pi-b"), device_id="pi-b").start(wait=True) as probe:
            _wait_for_workers(probe, load_manifest(cloud_model_dir).name, digits_split.x_test[0])
        # The ACL delivers replies to an account's own device id only: the driver must ask as "pi-a".
        ask = ["--config", str(layout.client_config("pi-a")), "--broker", address, "--timeout-s", "120"]
        what = ["--artifact", "onnx-int8", "--target-accuracy", "0.9", "--no-plot", "--json"]
        proc = subprocess.run(
            [*FEDGE, "calibrate", "-m", str(model), *ask, *what],
            env={**os.environ, PASSWORD_ENV: layout.password("pi-a")},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        _stop_all([worker])
    assert proc.returncode == 0, proc.stderr[-2000:]
    chosen = json.loads(proc.stdout)["artifacts"]["onnx-int8"]
    assert chosen["reached"]
    assert load_manifest(model).threshold_for("onnx-int8") == chosen["threshold"]
