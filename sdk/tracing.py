"""OpenTelemetry tracing across device, broker and cloud: off (and free) until :func:`configure` turns it on.

```toml
[telemetry]
otlp_endpoint = "http://collector:4318"   # OTLP over HTTP/protobuf; a bare address gets /v1/traces
trace_file = "/var/log/fedge/traces.jsonl"  # one span per line, as JSON
service_name = "fedge-device"             # else the role's: fedge-device, fedge-worker, fedge-cloud
```

One call of ``EdgeRuntime.predict`` is one ``predict`` span on the device. A request it sends to
the cloud carries the span's W3C trace context as MQTT v5 user properties ``traceparent`` and
``tracestate`` (the W3C "Trace Context: MQTT" draft); the worker continues the trace with a
``process <topic>`` span (OpenTelemetry's messaging conventions), and the batch that ran the
request is a ``batch`` span with its size, linked to every request it carried and parented by
the first one's. The HTTP endpoint takes ``traceparent`` and ``tracestate`` headers the same way.
A malformed context is ignored (the request starts a trace of its own) and counted
(:func:`malformed_contexts`).

The OpenTelemetry API and SDK are optional (the ``tracing`` extra) and imported by
:func:`configure` only: without it every function here returns at its first line, so importing
``sdk.edge`` and serving stay what they were. Spans are exported in the background
(``BatchSpanProcessor``); a full export queue drops spans rather than slow a call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from sdk.config import check, load_section
from sdk.errors import ConfigError

__all__ = [
    "TRACE_HEADERS",
    "TracingSettings",
    "active",
    "batch_span",
    "configure",
    "configured",
    "current_span",
    "end_span",
    "inject",
    "malformed_contexts",
    "predict_span",
    "process_span",
    "record_http_status",
    "record_prediction",
    "server_span",
    "shutdown",
]

log = logging.getLogger("fedge.tracing")

#: The W3C Trace Context fields, as MQTT v5 user properties and as HTTP headers.
TRACE_HEADERS = ("traceparent", "tracestate")

_INSTRUMENTATION = "fedge"

# Set by configure(), cleared by shutdown(): every helper below starts by reading _tracer.
_tracer: Any = None
_provider: Any = None
_otel: Any = None  # the opentelemetry names the helpers use, imported by configure
_files: list[IO[str]] = []
_malformed = 0
_malformed_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class TracingSettings:
    """Where spans go (``[telemetry]`` table): nowhere by default, OTLP over HTTP, a JSON-lines file, or both."""

    otlp_endpoint: str = ""
    trace_file: Path | None = None
    service_name: str = ""

    def __post_init__(self) -> None:
        if self.otlp_endpoint:
            parts = urlsplit(self.otlp_endpoint)
            check(
                parts.scheme in ("http", "https") and bool(parts.netloc),
                "otlp_endpoint",
                f"expected an http(s):// URL, got {self.otlp_endpoint!r}",
            )

    @property
    def exporting(self) -> bool:
        """Whether these settings send spans anywhere."""
        return bool(self.otlp_endpoint) or self.trace_file is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> TracingSettings:
        """Load ``[telemetry]`` from a TOML file and ``FEDGE_TELEMETRY__*`` environment variables."""
        return load_section(cls, "telemetry", path, env)


def configure(
    settings: TracingSettings | None = None, *, service_name: str = "fedge", exporters: Sequence[Any] = ()
) -> bool:
    """Turn tracing on for this process with the exporters ``settings`` name; return whether it is on.

    ``exporters`` are more ``SpanExporter`` objects, each exporting every span as it ends (an
    in-memory one in tests). Nothing to export to leaves tracing off. Configuring again replaces
    the previous set-up (which is shut down first).

    Raises:
        ConfigError: spans should be exported but the OpenTelemetry SDK (or, for ``otlp_endpoint``,
            its OTLP exporter) is not installed.
    """
    global _tracer, _provider, _otel
    shutdown()
    settings = settings or TracingSettings()
    if not settings.exporting and not exporters:
        return False
    try:
        import opentelemetry.trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        key = "telemetry.otlp_endpoint" if settings.otlp_endpoint else "telemetry.trace_file"
        raise ConfigError(key, f"needs opentelemetry-sdk (the 'tracing' extra): {exc}") from None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name or service_name}))
    if settings.otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings.otlp_endpoint)))
    if settings.trace_file is not None:
        settings.trace_file.parent.mkdir(parents=True, exist_ok=True)
        out = settings.trace_file.open("a", encoding="utf-8")
        _files.append(out)
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _otel = _Otel(opentelemetry.trace, TraceContextTextMapPropagator())
    _provider = provider
    _tracer = provider.get_tracer(_INSTRUMENTATION)
    return True


@contextlib.contextmanager
def configured(settings: TracingSettings, *, service_name: str) -> Iterator[bool]:
    """:func:`configure` for the block (yielding whether tracing is on), then :func:`shutdown`."""
    try:
        yield configure(settings, service_name=service_name)
    finally:
        shutdown()


def shutdown() -> None:
    """Export what is left and turn tracing off (a no-op when it is off)."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        provider.shutdown()
    while _files:
        _files.pop().close()


