"""MQTT inference workers on a real Mosquitto: answers, load sharing, typed errors, overload, restarts."""

import threading
import time
import uuid

import numpy as np
import pytest
from peers import RawRequester
from waiting import PATIENCE_S, poll

from sdk import topics, wire
from sdk.cloud.batching import BatcherConfig
from sdk.cloud.inference import InferenceService
from sdk.cloud.worker import InferenceWorker
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.breaker import CircuitBreaker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import CloudUnavailable, DeadlineExceeded, Overloaded, RemoteError, UnknownModel
from sdk.mqtt import MqttSettings, connect, make_client, publish_properties


@pytest.fixture
def client(cloud):
    with CloudClient(cloud.settings, device_id=f"t-{uuid.uuid4().hex[:8]}") as c:
        yield c


def test_reply_equals_the_fp32_model(cloud, client, model_dir, digits_split):
    x = digits_split.x_test[:5]
    reply = client.infer(cloud.service.name, x, timeout_s=PATIENCE_S)
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as rt:
        expected = rt.predict(x).outputs
    assert reply.kind == "reply"
    assert reply.source.startswith("cloud:w")
    assert reply.model_version == cloud.service.manifest.version
    np.testing.assert_allclose(reply.tensor, expected, rtol=1e-4, atol=1e-4)


def test_one_sample_comes_back_without_a_batch_axis(cloud, client, digits_split):
    reply = client.infer(cloud.service.name, digits_split.x_test[0], timeout_s=PATIENCE_S)
    assert reply.tensor.shape == (10,)


def test_two_workers_share_the_load(cloud, client, digits_split):
    before = [w.answered for w in cloud.workers]
    for i in range(40):
        client.infer(cloud.service.name, digits_split.x_test[i], timeout_s=PATIENCE_S)
    served = [w.answered - b for w, b in zip(cloud.workers, before, strict=True)]
    assert sum(served) == 40
    assert min(served) >= 5, served


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "shorter than"),
        (b"\x00" * 32, "bad magic"),
        (b"FDG\x07" + b"\x00" * 8, "version 7"),
        (wire.encode(wire.request("digits", np.zeros((1, 8, 8), np.float32)))[:-10], "truncated"),
        (wire.encode(wire.request("digits", np.zeros((1, 9, 9), np.float32))), "shape"),
        (wire.encode(wire.request("digits", np.zeros((1, 8, 8), bool))), "dtype"),
        (wire.encode(wire.request("digits", np.full((1, 8, 8), np.nan, np.float32))), "NaN"),
        (wire.encode(wire.request("digits", np.zeros((600, 1, 8, 8), np.float64))), "bound"),
        (wire.encode(wire.error_reply("x", "internal", "?")), "expected a request"),
    ],
    ids=["empty", "magic", "version", "truncated", "shape", "dtype", "nan", "oversized", "not-a-request"],
)
def test_bad_payloads_get_a_typed_error_and_the_worker_goes_on(cloud, client, payload, expected):
    raw = RawRequester(cloud.settings)
    try:
        answers = [raw.ask(topics.infer(cloud.service.name), payload) for _ in cloud.workers]
    finally:
        raw.close()
    for answer in answers:  # one per worker: Mosquitto hands shared messages out in turn
        assert answer.kind == "error"
        assert answer.error_code == "bad_request"
        assert expected.lower() in answer.error_message.lower()
    # Each worker on its own still answers: with a shared subscription a dead one would hide behind the other.
    before = [w.answered for w in cloud.workers]
    for _ in range(4 * len(cloud.workers)):
        assert client.infer(cloud.service.name, np.zeros((1, 8, 8), np.float32), timeout_s=PATIENCE_S).kind == "reply"
    served = [w.answered - b for w, b in zip(cloud.workers, before, strict=True)]
    assert all(n >= 1 for n in served), served


def test_unknown_model_is_a_typed_error(cloud, client):
    with pytest.raises(UnknownModel, match="serves"):
        client.infer("no-such-model", np.zeros((1, 8, 8), np.float32), timeout_s=PATIENCE_S)
    assert client.breaker.state == "closed"  # a refusal is not a cloud failure


def test_wrong_shape_is_refused_by_the_cloud(cloud, client):
    with pytest.raises(RemoteError) as info:
        client.infer(cloud.service.name, np.zeros((2, 3), np.float32), timeout_s=PATIENCE_S)
    assert info.value.code == "bad_request"


