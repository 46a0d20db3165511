"""Tracing across device, broker and cloud: one fallback is one trace, through a real broker, worker and batcher.

The spans are read from OpenTelemetry's in-memory exporter (in process) or from the JSON-lines trace file a
``fedge cloud worker`` process writes; the device and the worker in one process share one tracer provider.
"""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import uuid

import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from peers import RawRequester, subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics, tracing, wire
from sdk.cloud.app import create_app
from sdk.cloud.inference import InferenceService
from sdk.cloud.server import BackgroundServer
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.cloud_client import CloudClient
from sdk.errors import ConfigError
from sdk.mqtt import MqttSettings, publish_properties

PATIENT_MS = PATIENCE_S * 1000
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    """Tracing on for the test, every span kept in memory; off again after it."""
    exporter = InMemorySpanExporter()
    assert tracing.configure(exporters=[exporter])
    yield exporter
    tracing.shutdown()


def device(settings: MqttSettings, model_dir, *, deadline_ms: float = PATIENT_MS, **config) -> EdgeRuntime:
    """A device runtime whose every answer comes from the cloud (no local row is confident enough)."""
    client = CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:8]}").start(wait=True)
    config = EdgeConfig(confidence_threshold=1.0, deadline_ms=deadline_ms, **config)
    return EdgeRuntime.from_model_dir(model_dir, config, cloud=client)