def active() -> bool:
    """Whether tracing is on in this process."""
    return _tracer is not None


def malformed_contexts() -> int:
    """Incoming trace contexts ignored because they were malformed, since the process started."""
    return _malformed


def predict_span(model: str) -> contextlib.AbstractContextManager[Any]:
    """The device's span of one ``predict`` call, current while it runs (None when off)."""
    tracer = _tracer  # one read: another thread may turn tracing off meanwhile
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span("predict", attributes={"fedge.model": model})


def record_prediction(
    span: Any, *, sources: Sequence[str], latency_ms: float, model_version: int | None, rows: int
) -> None:
    """Write what a ``predict`` call answered on its span: where the rows came from, how long it took."""
    if span is None:
        return
    attributes: dict[str, Any] = {
        "fedge.source": sources[0] if len(set(sources)) == 1 else "mixed",
        "fedge.rows": rows,
        "fedge.cloud_rows": sources.count("cloud"),
        "fedge.latency_ms": latency_ms,
    }
    if model_version is not None:
        attributes["fedge.model_version"] = model_version
    span.set_attributes(attributes)


def inject(props: Any) -> None:
    """Add the current span's trace context to MQTT v5 PUBLISH ``props`` as user properties (if tracing)."""
    if _tracer is None:
        return
    carrier: dict[str, str] = {}
    _otel.propagator.inject(carrier)
    if carrier:
        props.UserProperty = [(k, carrier[k]) for k in TRACE_HEADERS if k in carrier]


def process_span(props: Any, topic: str, correlation: bytes, worker: str) -> Any:
    """A started worker span for a request that came with MQTT ``props``, continuing its trace; None when off."""
    tracer = _tracer
    if tracer is None:
        return None
    pairs = getattr(props, "UserProperty", None) or ()
    parent = _extract({k: v for k, v in pairs if k in TRACE_HEADERS}, topic)
    return tracer.start_span(
        f"process {topic}",
        context=parent,
        kind=_otel.trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "mqtt",
            "messaging.operation.name": "process",
            "messaging.destination.name": topic,
            "messaging.message.conversation_id": correlation.decode("ascii", "replace"),
            "messaging.consumer.group.name": worker,
        },
    )


def server_span(headers: Mapping[str, str], method: str, path: str) -> contextlib.AbstractContextManager[Any]:
    """An HTTP server span, current while the request is answered, continuing a ``traceparent`` header's trace."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext()
    parent = _extract({k: headers[k] for k in TRACE_HEADERS if k in headers}, path)
    attributes = {"http.request.method": method, "url.path": path}
    return tracer.start_as_current_span(method, context=parent, kind=_otel.trace.SpanKind.SERVER, attributes=attributes)


def record_http_status(span: Any, status: int) -> None:
    """Write an HTTP answer's status on a :func:`server_span` (None: nothing to do); a 5xx marks it failed."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(_otel.trace.StatusCode.ERROR, str(status))


def current_span() -> Any:
    """The span being recorded on this thread or task, else None (always None when off)."""
    if _tracer is None:
        return None
    span = _otel.trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def batch_span(traces: Sequence[Any], samples: int) -> Any:
    """A started span for a batch of ``samples`` that carried requests whose spans are ``traces``; None when off.

    Linked to every request's span; its parent is the first traced request's, so that one request's
    trace shows the batch it rode in.
    """
    tracer = _tracer
    if tracer is None:
        return None
    spans = [s for s in traces if s is not None]
    parent = _otel.trace.set_span_in_context(spans[0]) if spans else None
    return tracer.start_span(
        "batch",
        context=parent,
        links=[_otel.trace.Link(s.get_span_context()) for s in spans],
        attributes={"fedge.batch.size": samples, "fedge.batch.requests": len(traces)},
    )


def end_span(span: Any, outcome: str = "ok") -> None:
    """End a span from :func:`process_span` or :func:`batch_span` (None: nothing to do), with its outcome.

    An outcome other than ``ok`` or ``duplicate`` (a repeated request, answered by the first) is an error's code.
    """
    if span is None:
        return
    span.set_attribute("fedge.outcome", outcome)
    if outcome not in ("ok", "duplicate"):
        span.set_status(_otel.trace.StatusCode.ERROR, outcome)
    span.end()


def _extract(carrier: dict[str, str], where: str) -> Any:
    """The parent context ``carrier`` names; None (a new trace) when it names none or a malformed one."""
    global _malformed
    if "traceparent" not in carrier:
        return None
    try:
        context = _otel.propagator.extract(carrier)
        valid = _otel.trace.get_current_span(context).get_span_context().is_valid
    except Exception:  # a stranger's header must not fail the request; the propagator should not raise anyway
        valid = False
    if valid:
        return context
    with _malformed_lock:
        _malformed += 1
    log.debug("ignored a malformed traceparent on %s: %.80r", where, carrier["traceparent"])
    return None


def _otlp_exporter(endpoint: str) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError("telemetry.otlp_endpoint", f"needs opentelemetry-exporter-otlp-proto-http: {exc}") from None
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


@dataclass(frozen=True)
class _Otel:
    """The OpenTelemetry modules the helpers use, once imported."""

    trace: Any
    propagator: Any
