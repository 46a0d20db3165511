"""Counters, histograms and gauges rendered in the Prometheus text format (``GET /metrics``).

Small on purpose: the cloud service needs three metric types and one exposition
format, not a client library. Every metric is thread-safe; labels are given as
keyword arguments in a fixed order per metric.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "ServiceMetrics"]

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(values: dict[str, str]) -> Labels:
    return tuple(sorted(values.items()))


def _format_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self._lock = threading.Lock()

    def _header(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"

    def _lines(self) -> Iterator[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A value that only goes up, per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` for this label set."""
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value for this label set."""
        with self._lock:
            return self._values.get(_labels(labels), 0.0)

    def _lines(self) -> Iterator[str]:
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_format_labels(labels)} {_number(value)}"


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list[float]] = {}  # per bucket counts, then +Inf, sum

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation."""
        key = _labels(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            series[index] += 1
            series[-1] += value

    def count(self, **labels: str) -> int:
        """Observations for this label set."""
        with self._lock:
            series = self._series.get(_labels(labels))
            return int(sum(series[:-1])) if series else 0

    def _lines(self) -> Iterator[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for labels, series in items:
            running = 0.0
            for bound, n in zip((*self.buckets, math.inf), series[:-1], strict=True):
                running += n
                yield f"{self.name}_bucket{_format_labels(labels, ('le', _number(bound)))} {_number(running)}"
            yield f"{self.name}_sum{_format_labels(labels)} {_number(series[-1])}"
            yield f"{self.name}_count{_format_labels(labels)} {_number(running)}"


class Gauge(_Metric):
    """A value read when the metrics are rendered, per label set."""

    kind = "gauge"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._readers: dict[Labels, Callable[[], float]] = {}

    def track(self, reader: Callable[[], float], **labels: str) -> None:
        """Read ``reader()`` for this label set at every render."""
        with self._lock:
            self._readers[_labels(labels)] = reader

    def _lines(self) -> Iterator[str]:
        with self._lock:
            items = sorted(self._readers.items())
        for labels, reader in items:
            yield f"{self.name}{_format_labels(labels)} {_number(reader())}"


M = TypeVar("M", bound=_Metric)


class Metrics:
    """A set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: M) -> M:
        """Register ``metric`` for rendering and return it."""
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        out: list[str] = []
        for metric in self._metrics:
            out.extend(metric._header())
            out.extend(metric._lines())
        return "\n".join(out) + "\n"


class ServiceMetrics(Metrics):
    """What the cloud service reports: requests, latency, batch sizes, queue depth."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = self.add(Counter("fedge_requests_total", "Inference requests by transport, model and outcome."))
        self.latency = self.add(
            Histogram(
                "fedge_request_latency_seconds",
                "Time from arrival to answer, by transport and model.",
                LATENCY_BUCKETS_S,
            )
        )
        self.batch_size = self.add(
            Histogram("fedge_batch_size", "Samples per batch run on the model, by model.", BATCH_BUCKETS)
        )
        self.queue_depth = self.add(Gauge("fedge_queue_depth", "Requests waiting in the batcher, by model."))
