"""The fallback policy through a real broker and real workers: edge, cloud and degraded answers.

Where a test wants the cloud's answer it gives the call a deadline no loaded machine reaches
(``PATIENT_MS``); short deadlines appear only where nobody answers, so that they only ever expire.
Where a test needs the local engine to fail, to answer with chosen confidences or to take a chosen
time, it serves the real model directory with a :class:`~fakes.FakeBackend` and an injected clock;
the decisions themselves are tested without a broker in ``test_fallback_policy.py``.
"""

import threading
import time
import uuid

import numpy as np
import pytest
from fakes import FakeBackend, ManualClock, logits, with_backend
from peers import subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.breaker import CircuitBreaker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import BackendError, CloudError, ModelNotFound
from sdk.mqtt import MqttSettings

PATIENT_MS = PATIENCE_S * 1000


def runtime(model_dir, settings, breaker=None, **config):
    client = CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:8]}", breaker=breaker).start(wait=True)
    return EdgeRuntime.from_model_dir(model_dir, EdgeConfig(**config), cloud=client)


def faked_runtime(model_dir, engine, settings=None, *, clock=time.perf_counter, **config):
    """The real model directory served by a fake ``engine``; with ``settings``, a real cloud client to that broker."""
    config = EdgeConfig(**config)
    client = None
    if settings is not None:
        client = CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:8]}").start(wait=True)
    return EdgeRuntime(with_backend(model_dir, engine, config), config, cloud=client, clock=clock)


class RequestLog:
    """A listener on the request topics that answers nothing: what the devices sent, in order."""

    def __init__(self, settings):
        self.ids: list[bytes] = []
        self._lock = threading.Lock()
        self.client = subscribed_client(settings, f"{topics.PREFIX}/infer/+", self._on_message)

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.ids.append(msg.properties.CorrelationData)

    def seen(self) -> list[bytes]:
        """The request ids in the order they first arrived (a call resends its request once, under the same id)."""
        with self._lock:
            return list(dict.fromkeys(self.ids))

    def copies(self) -> list[bytes]:
        with self._lock:
            return list(self.ids)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def fp32(model_dir):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as rt:
        yield rt


def test_low_confidence_rows_go_to_the_cloud_and_come_back_right(cloud, model_dir, digits_split, fp32):
    x = digits_split.x_test[:200]
    with EdgeRuntime.from_model_dir(model_dir) as local:
        conf = local.predict(x).confidences
    threshold = float(np.quantile(conf, 0.2))
    with runtime(model_dir, cloud.settings, confidence_threshold=threshold, deadline_ms=PATIENT_MS) as rt:
        result = rt.predict(x)
    sources = np.array(result.sources)
    assert set(sources) == {"edge", "cloud"}
    np.testing.assert_array_equal(sources == "cloud", conf < threshold)
    cloud_rows = sources == "cloud"
    np.testing.assert_allclose(result.outputs[cloud_rows], fp32.predict(x[cloud_rows]).outputs, rtol=1e-4, atol=1e-4)
    assert (result.labels[cloud_rows] == fp32.predict(x[cloud_rows]).labels).all()


def test_confident_answers_stay_on_the_device(cloud, model_dir, digits_split):
    with runtime(model_dir, cloud.settings, confidence_threshold=0.0) as rt:
        before = sum(w.answered for w in cloud.workers)
        result = rt.predict(digits_split.x_test[:50])
        assert set(result.sources) == {"edge"}
        assert sum(w.answered for w in cloud.workers) == before


def test_cloud_down_gives_edge_degraded_without_waiting_out_the_deadline(broker, service, model_dir, digits_split):
    from sdk.cloud.worker import InferenceWorker

    settings = MqttSettings.from_address(broker.address)
    with EdgeRuntime.from_model_dir(model_dir) as alone:
        local = alone.predict(digits_split.x_test[0])
    with InferenceWorker({service.name: service}, settings):
        rt = runtime(model_dir, settings, confidence_threshold=1.0, deadline_ms=PATIENT_MS)
        assert rt.predict(digits_split.x_test[0]).source == "cloud"
        broker.stop()
        start = time.monotonic()
        result = rt.predict(digits_split.x_test[0])
        elapsed = time.monotonic() - start
        rt.close()
    assert result.source == "edge-degraded"
    assert result.label == local.label
    assert elapsed < PATIENT_MS / 1000 / 2  # a lost connection fails the call at once, not at its deadline


