"""Poisoned requests on a real Mosquitto and real workers: a typed error or a counted drop, and every worker goes on."""

import json
import struct
import threading
import uuid

import numpy as np
import pytest
from peers import RawRequester, subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics, wire
from sdk.cloud.worker import InferenceWorker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import DeadlineExceeded
from sdk.mqtt import MqttSettings

X = np.zeros((1, 8, 8), np.float32)


def by_hand(header: dict, body: bytes = b"") -> bytes:
    """A payload with a header no encoder would write: the wire prefix, the JSON, then ``body``."""
    raw = json.dumps(header).encode()
    return struct.pack("<3sBI", wire.MAGIC, wire.VERSION, len(raw)) + raw + body


@pytest.fixture
def raw(cloud):
    requester = RawRequester(cloud.settings)
    yield requester
    requester.close()


@pytest.fixture
def client(cloud):
    with CloudClient(cloud.settings, device_id=f"t-{uuid.uuid4().hex[:8]}") as c:
        yield c


def every_worker_answers(cloud, client) -> None:
    """Each worker on its own still answers: with a shared subscription a dead one would hide behind the other."""
    before = [w.answered for w in cloud.workers]
    for _ in range(4 * len(cloud.workers)):
        assert client.infer(cloud.service.name, X, timeout_s=PATIENCE_S).kind == "reply"
    served = [w.answered - b for w, b in zip(cloud.workers, before, strict=True)]
    assert all(n >= 1 for n in served), served


def dropped(cloud, reason: str) -> float:
    return sum(w.metrics.value("fedge_worker_dropped_total", reason=reason) for w in cloud.workers)


def test_a_zero_next_to_a_huge_dimension_gets_a_typed_error_and_every_worker_goes_on(cloud, raw, client):
    poison = by_hand(
        {
            "kind": "request",
            "id": "p",
            "model": "digits",
            "tensors": [{"name": "x", "dtype": "float32", "shape": [0, 2**62]}],
        }
    )
    keys = [raw.send(topics.infer(cloud.service.name), poison) for _ in cloud.workers]  # one each: handed out in turn
    for key in keys:
        answer = raw.wait(key)
        assert answer.kind == "error"
        assert answer.error_code in ("bad_request", "internal")
    every_worker_answers(cloud, client)


@pytest.mark.parametrize(
    "response_topic",
    [
        "fedge/v1/devices/x/#",
        "+",
        "fedge/v1/devices/+/replies",
        "fedge/v1/releases/digits",
        "fedge/v1/devices/x/status",
    ],
    ids=["hash", "plus", "plus-in-namespace", "release-notices", "device-status"],
)
def test_a_reply_topic_outside_the_device_replies_is_dropped_counted_and_never_published(
    cloud, raw, client, response_topic
):
    leaked: list[str] = []
    spy = subscribed_client(cloud.settings, "fedge/v1/#", lambda c, u, msg: leaked.append(msg.topic))
    try:
        before = dropped(cloud, "bad_response_topic")
        good = wire.encode(wire.request(cloud.service.name, X))
        for _ in cloud.workers:
            raw.send(topics.infer(cloud.service.name), good, response_topic=response_topic)
        poll(lambda: dropped(cloud, "bad_response_topic") == before + len(cloud.workers), "a counted drop per worker")
        every_worker_answers(cloud, client)
    finally:
        spy.disconnect()
        spy.loop_stop()
    outside = [t for t in leaked if not t.startswith("fedge/v1/infer/") and not topics.is_device_replies(t)]
    assert outside == []  # the spy saw the answers to the good calls, so it would have seen a published poison


def test_an_overlong_correlation_is_dropped_and_counted(cloud, raw, client):
    before = dropped(cloud, "bad_correlation")
    good = wire.encode(wire.request(cloud.service.name, X))
    for _ in cloud.workers:
        raw.send(topics.infer(cloud.service.name), good, key=b"k" * 4096)
    poll(lambda: dropped(cloud, "bad_correlation") == before + len(cloud.workers), "a counted drop per worker")
    every_worker_answers(cloud, client)


def test_a_correlation_that_is_not_text_is_answered(cloud, raw):
    key = raw.send(
        topics.infer(cloud.service.name), wire.encode(wire.request(cloud.service.name, X)), key=b"\xff\xfe\x00"
    )
    assert raw.wait(key).kind == "reply"


def test_an_exception_that_escapes_paho_is_counted_and_the_network_loop_goes_on(broker, service):
    settings = MqttSettings.from_address(broker.address)
    with InferenceWorker({service.name: service}, settings) as worker:
        served = worker._client.on_message
        raised = threading.Event()

        def poisoned(*args):
            # A fake to inject a fault the real parts cannot produce on demand: an exception escaping paho's callback.
            if not raised.is_set():
                raised.set()
                raise RuntimeError("injected: escapes the callback")
            served(*args)

        worker._client.on_message = poisoned
        with CloudClient(settings, device_id="after-the-fault", resend_at=None) as client:  # one copy: it is lost
            with pytest.raises(DeadlineExceeded):  # the poisoned request is never answered
                client.infer(service.name, X, timeout_s=0.5)
            assert raised.is_set()
            poll(lambda: worker.metrics.value("fedge_worker_loop_errors_total") == 1, "the escape counted")
            assert client.infer(service.name, X, timeout_s=PATIENCE_S).kind == "reply"
        assert worker.serving