def test_overload_sheds_with_a_typed_error(broker, model_dir, gated):
    settings = MqttSettings.from_address(broker.address)
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=1, max_queue=2)))
    outcomes: list[str] = []
    lock = threading.Lock()
    try:
        with (
            InferenceWorker({svc.name: svc}, settings),
            CloudClient(settings, device_id="flood", breaker=CircuitBreaker(failure_threshold=100)) as client,
        ):

            def call():
                try:
                    client.infer(svc.name, np.zeros((1, 8, 8), np.float32), timeout_s=PATIENCE_S * 2)
                    outcome = "ok"
                except Overloaded:
                    outcome = "overloaded"
                with lock:
                    outcomes.append(outcome)

            threads = [threading.Thread(target=call) for _ in range(12)]
            threads[0].start()
            assert svc.busy.wait(PATIENCE_S)  # the model holds the first request: one running, two may queue
            for t in threads[1:]:
                t.start()
            poll(lambda: outcomes.count("overloaded") == 9, "nine of eleven requests shed")
            svc.gate.set()
            for t in threads:
                t.join(PATIENCE_S)
    finally:
        svc.close()
    assert sorted(outcomes) == ["ok"] * 3 + ["overloaded"] * 9


def test_no_worker_means_a_deadline_not_a_hang(broker):
    settings = MqttSettings.from_address(broker.address)
    with CloudClient(settings, device_id="alone") as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.infer("digits", np.zeros((1, 8, 8), np.float32), timeout_s=0.2)
        assert time.monotonic() - start < PATIENCE_S  # bounded by the deadline, not a hang


def test_worker_and_device_reconnect_after_a_broker_restart(broker, service, digits_split):
    settings = MqttSettings.from_address(broker.address)
    with InferenceWorker({service.name: service}, settings), CloudClient(settings, device_id="survivor") as client:
        assert client.infer(service.name, digits_split.x_test[0], timeout_s=PATIENCE_S).kind == "reply"
        broker.stop()
        with pytest.raises((CloudUnavailable, DeadlineExceeded)):
            client.infer(service.name, digits_split.x_test[0], timeout_s=0.3)
        broker.start()

        def answered():
            try:
                return client.infer(service.name, digits_split.x_test[0], timeout_s=2)
            except (CloudUnavailable, DeadlineExceeded):
                return None

        assert poll(answered, "an answer after the broker came back", interval_s=0.1).kind == "reply"


def test_a_request_without_a_response_topic_is_dropped_quietly(cloud, client):
    bare = make_client(cloud.settings, "no-reply-topic")
    connect(bare, cloud.settings)
    bare.publish(topics.infer(cloud.service.name), b"garbage", qos=1).wait_for_publish(5)
    bare.disconnect()
    bare.loop_stop()
    assert client.infer(cloud.service.name, np.zeros((1, 8, 8), np.float32), timeout_s=PATIENCE_S).kind == "reply"


def test_a_worker_holds_more_requests_than_the_brokers_default_window(broker, model_dir, gated):
    # Requests are acknowledged only once answered; Mosquitto sends at most 20 unacknowledged ones to a client
    # unless it asks for more (Receive Maximum), so without it a held batch could never grow past 20.
    settings = MqttSettings.from_address(broker.address)
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=64, max_queue=64)))
    wanted = 30
    try:
        with InferenceWorker({svc.name: svc}, settings):
            requester = RawRequester(settings)
            try:
                payload = wire.encode(wire.request(svc.name, np.zeros((1, 8, 8), np.float32)))
                for _ in range(wanted):
                    requester.send(topics.infer(svc.name), payload)
                assert svc.busy.wait(PATIENCE_S)
                poll(lambda: svc.batcher.depth() >= wanted - 1, f"{wanted - 1} requests queued behind the held one")
                svc.gate.set()
                poll(lambda: len(requester.replies) == wanted, f"all {wanted} answered")
            finally:
                requester.close()
    finally:
        svc.close()