def test_a_silent_cloud_costs_the_deadline_and_no_more(broker, model_dir, digits_split):
    settings = MqttSettings.from_address(broker.address)
    listener = RequestLog(settings)  # receives the request and answers nothing
    try:
        with runtime(model_dir, settings, confidence_threshold=1.0, deadline_ms=500) as rt:
            start = time.monotonic()
            result = rt.predict(digits_split.x_test[:4])
            elapsed = time.monotonic() - start
        poll(lambda: len(listener.copies()) == 2, "the request and its one resend reached the broker")
        assert len(listener.seen()) == 1  # under one id
    finally:
        listener.close()
    assert set(result.sources) == {"edge-degraded"}
    assert elapsed >= 0.5 * 0.9  # it did wait for the cloud
    assert elapsed < 0.5 + PATIENCE_S  # and gave up: a bound, not a hang
    assert (result.labels == EdgeRuntime.from_model_dir(model_dir).predict(digits_split.x_test[:4]).labels).all()


def test_breaker_opens_after_failures_and_recovers(broker, service, model_dir, digits_split):
    from sdk.cloud.worker import InferenceWorker

    settings = MqttSettings.from_address(broker.address)
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=5.0, clock=clock)
    listener = RequestLog(settings)
    x = digits_split.x_test[0]
    try:
        with runtime(model_dir, settings, breaker, confidence_threshold=1.0, deadline_ms=150) as rt:
            for _ in range(2):  # nobody answers: two timeouts
                assert rt.predict(x).source == "edge-degraded"
            assert breaker.state == "open"
            assert rt.predict(x).source == "edge-degraded"  # open: answered locally, not sent
            with InferenceWorker({service.name: service}, settings):
                clock.now += 5.0
                assert breaker.state == "half-open"
                probe = rt.cloud.infer(service.name, x, timeout_s=PATIENCE_S)  # a probe with time to spare
                assert probe.kind == "reply"
                assert breaker.state == "closed"
            poll(lambda: probe.id.encode() in listener.seen(), "the probe reached the listener")
            # One publisher's messages arrive in order: had the open breaker let a request out, it would
            # stand between the two failures and the probe.
            sent = listener.seen()
            assert len(sent) == 3
            assert sent[-1] == probe.id.encode()
    finally:
        listener.close()


def test_cloud_first_prefers_the_cloud_and_degrades(broker, service, model_dir, digits_split):
    from sdk.cloud.worker import InferenceWorker

    settings = MqttSettings.from_address(broker.address)
    with runtime(model_dir, settings, fallback="cloud-first", deadline_ms=PATIENT_MS) as rt:
        with InferenceWorker({service.name: service}, settings):
            result = rt.predict(digits_split.x_test[:3])
            assert set(result.sources) == {"cloud"}
        broker.stop()
        assert set(rt.predict(digits_split.x_test[:3]).sources) == {"edge-degraded"}


def test_cloud_only_raises_when_the_cloud_cannot_answer(broker, model_dir, digits_split):
    settings = MqttSettings.from_address(broker.address)
    with runtime(model_dir, settings, fallback="cloud-only", deadline_ms=150) as rt, pytest.raises(CloudError):
        rt.predict(digits_split.x_test[0])


def test_edge_only_never_asks(cloud, model_dir, digits_split):
    with runtime(model_dir, cloud.settings, fallback="edge-only", confidence_threshold=1.0) as rt:
        assert set(rt.predict(digits_split.x_test[:20]).sources) == {"edge"}


def test_without_a_local_model_the_cloud_answers(cloud, digits_split, fp32):
    client = CloudClient(cloud.settings, device_id="no-model").start(wait=True)
    config = EdgeConfig(model_name=cloud.service.name, deadline_ms=PATIENT_MS)
    with EdgeRuntime(None, config, cloud=client) as rt:
        one = rt.predict(digits_split.x_test[0])
        batch = rt.predict(digits_split.x_test[:3])
        with pytest.raises(ModelNotFound):
            _ = rt.manifest
    assert one.source == "cloud"
    assert one.label == fp32.predict(digits_split.x_test[0]).label
    assert batch.sources == ("cloud",) * 3
    assert batch.model_version == cloud.service.manifest.version


def test_a_local_engine_failure_goes_to_the_cloud(cloud, model_dir, digits_split, fp32):
    engine = FakeBackend(error=BackendError("injected engine failure"))
    x = digits_split.x_test[0]
    with faked_runtime(model_dir, engine, cloud.settings, deadline_ms=PATIENT_MS) as rt:
        result = rt.predict(x)
        assert (len(engine.batches), rt.local_calls, rt.local_errors, rt.local_error_run) == (1, 1, 1, 1)
    assert result.source == "cloud"
    assert result.label == fp32.predict(x).label


