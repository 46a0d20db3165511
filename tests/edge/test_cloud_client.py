"""The device's MQTT path under faults, on a real Mosquitto and real workers: poisoned replies, a dead
network thread, a lost request, a broker restart.

Strangers here are bare MQTT clients publishing what a hostile network could; where a fault cannot be
produced by a real part on demand the test says so.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import uuid

import numpy as np
import pytest
from peers import publish, subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics, wire
from sdk.cloud.worker import InferenceWorker
from sdk.edge.breaker import CircuitBreaker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import CloudUnavailable, DeadlineExceeded, RemoteError
from sdk.mqtt import MqttSettings

X = np.zeros((1, 8, 8), np.float32)


def raw_reply(header: dict) -> bytes:
    """A wire payload with a hand-written header, as a stranger would make it."""
    body = json.dumps({"kind": "reply", "id": "stranger", **header}).encode()
    return struct.pack("<3sBI", wire.MAGIC, wire.VERSION, len(body)) + body


POISONS = {
    # numpy refuses the reshape: the size check multiplies to 0.
    "zero-next-to-huge-dimension": raw_reply(
        {"tensors": [{"name": "output", "dtype": "float32", "shape": [0, 2**62]}]}
    ),
    # Python's float() of a 400-digit integer overflows.
    "huge-integer-deadline": raw_reply({"deadline_ms": 10**400, "tensors": []}),
    "not-a-payload": b"\xff" * 64,
}


def client_for(settings: MqttSettings, **kwargs) -> CloudClient:
    return CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:8]}", **kwargs).start(wait=True)


class Stranger:
    """Listens to the request topics and answers every request with ``payload``, under the request's CorrelationData."""

    def __init__(self, settings: MqttSettings, payload: bytes, topic: str = f"{topics.PREFIX}/infer/+"):
        self.payload = payload
        self.ids: list[bytes] = []
        self._lock = threading.Lock()
        self.client = subscribed_client(settings, topic, self._on_message)

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.ids.append(msg.properties.CorrelationData)
        if self.payload:
            from sdk.mqtt import publish_properties

            props = publish_properties(correlation=msg.properties.CorrelationData)
            client.publish(msg.properties.ResponseTopic, self.payload, qos=1, properties=props)

    def seen(self) -> list[bytes]:
        with self._lock:
            return list(self.ids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
def test_a_poisoned_reply_fails_its_call_with_a_typed_error_and_the_next_call_is_answered(broker, service, poison):
    settings = MqttSettings.from_address(broker.address)
    client = client_for(settings)
    stranger = Stranger(settings, poison)
    try:
        with pytest.raises(RemoteError) as info:
            client.infer(service.name, X, timeout_s=PATIENCE_S)
        assert info.value.code == "bad_reply"
    finally:
        stranger.close()
    assert client.bad_replies == 1
    with InferenceWorker({service.name: service}, settings):
        assert client.infer(service.name, X, timeout_s=PATIENCE_S).kind == "reply"
    assert client.connected
    client.close()


def test_a_poisoned_reply_to_no_pending_call_is_dropped_and_counted_late(cloud):
    client = client_for(cloud.settings)
    publish(cloud.settings, client.reply_topic, [POISONS["zero-next-to-huge-dimension"]])
    poll(lambda: client.late_replies == 1, "the stray reply counted")
    assert client.infer(cloud.service.name, X, timeout_s=PATIENCE_S).kind == "reply"
    client.close()


def test_an_exception_out_of_paho_is_counted_and_the_client_goes_on(cloud):
    client = client_for(cloud.settings)
    assert client.infer(cloud.service.name, X, timeout_s=PATIENCE_S).kind == "reply"
    own_on_message = client._client.on_message

    def fault(*args):
        # A fake to inject a fault no broker makes on demand: an error inside paho's own packet handling.
        raise RuntimeError("injected into paho's packet handling")

    client._client.on_message = fault
    try:
        publish(cloud.settings, client.reply_topic, [b"anything"])
        poll(lambda: client.loop_errors == 1, "the escaped exception counted")
    finally:
        client._client.on_message = own_on_message
    assert client.connected
    assert client.infer(cloud.service.name, X, timeout_s=PATIENCE_S).kind == "reply"
    client.close()


def test_a_request_whose_first_copy_is_lost_is_answered_by_the_resend(broker, service):
    settings = MqttSettings.from_address(broker.address)
    # Fault injection: a member of the workers' shared group that takes requests and answers nothing
    # (a worker that dies with them); Mosquitto hands the group's messages out in turn.
    silent = Stranger(settings, b"", topic=topics.shared_infer("cloud"))
    worker = InferenceWorker({service.name: service}, settings, group="cloud").start()
    client = client_for(settings, resend_at=0.01)  # resend after 1 % of the deadline: the test stays quick
    try:
        replies = []
        for _ in range(4):
            start = time.monotonic()
            replies.append(client.infer(service.name, X, timeout_s=PATIENCE_S))
            assert time.monotonic() - start < PATIENCE_S
        lost = silent.seen()
    finally:
        client.close()
        worker.stop()
        silent.close()
    assert [r.kind for r in replies] == ["reply"] * 4
    assert lost, "the silent member took no first copy"
    assert set(lost) <= {r.id.encode() for r in replies}  # each lost request was answered under its id
    assert client.resent >= len(lost)


def test_a_call_nobody_answers_is_sent_twice_under_one_id_and_ends_at_its_deadline(broker):
    settings = MqttSettings.from_address(broker.address)
    silent = Stranger(settings, b"")
    client = client_for(settings)
    try:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.infer("digits", X, timeout_s=0.5)
        elapsed = time.monotonic() - start
        poll(lambda: len(silent.seen()) == 2, "both copies at the listener")
    finally:
        client.close()
        silent.close()
    assert len(set(silent.seen())) == 1
    assert 0.5 * 0.9 <= elapsed < 0.5 + PATIENCE_S


def test_calls_while_the_broker_is_down_do_not_open_the_breaker(broker, service):
    settings = MqttSettings.from_address(broker.address)
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=3600)  # open, it would refuse for the whole test
    client = client_for(settings, breaker=breaker)
    broker.stop()
    poll(lambda: not client.connected, "the client saw the broker go")
    for _ in range(3):
        with pytest.raises(CloudUnavailable, match="not connected"):
            client.infer(service.name, X, timeout_s=PATIENCE_S)
    broker.start()
    poll(lambda: client.connections == 2 and client.connected, "the client subscribed again")
    with InferenceWorker({service.name: service}, settings):
        assert client.infer(service.name, X, timeout_s=PATIENCE_S).kind == "reply"  # the very next call goes out
    assert breaker.state == "closed"
    client.close()


