"""The fallback policy through a real broker and real workers: edge, cloud and degraded answers."""

import time
import uuid

import numpy as np
import pytest

from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.breaker import CircuitBreaker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import BackendError, CloudError, ModelNotFound
from sdk.mqtt import MqttSettings


def runtime(model_dir, settings, breaker=None, **config):
    client = CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:8]}", breaker=breaker).start(wait=True)
    return EdgeRuntime.from_model_dir(model_dir, EdgeConfig(**config), cloud=client)


@pytest.fixture(scope="module")
def fp32(model_dir):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as rt:
        yield rt


def test_low_confidence_rows_go_to_the_cloud_and_come_back_right(cloud, model_dir, digits_split, fp32):
    x = digits_split.x_test[:200]
    with EdgeRuntime.from_model_dir(model_dir) as local:
        conf = local.predict(x).confidences
    threshold = float(np.quantile(conf, 0.2))
    with runtime(model_dir, cloud.settings, confidence_threshold=threshold) as rt:
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


def test_cloud_down_gives_edge_degraded_within_the_deadline(broker, service, model_dir, digits_split):
    from sdk.cloud.worker import InferenceWorker

    settings = MqttSettings.from_address(broker.address)
    with InferenceWorker({service.name: service}, settings):
        rt = runtime(model_dir, settings, confidence_threshold=1.0, deadline_ms=300)
        assert rt.predict(digits_split.x_test[0]).source == "cloud"
        broker.stop()
        start = time.monotonic()
        result = rt.predict(digits_split.x_test[0])
        assert result.source == "edge-degraded"
        assert time.monotonic() - start < 0.3 + 0.5
        rt.close()


def test_a_silent_cloud_costs_at_most_the_deadline(broker, model_dir, digits_split):
    # A broker with no worker: the request is sent and never answered.
    settings = MqttSettings.from_address(broker.address)
    with runtime(model_dir, settings, confidence_threshold=1.0, deadline_ms=200) as rt:
        start = time.monotonic()
        result = rt.predict(digits_split.x_test[:4])
        elapsed = time.monotonic() - start
    assert set(result.sources) == {"edge-degraded"}
    assert 0.15 < elapsed < 0.2 + 0.5
    assert (result.labels == EdgeRuntime.from_model_dir(model_dir).predict(digits_split.x_test[:4]).labels).all()


def test_breaker_opens_after_failures_and_recovers(broker, service, model_dir, digits_split):
    from sdk.cloud.worker import InferenceWorker

    settings = MqttSettings.from_address(broker.address)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=0.5)
    with runtime(model_dir, settings, breaker, confidence_threshold=1.0, deadline_ms=150) as rt:
        for _ in range(2):  # nobody answers: two timeouts
            assert rt.predict(digits_split.x_test[0]).source == "edge-degraded"
        assert breaker.state == "open"
        start = time.monotonic()
        assert rt.predict(digits_split.x_test[0]).source == "edge-degraded"
        assert time.monotonic() - start < 0.1  # open: not even sent
        with InferenceWorker({service.name: service}, settings):
            time.sleep(0.6)
            assert breaker.state == "half-open"
            assert rt.predict(digits_split.x_test[0]).source == "cloud"
            assert breaker.state == "closed"


def test_cloud_first_prefers_the_cloud_and_degrades(broker, service, model_dir, digits_split):
    from sdk.cloud.worker import InferenceWorker

    settings = MqttSettings.from_address(broker.address)
    with runtime(model_dir, settings, fallback="cloud-first", deadline_ms=300) as rt:
        with InferenceWorker({service.name: service}, settings):
            result = rt.predict(digits_split.x_test[:3])
            assert set(result.sources) == {"cloud"}
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
    with EdgeRuntime(None, EdgeConfig(model_name=cloud.service.name), cloud=client) as rt:
        one = rt.predict(digits_split.x_test[0])
        batch = rt.predict(digits_split.x_test[:3])
        with pytest.raises(ModelNotFound):
            _ = rt.manifest
    assert one.source == "cloud"
    assert one.label == fp32.predict(digits_split.x_test[0]).label
    assert batch.sources == ("cloud",) * 3
    assert batch.model_version == cloud.service.manifest.version


def test_a_local_engine_failure_goes_to_the_cloud(cloud, model_dir, digits_split, monkeypatch):
    rt = runtime(model_dir, cloud.settings)

    def broken(x):  # fault injection: a real engine does not fail on demand
        raise BackendError("injected engine failure")

    monkeypatch.setattr(rt.backend, "run", broken)
    with rt:
        assert rt.predict(digits_split.x_test[0]).source == "cloud"


def test_cache_answers_repeated_inputs_without_the_cloud(cloud, model_dir, digits_split):
    with runtime(model_dir, cloud.settings, confidence_threshold=1.0, cache_size=8) as rt:
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