def test_edge_only_raises_an_engine_failure_and_serves_again_once_it_passes(model_dir, digits_split):
    engine = FakeBackend(error=BackendError("injected engine failure"))
    with faked_runtime(model_dir, engine) as rt:
        with pytest.raises(BackendError, match="injected"):
            rt.predict(digits_split.x_test[0])
        engine.error, engine.outputs = None, logits([3], [0.9])
        result = rt.predict(digits_split.x_test[0])
        assert (rt.local_calls, rt.local_errors, rt.local_error_run) == (2, 1, 0)
    assert (result.source, result.label) == ("edge", 3)
    assert result.confidence == pytest.approx(0.9)


def test_the_rows_below_the_threshold_and_only_they_get_the_clouds_answer(cloud, model_dir, digits_split, fp32):
    x = digits_split.x_test[:4]
    engine = FakeBackend(logits([1, 2, 3, 4], [0.95, 0.3, 0.97, 0.2]))
    with faked_runtime(model_dir, engine, cloud.settings, confidence_threshold=0.5, deadline_ms=PATIENT_MS) as rt:
        result = rt.predict(x)
    assert result.sources == ("edge", "cloud", "edge", "cloud")
    np.testing.assert_array_equal(result.outputs[[0, 2]], engine.outputs[[0, 2]])
    np.testing.assert_allclose(result.outputs[[1, 3]], fp32.predict(x[[1, 3]]).outputs, rtol=1e-4, atol=1e-4)
    assert result.labels[[0, 2]].tolist() == [1, 3]
    np.testing.assert_allclose(result.confidences[[0, 2]], [0.95, 0.97], rtol=1e-5)


def test_a_local_call_that_spends_the_deadline_leaves_the_cloud_unasked(cloud, model_dir, digits_split):
    clock = ManualClock()
    engine = FakeBackend(logits([7, 7], [0.3, 0.9]), clock=clock, takes_s=0.25)  # of a 0.2 s deadline
    listener = RequestLog(cloud.settings)
    try:
        with faked_runtime(
            model_dir, engine, cloud.settings, clock=clock, confidence_threshold=0.5, deadline_ms=200
        ) as rt:
            result = rt.predict(digits_split.x_test[:2])
            probe = rt.cloud.infer(cloud.service.name, digits_split.x_test[0], timeout_s=PATIENCE_S)
        poll(lambda: probe.id.encode() in listener.seen(), "the probe reached the listener")
        # One publisher's messages arrive in order: a request sent by the call would stand before the probe.
        assert listener.seen() == [probe.id.encode()]
    finally:
        listener.close()
    assert result.sources == ("edge-degraded", "edge")
    assert result.latency_ms == pytest.approx(250.0)  # read from the injected clock


def test_cloud_first_leaves_the_engine_alone_while_the_cloud_answers(cloud, model_dir, digits_split, fp32):
    engine = FakeBackend(error=BackendError("the engine must not be asked"))
    with faked_runtime(model_dir, engine, cloud.settings, fallback="cloud-first", deadline_ms=PATIENT_MS) as rt:
        result = rt.predict(digits_split.x_test[:3])
    assert result.sources == ("cloud",) * 3
    assert result.labels.tolist() == fp32.predict(digits_split.x_test[:3]).labels.tolist()
    assert engine.batches == []


def test_cache_answers_repeated_inputs_without_the_cloud(cloud, model_dir, digits_split):
    with runtime(model_dir, cloud.settings, confidence_threshold=1.0, cache_size=8, deadline_ms=PATIENT_MS) as rt:
        first = rt.predict(digits_split.x_test[0])
        before = sum(w.answered for w in cloud.workers)
        second = rt.predict(digits_split.x_test[0])
        assert sum(w.answered for w in cloud.workers) == before
    assert rt.cache.hits == 1
    assert first.source == second.source == "cloud"
    np.testing.assert_array_equal(first.outputs, second.outputs)


def test_manifest_threshold_is_used_when_config_sets_none(cloud, model_copy):
    from sdk.manifest import load_manifest

    load_manifest(model_copy).with_threshold(0.93).write(model_copy)
    with runtime(model_copy, cloud.settings) as rt:
        assert rt.confidence_threshold == pytest.approx(0.93)
    with runtime(model_copy, cloud.settings, confidence_threshold=0.4) as rt:
        assert rt.confidence_threshold == pytest.approx(0.4)