def test_a_reconnect_half_opens_an_open_breaker_at_once(broker, service):
    settings = MqttSettings.from_address(broker.address)
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=3600)  # only a reconnect can reopen it in this test
    client = client_for(settings, breaker=breaker)
    with pytest.raises(DeadlineExceeded):
        client.infer(service.name, X, timeout_s=0.2)  # no worker yet: the cloud failed
    assert breaker.state == "open"
    with pytest.raises(CloudUnavailable, match="circuit open"):
        client.infer(service.name, X, timeout_s=PATIENCE_S)
    broker.restart(down_for=0.03)
    poll(lambda: client.connections == 2 and client.connected, "the client subscribed again")
    assert breaker.state == "half-open"
    with InferenceWorker({service.name: service}, settings):
        assert client.infer(service.name, X, timeout_s=PATIENCE_S).kind == "reply"  # the probe
    assert breaker.state == "closed"
    client.close()


def test_a_lone_call_reads_its_own_reply_on_the_calling_thread(cloud):
    client = client_for(cloud.settings)
    own_on_message, readers = client._client.on_message, []

    def recorded(*args):  # observes the real callback: which thread read the reply
        readers.append(threading.current_thread())
        own_on_message(*args)

    client._client.on_message = recorded
    try:
        for _ in range(3):
            assert client.infer(cloud.service.name, X, timeout_s=PATIENCE_S).kind == "reply"
    finally:
        client._client.on_message = own_on_message
        client.close()
    assert readers == [threading.current_thread()] * 3


def test_calls_from_many_threads_at_once_each_get_their_own_answer(cloud):
    client = client_for(cloud.settings)
    rng = np.random.default_rng(7)
    inputs = rng.random((8, 12, 1, 8, 8), dtype=np.float32)  # 8 threads, 12 calls each, all different
    expected = cloud.service.model.backend.run(inputs.reshape(-1, 1, 8, 8)).reshape(8, 12, -1)
    wrong: list[str] = []

    def caller(t: int) -> None:
        for k in range(12):
            try:
                got = client.infer(cloud.service.name, inputs[t, k], timeout_s=PATIENCE_S).tensor
                if not np.allclose(got, expected[t, k], atol=1e-5):
                    wrong.append(f"thread {t} call {k}: another call's answer")
            except Exception as exc:  # every failure is reported below
                wrong.append(f"thread {t} call {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert wrong == []
    assert client.late_replies == 0
