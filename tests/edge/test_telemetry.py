"""The runtime's telemetry counters: windows, versions, rates and latency percentiles from the shared buckets."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.telemetry import Telemetry
from sdk.edge.updater import UpdateConfig
from sdk.errors import ConfigError, InputShapeError
from sdk.telemetry import LATENCY_BOUNDS_MS, MAX_VERSIONS, percentile


def test_percentiles_from_the_buckets_are_within_a_bucket_of_the_truth():
    telemetry = Telemetry()
    for ms in range(1, 1001):  # 1 ms .. 1 s
        telemetry.record(3, ms / 1.0)
    (entry,) = telemetry.take()["versions"]
    assert entry["calls"] == 1000
    assert 500 <= entry["p50_ms"] <= 500 * 2**0.25  # the bucket's upper bound: at most one bucket (19 %) high
    assert 990 <= entry["p99_ms"] <= 990 * 2**0.25
    assert percentile([0] * (len(LATENCY_BOUNDS_MS) + 1), 0.5) is None


def test_windows_split_by_version_and_start_empty():
    telemetry = Telemetry()
    telemetry.record(1, 0.5, rows=4, fallbacks=1, confidence_sum=3.0, confident_rows=4)
    telemetry.record(1, 0.5, error=True)
    telemetry.record(2, 0.7, confidence_sum=0.5, confident_rows=1)
    first = telemetry.take()
    v1, v2 = first["versions"]
    assert (v1["version"], v1["calls"], v1["errors"], v1["error_rate"]) == (1, 2, 1, 0.5)
    assert (v1["rows"], v1["fallbacks"], v1["fallback_rate"], v1["mean_confidence"]) == (5, 1, 0.2, 0.75)
    assert (v2["calls"], v2["mean_confidence"]) == (1, 0.5)
    assert sum(n for _, n in v1["latency"]) == 2
    second = telemetry.take()
    assert second["versions"] == []
    assert second["window"] != first["window"]
    for version in range(MAX_VERSIONS + 2):  # a window describes a bounded number of versions
        telemetry.record(version, 1.0)
    assert len(telemetry.take()["versions"]) == MAX_VERSIONS
    assert telemetry.overflow == 2


def test_the_runtime_counts_answers_and_not_bad_input(model_dir):
    telemetry = Telemetry()
    config = EdgeConfig(artifacts=("onnx-int8",))
    with EdgeRuntime.from_model_dir(model_dir, config, telemetry=telemetry) as rt:
        rng = np.random.default_rng(0)
        singles = [rt.predict(rng.random((1, 8, 8), dtype=np.float32)) for _ in range(5)]
        batch = rt.predict(rng.random((3, 1, 8, 8), dtype=np.float32))
        with pytest.raises(InputShapeError):
            rt.predict(np.zeros((2, 2), dtype=np.float32))  # the caller's fault, not the model's
        version = rt.manifest.version
    (entry,) = telemetry.take()["versions"]
    assert (entry["version"], entry["calls"], entry["rows"], entry["errors"]) == (version, 6, 8, 0)
    expected = (sum(p.confidence for p in singles) + float(batch.confidences.sum())) / 8
    assert entry["mean_confidence"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("value", [0, 0.5, 86_401])
def test_the_interval_is_validated_naming_its_key(value):
    with pytest.raises(ConfigError, match=r"update\.telemetry_interval_s"):
        UpdateConfig.load(
            env={
                "FEDGE_UPDATE__MODEL": "m",
                "FEDGE_UPDATE__DEVICE_ID": "d",
                "FEDGE_UPDATE__REPOSITORY_URL": "http://x",
                "FEDGE_UPDATE__TELEMETRY_INTERVAL_S": str(value),
            }
        )


def test_fallbacks_engine_failures_and_local_confidence_through_real_cloud_workers(
    cloud, model_dir, digits_split, monkeypatch
):
    from waiting import PATIENCE_S

    from sdk.edge.cloud_client import CloudClient
    from sdk.errors import BackendError

    samples = digits_split.x_test[:5]
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-int8",))) as alone:
        local = [alone.predict(x).confidence for x in samples[:4]]
    telemetry = Telemetry()
    client = CloudClient(cloud.settings, device_id="d-telemetry").start(wait=True)
    config = EdgeConfig(artifacts=("onnx-int8",), confidence_threshold=1.0, deadline_ms=PATIENCE_S * 1000)
    with EdgeRuntime.from_model_dir(model_dir, config, cloud=client, telemetry=telemetry) as rt:
        asked = [rt.predict(x) for x in samples[:4]]  # no answer is confident enough: each row goes to the cloud

        def broken(x):  # fault injection: a real engine does not fail on demand
            raise BackendError("injected engine failure")

        monkeypatch.setattr(rt.backend, "run", broken)
        stood_in = rt.predict(samples[4])
    assert [p.source for p in [*asked, stood_in]] == ["cloud"] * 5
    (entry,) = telemetry.take()["versions"]
    assert (entry["calls"], entry["errors"], entry["fallbacks"], entry["fallback_rate"]) == (5, 1, 5, 1.0)
    # The local model's confidence on the rows it ran, not the cloud's answers; the failed call ran none.
    assert entry["confident_rows"] == 4
    assert entry["mean_confidence"] == pytest.approx(sum(local) / 4, abs=1e-5)
