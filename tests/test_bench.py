"""The transport benchmarks still run end to end (figures are not asserted: speed lives in bench/, not tests)."""

import time

from bench import fallback, http
from bench.harness import Progress


def test_fallback_benchmark_produces_its_figures():
    report = fallback.run(rounds=20, warmup=2, step=Progress(time.time()))
    assert report["rtt_ratio_p50"] > 0
    assert report["rounds"] == 20
    assert set(report["meets_targets"]) == {"rtt_ratio_p50", "rtt_ratio_p99"}


def test_http_benchmark_produces_its_figures():
    report = http.run(seconds=0.5, rounds=1, step=Progress(time.time()))
    assert report["predict_rps"] > 0
    assert report["echo_rps"] > 0


def test_ota_benchmark_produces_its_figures():
    from bench import ota

    report = ota.run(devices=3, step=Progress(time.time()))
    assert report["devices"] == 3
    assert report["bytes_per_release_file_ratio"] >= 1.0