def named(exporter: InMemorySpanExporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_one_fallback_is_one_trace_of_device_worker_and_batch_spans(cloud, model_dir, digits_split, spans):
    with device(cloud.settings, model_dir) as rt:
        result = rt.predict(digits_split.x_test[0])
    assert result.source == "cloud"
    (predict,) = named(spans, "predict")
    (process,) = named(spans, f"process {topics.infer('digits')}")
    (batch,) = named(spans, "batch")
    trace_id = predict.context.trace_id
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {trace_id}
    assert predict.parent is None
    assert process.parent.span_id == predict.context.span_id
    assert batch.parent.span_id == process.context.span_id
    assert [link.context.span_id for link in batch.links] == [process.context.span_id]
    assert predict.attributes["fedge.source"] == "cloud"
    assert predict.attributes["fedge.latency_ms"] == result.latency_ms
    assert predict.attributes["fedge.model_version"] == result.model_version
    assert predict.attributes["fedge.rows"] == 1
    assert process.attributes["messaging.system"] == "mqtt"
    assert process.attributes["fedge.outcome"] == "ok"
    assert process.attributes["messaging.consumer.group.name"] in {w.worker_id for w in cloud.workers}
    assert batch.attributes["fedge.batch.size"] == 1


def test_a_local_answer_is_one_device_span_and_sends_nothing(cloud, model_dir, digits_split, spans):
    with device(cloud.settings, model_dir, fallback="edge-only") as rt:
        result = rt.predict(digits_split.x_test[:3])
    (predict,) = spans.get_finished_spans()
    assert predict.attributes["fedge.source"] == "edge"
    assert predict.attributes["fedge.rows"] == 3
    assert predict.attributes["fedge.latency_ms"] == result.latency_ms


def test_a_batch_span_links_every_request_it_carried(model_dir, gated, spans):
    # Fault injection: the first batch is held on the model (gated) so that the next two queue and leave together.
    svc = gated(InferenceService.from_model_dir(model_dir))
    x = np.zeros((1, 8, 8), np.float32)
    try:
        with tracing.predict_span("first") as first:
            held, _ = svc.submit(x)
        assert svc.busy.wait(PATIENCE_S)
        with tracing.predict_span("second") as second:
            a, _ = svc.submit(x)
        with tracing.predict_span("third") as third:
            b, _ = svc.submit(x)
        svc.gate.set()
        for future in (held, a, b):
            future.result(PATIENCE_S)
    finally:
        svc.close()
    batches = sorted(named(spans, "batch"), key=lambda s: s.start_time)
    assert [s.attributes["fedge.batch.size"] for s in batches] == [1, 2]
    assert [link.context.span_id for link in batches[0].links] == [first.get_span_context().span_id]
    assert [link.context.span_id for link in batches[1].links] == [
        second.get_span_context().span_id,
        third.get_span_context().span_id,
    ]
    assert batches[1].parent.span_id == second.get_span_context().span_id


@pytest.mark.parametrize(
    "traceparent",
    [
        pytest.param("garbage", id="not-a-traceparent"),
        pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01-" + "x" * 300, id="trailing-junk"),
    ],
)
def test_a_malformed_traceparent_is_ignored_and_counted(cloud, spans, traceparent):
    requester = RawRequester(cloud.settings)
    before = tracing.malformed_contexts()
    try:
        request = wire.request("digits", np.zeros((1, 8, 8), np.float32))
        props = _request_properties(requester, request.id.encode(), traceparent)
        requester.client.publish(topics.infer("digits"), wire.encode(request), qos=1, properties=props)
        reply = requester.wait(request.id.encode())
    finally:
        requester.close()
    assert reply.kind == "reply"
    assert tracing.malformed_contexts() == before + 1
    (process,) = poll(lambda: named(spans, f"process {topics.infer('digits')}"), "the worker's span")
    assert process.parent is None  # a trace of its own
    assert format(process.context.trace_id, "032x") != TRACE_ID


def test_http_traceparent_continues_the_callers_trace(service, spans):
    with BackgroundServer(create_app({service.name: service})) as server:
        response = httpx.post(
            f"{server.url}/v1/models/digits/predict",
            json={"inputs": [[[0.0] * 8] * 8]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            timeout=PATIENCE_S,
        )
    assert response.status_code == 200
    (http,) = named(spans, "POST")
    (batch,) = named(spans, "batch")
    assert format(http.context.trace_id, "032x") == TRACE_ID
    assert format(http.parent.span_id, "016x") == PARENT_ID
    assert http.attributes["http.response.status_code"] == 200
    assert batch.parent.span_id == http.context.span_id


def test_tracing_off_sends_no_trace_context(cloud, model_dir, digits_split):
    assert not tracing.active()
    seen = []

    def heard(client, userdata, msg):
        seen.append(getattr(msg.properties, "UserProperty", None))

    listener = subscribed_client(cloud.settings, topics.infer("digits"), heard)  # beside the workers' shared one
    try:
        with device(cloud.settings, model_dir) as rt:
            assert rt.predict(digits_split.x_test[0]).source == "cloud"
        poll(lambda: seen, "the device's request")
    finally:
        listener.disconnect()
        listener.loop_stop()
    assert seen == [None]


def test_worker_process_writes_its_spans_to_the_trace_file(broker, model_dir, digits_split, tmp_path, spans):
    trace_file = tmp_path / "worker-traces.jsonl"
    config = tmp_path / "fedge.toml"
    config.write_text(f'[telemetry]\ntrace_file = "{trace_file}"\n', encoding="utf-8")
    args = ["cloud", "worker", "-m", str(model_dir), "--broker", broker.address, "--config", str(config)]
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "sdk.cli", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        settings = MqttSettings.from_address(broker.address)
        with device(settings, model_dir, deadline_ms=2000) as rt:  # short: the first calls may find no worker yet
            result = poll(lambda: _cloud_answer(rt, digits_split.x_test[0], worker), "an answer from the worker")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(PATIENCE_S) == 0, (tmp_path / "worker.log").read_text()
    lines = [json.loads(line) for line in trace_file.read_text(encoding="utf-8").splitlines()]
    predict = [s for s in named(spans, "predict") if s.attributes["fedge.source"] == "cloud"][-1]
    trace_id = f"0x{predict.context.trace_id:032x}"
    ours = [s for s in lines if s["context"]["trace_id"] == trace_id]
    (process,) = [s for s in ours if s["name"].startswith("process ")]
    (batch,) = [s for s in ours if s["name"] == "batch"]
    assert process["parent_id"] == f"0x{predict.context.span_id:016x}"
    assert batch["parent_id"] == process["context"]["span_id"]
    assert process["resource"]["attributes"]["service.name"] == "fedge-worker"
    assert result.source == "cloud"


def test_settings_name_the_bad_key(tmp_path):
    config = tmp_path / "fedge.toml"
    config.write_text('[telemetry]\notlp_endpoint = "collector:4318"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint"):
        tracing.TracingSettings.load(config)
    with pytest.raises(ConfigError, match=r"telemetry\.trace_fil"):
        tracing.TracingSettings.load(env={"FEDGE_TELEMETRY__TRACE_FIL": "x"})
    assert not tracing.configure(tracing.TracingSettings())  # nothing to export to: off
    assert not tracing.active()


def _cloud_answer(rt: EdgeRuntime, x: np.ndarray, worker: subprocess.Popen):
    assert worker.poll() is None, "the worker process exited"
    result = rt.predict(x)
    return result if result.source == "cloud" else None


def _request_properties(requester: RawRequester, key: bytes, traceparent: str):
    props = publish_properties(response_topic=requester.reply_topic, correlation=key)
    props.UserProperty = [("traceparent", traceparent)]
    return props


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each body posted to /v1/traces."""

    bodies: list[bytes]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.server.bodies.append(body)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_endpoint_receives_the_spans(model_dir, digits_split):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # a bare address: the exporter posts to /v1/traces
        settings = tracing.TracingSettings(otlp_endpoint=endpoint)
        with tracing.configured(settings, service_name="fedge-device"), EdgeRuntime.from_model_dir(model_dir) as rt:
            rt.predict(digits_split.x_test[0])
        # leaving the block shut tracing down, which exported what was queued before it returned
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    (body,) = server.bodies
    request = ExportTraceServiceRequest.FromString(body)
    (resource,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    names = [span.name for scope in resource.scope_spans for span in scope.spans]
    assert (service, names) == ("fedge-device", ["predict"])