def test_a_lone_request_skips_the_batchers_thread_and_a_burst_is_still_batched(broker, model_dir):
    settings = MqttSettings.from_address(broker.address)
    svc = InferenceService.from_model_dir(model_dir)
    runs: list[tuple[str, int]] = []
    try:
        with InferenceWorker({svc.name: svc}, settings) as worker:
            counted = svc.batcher.on_batch
            svc.batcher.on_batch = lambda size: (runs.append((threading.current_thread().name, size)), counted(size))
            requester = RawRequester(settings)
            try:
                payload = wire.encode(wire.request(svc.name, np.zeros((1, 8, 8), np.float32)))
                lone = 10
                for _ in range(lone):  # one at a time: the first on the batcher's thread, then a model known quick
                    assert requester.ask(topics.infer(svc.name), payload).kind == "reply"
                assert runs[0] == ("fedge-batcher", 1)
                assert runs[lone - 1] == (f"fedge-worker-{worker.worker_id}", 1)  # the worker's network thread
                burst = [f"burst-{i}".encode() for i in range(200)]
                for key in burst:  # published at once, unacknowledged: they wait on the worker's connection
                    props = publish_properties(response_topic=requester.reply_topic, correlation=key)
                    requester.client.publish(topics.infer(svc.name), payload, qos=1, properties=props)
                poll(lambda: all(key in requester.replies for key in burst), "every request of the burst answered")
                assert worker.answered == lone + len(burst)
                assert max(size for _, size in runs[lone:]) > 1  # the burst went through batches
            finally:
                requester.close()
    finally:
        svc.close()


def test_a_model_failure_on_a_lone_run_is_answered_counted_and_the_worker_goes_on(broker, model_dir):
    settings = MqttSettings.from_address(broker.address)
    svc = InferenceService.from_model_dir(model_dir)
    run, failing, ran_on = svc.batcher._run, threading.Event(), []

    def engine(x):
        # A fake to inject a fault a real engine cannot produce on demand: it fails while `failing` is set.
        ran_on.append(threading.current_thread().name)
        if failing.is_set():
            raise RuntimeError("injected: the engine failed")
        return run(x)

    svc.batcher._run = engine
    try:
        with InferenceWorker({svc.name: svc}, settings) as worker:
            requester = RawRequester(settings)
            try:
                payload = wire.encode(wire.request(svc.name, np.zeros((1, 8, 8), np.float32)))
                for _ in range(3):  # the first on the batcher's thread, then lone runs on the network thread
                    assert requester.ask(topics.infer(svc.name), payload).kind == "reply"
                assert ran_on[-1] == f"fedge-worker-{worker.worker_id}"
                failing.set()
                failed = requester.ask(topics.infer(svc.name), payload)
                assert ran_on[-1] == f"fedge-worker-{worker.worker_id}"  # the failure was a lone run's
                assert (failed.kind, failed.error_code) == ("error", "internal")
                assert failed.error_message == "the model failed on this batch"
                failing.clear()
                answered = requester.ask(topics.infer(svc.name), payload)
                assert answered.kind == "reply"
                np.testing.assert_allclose(
                    answered.tensor, run(svc.model.inputs.prepare(np.zeros((1, 8, 8), np.float32))[0])[0], rtol=1e-6
                )
                assert (
                    worker.metrics.value("fedge_requests_total", model=svc.name, outcome="internal", transport="mqtt")
                    == 1
                )
                assert worker.metrics.value("fedge_requests_total", model=svc.name, outcome="ok", transport="mqtt") == 4
                assert worker.answered == 4
            finally:
                requester.close()
    finally:
        svc.close()


def test_replies_travel_at_qos_0_even_to_a_subscriber_that_asks_for_qos_1(broker, model_dir):
    # Sessions are clean, so a QoS 1 reply would buy nothing a retry does not, and cost two acknowledgements.
    settings = MqttSettings.from_address(broker.address)
    svc = InferenceService.from_model_dir(model_dir)
    try:
        with InferenceWorker({svc.name: svc}, settings):
            requester = RawRequester(settings)
            try:
                good = wire.encode(wire.request(svc.name, np.zeros((1, 8, 8), np.float32)))
                answered = requester.send(topics.infer(svc.name), good)
                refused = requester.send(topics.infer(svc.name), b"not a fedge payload")
                assert requester.wait(answered).kind == "reply"
                assert requester.wait(refused).kind == "error"
                assert requester.qos == {answered: 0, refused: 0}
            finally:
                requester.close()
    finally:
        svc.close()
