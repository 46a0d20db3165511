"""The cloud service's Prometheus metrics, kept by ``prometheus_client`` in a registry of their own.

Each :class:`Metrics` holds its own ``CollectorRegistry``, not the library's process-wide one,
so that several apps or workers in one process (tests, benchmarks, the demo) count apart.
``fedge cloud serve`` runs one uvicorn process (``uvicorn.run`` of an app object) and every
MQTT worker is a process of its own with its own ``/metrics`` port (:mod:`sdk.cloud.status_server`):
each process exposes its own counts and Prometheus adds them up, so the library's
multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) is not used.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS_S", "Metrics", "ServiceMetrics", "WorkerMetrics"]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """A registry of metrics rendered together, in the format a scraper asks for."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: OpenMetrics when ``accept`` asks for it, else text 0.0.4."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def value(self, name: str, **labels: str) -> float:
        """The current value of the sample ``name`` with ``labels`` (0 when it has none yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0


class ServiceMetrics(Metrics):
    """What the cloud service reports: requests, latency, batch sizes, queue depth."""

    def __init__(self) -> None:
        super().__init__()
        # Label names in alphabetical order: the series read as they did before this module used the library.
        self.requests = Counter(
            "fedge_requests_total",
            "Inference requests by transport, model and outcome.",
            ("model", "outcome", "transport"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "fedge_request_latency_seconds",
            "Time from arrival to answer, by transport and model.",
            ("model", "transport"),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fedge_batch_size",
            "Samples per batch run on the model, by model.",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "fedge_queue_depth", "Requests waiting in the batcher, by model.", ("model",), registry=self.registry
        )

        # Each label set's counter and histogram, looked up once: ``labels()`` costs more than the counting.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def count_request(self, transport: str, model: str, outcome: str, seconds: float) -> None:
        """Count one request's outcome and its time from arrival to answer."""
        key = (transport, model, outcome)
        series = self._series.get(key)
        if series is None:  # label values by position, in the order declared above
            series = self._series[key] = (
                self.requests.labels(model, outcome, transport),
                self.latency.labels(model, transport),
            )
        series[0].inc()
        series[1].observe(seconds)


class WorkerMetrics(ServiceMetrics):
    """An MQTT worker's metrics: the service's, and the requests it dropped, saw twice, and its loop restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = Counter(
            "fedge_worker_dropped_total",
            "Requests a worker dropped without an answer, by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.duplicates = Counter(
            "fedge_worker_duplicate_requests_total",
            "Repeated request ids, by what the first one was doing.",
            ("state",),
            registry=self.registry,
        )
        self.loop_errors = Counter(
            "fedge_worker_loop_errors_total",
            "Exceptions that escaped a callback of the MQTT network loop, which went on.",
            registry=self.registry,
        )
