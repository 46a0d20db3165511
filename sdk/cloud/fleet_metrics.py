"""The fleet's gauges on ``/metrics``, read from the registry at every scrape.

- ``fedge_fleet_devices{model,version}``: devices by the version they last said they run (``none``: not yet told);
- ``fedge_fleet_fallback_rate{model}``: the share of rows the fleet's devices sent to the cloud, over all
  the telemetry they reported (as ``GET /v1/registry/telemetry`` sums it);
- ``fedge_rollout_stage{model,version}`` and ``fedge_rollout_percent{model,version}``: each running staged
  rollout's stage (0-based, as ``GET /v1/registry/rollouts/...`` says it) and the share of the fleet its release admits;
- ``fedge_fleet_collect_errors_total``: scrapes whose registry queries failed (they are logged; the rest is served).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sdk.cloud.registry import Registry
from sdk.cloud.rollout_store import RolloutStore

__all__ = ["FleetCollector"]

log = logging.getLogger("fedge.cloud.metrics")


class FleetCollector(Collector):
    """Yields the fleet's gauges from ``registry`` and ``rollouts`` whenever the metrics are rendered."""

    def __init__(self, registry: Registry, rollouts: RolloutStore) -> None:
        self.registry = registry
        self.rollouts = rollouts
        self.failures = 0
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """The families, without samples: registering checks their names without querying the database."""
        return [*_families(), _errors(0)]

    def collect(self) -> Iterator[Metric]:
        """The families with the registry's current values, and the count of failed collections."""
        try:
            families = self._read()
        except Exception:
            # One boundary for the scrape: a failing database costs the fleet's gauges, not the service's metrics.
            with self._lock:
                self.failures += 1
            log.exception("could not read the fleet's metrics from the registry")
            families = []
        yield from families
        yield _errors(self.failures)

    def _read(self) -> list[Metric]:
        devices, fallback_rate, stage, percent = _families()
        counts: dict[tuple[str, str], int] = {}
        for device in self.registry.fleet():
            version = device["running_version"]
            key = (device["model"] or "none", "none" if version is None else str(version))
            counts[key] = counts.get(key, 0) + 1
        for (model, version), n in sorted(counts.items()):
            devices.add_metric([model, version], n)
        served: dict[str, tuple[int, int]] = {}
        for entry in self.registry.telemetry():
            fallbacks, rows = served.get(entry["model"], (0, 0))
            served[entry["model"]] = (fallbacks + entry["fallbacks"], rows + entry["rows"])
        for model, (fallbacks, rows) in sorted(served.items()):
            fallback_rate.add_metric([model], fallbacks / rows if rows else 0.0)
        releases = {(r["model"], r["version"]): r for r in self.registry.releases()}
        for record in self.rollouts.running():
            labels = [record.model, str(record.version)]
            stage.add_metric(labels, record.stage)
            release = releases.get((record.model, record.version))
            if release is not None:
                percent.add_metric(labels, release["rollout"])
        return [devices, fallback_rate, stage, percent]


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "fedge_fleet_devices", "Devices by model and the version they run.", labels=("model", "version")
        ),
        GaugeMetricFamily(
            "fedge_fleet_fallback_rate",
            "Share of the rows a model's devices served that went to the cloud, over all reported telemetry.",
            labels=("model",),
        ),
        GaugeMetricFamily(
            "fedge_rollout_stage", "Stage of each running staged rollout (0-based).", labels=("model", "version")
        ),
        GaugeMetricFamily(
            "fedge_rollout_percent",
            "Percent of the fleet the release of each running staged rollout admits.",
            labels=("model", "version"),
        ),
    )


def _errors(count: int) -> CounterMetricFamily:
    return CounterMetricFamily(
        "fedge_fleet_collect_errors", "Scrapes whose fleet queries failed (logged).", value=count
    )
