"""The fleet's gauges on ``/metrics``: a real registry on SQLite behind uvicorn, scraped and parsed as Prometheus does.

Devices report through the registry's own status path (:meth:`Registry.record_status`), their
telemetry windows made by the device's own :class:`~sdk.edge.telemetry.Telemetry`.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from sdk.cloud.app import create_app
from sdk.cloud.registry import Registry
from sdk.cloud.rollout_policy import RolloutPolicies, RolloutPolicy
from sdk.cloud.rollout_store import RolloutStore
from sdk.cloud.server import BackgroundServer
from sdk.edge.telemetry import Telemetry


@pytest.fixture
def cloud(tmp_path, repo, versions):
    """digits v1 released to every device and v2 registered; yields (registry, rollouts, server)."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    for version in (1, 2):
        registry.add_version(versions(version))
    registry.release("digits", 1)
    rollouts = RolloutStore(registry, RolloutPolicies(default=RolloutPolicy(stages=(10, 50, 100))))
    try:
        with BackgroundServer(create_app({}, registry=registry, rollouts=rollouts)) as server:
            yield registry, rollouts, server
    finally:
        registry.close()


def report(registry: Registry, device_id: str, version: int, *, rows: int, fallbacks: int) -> None:
    """``device_id`` says it runs ``version`` and served ``rows`` rows on it, ``fallbacks`` of them by the cloud."""
    telemetry = Telemetry()
    for i in range(rows):
        telemetry.record(version, 0.5, fallbacks=int(i < fallbacks), confidence_sum=0.9, confident_rows=1)
    event = {"model": "digits", "step": "healthy", "installed_version": version, "telemetry": telemetry.take()}
    assert registry.record_status(event, device_id=device_id) is None


def scrape(server: BackgroundServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and sorted labels."""
    answer = httpx.get(f"{server.url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def gauge(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_fleet_gauges_follow_what_devices_report_and_the_rollout_stage(cloud):
    registry, rollouts, server = cloud
    report(registry, "pi-a", 1, rows=10, fallbacks=1)
    report(registry, "pi-b", 1, rows=30, fallbacks=3)

    before = scrape(server)

    assert gauge(before, "fedge_fleet_devices", model="digits", version="1") == 2
    assert gauge(before, "fedge_fleet_devices", model="digits", version="2") is None
    assert gauge(before, "fedge_fleet_fallback_rate", model="digits") == pytest.approx(4 / 40)
    assert not [key for key in before if key[0].startswith("fedge_rollout_")]  # nothing staged yet

    rollouts.start("digits", 2)
    report(registry, "pi-a", 2, rows=20, fallbacks=16)

    after = scrape(server)

    assert gauge(after, "fedge_fleet_devices", model="digits", version="1") == 1
    assert gauge(after, "fedge_fleet_devices", model="digits", version="2") == 1
    assert gauge(after, "fedge_fleet_fallback_rate", model="digits") == pytest.approx(20 / 60)
    assert gauge(after, "fedge_rollout_stage", model="digits", version="2") == 0
    assert gauge(after, "fedge_rollout_percent", model="digits", version="2") == 10
    assert gauge(after, "fedge_fleet_collect_errors_total") == 0


def test_a_failing_fleet_query_is_counted_and_the_service_metrics_are_still_served(cloud, caplog):
    registry, _, server = cloud
    report(registry, "pi-a", 1, rows=10, fallbacks=1)
    with registry.engine.begin() as connection:  # the fault: the database loses the fleet's table
        connection.execute(text("DROP TABLE devices"))

    answer = httpx.get(f"{server.url}/metrics")

    assert answer.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert {"fedge_requests", "fedge_request_latency_seconds", "fedge_queue_depth"} <= set(families)
    assert "fedge_fleet_devices" not in families
    assert [s.value for s in families["fedge_fleet_collect_errors"].samples] == [1]
    assert "could not read the fleet's metrics" in caplog.text
