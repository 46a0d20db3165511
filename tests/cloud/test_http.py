"""The HTTP endpoint through a real uvicorn server: routes, auth, errors, metrics, docs."""

import threading
import time

import httpx
import numpy as np
import pytest
from waiting import PATIENCE_S, poll

from sdk import wire
from sdk.cloud.app import create_app
from sdk.cloud.batching import BatcherConfig
from sdk.cloud.config import CloudConfig
from sdk.cloud.inference import InferenceService
from sdk.cloud.schemas import TENSOR_MEDIA_TYPE
from sdk.cloud.server import BackgroundServer
from sdk.edge import EdgeConfig, EdgeRuntime

KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def server(service):
    config = CloudConfig(api_keys=(KEY,), max_body_bytes=64 * 1024)
    with BackgroundServer(create_app({service.name: service}, config)) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=PATIENCE_S) as client:
        yield client


@pytest.fixture(scope="module")
def fp32(model_dir):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as rt:
        yield rt


def test_health_and_readiness_need_no_key(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == ["digits"]


def test_v1_routes_need_the_key(server):
    for headers in ({}, {"X-API-Key": "wrong-key-0123456789abcdef"}):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    response = httpx.post(f"{server.url}/v1/models/digits/predict", json={"inputs": [[[0.0] * 8] * 8]})
    assert response.status_code == 401


def test_list_models(http, service):
    (model,) = http.get("/v1/models").json()
    assert model["name"] == "digits"
    assert model["version"] == service.manifest.version
    assert model["input"]["shape"] == [-1, 1, 8, 8]


def test_json_predict_matches_the_fp32_model(http, digits_split, fp32):
    x = digits_split.x_test[:5]
    body = http.post("/v1/models/digits/predict", json={"inputs": x.tolist()}).json()
    expected = fp32.predict(x)
    np.testing.assert_allclose(body["outputs"], expected.outputs, rtol=1e-4, atol=1e-4)
    assert body["labels"] == expected.labels.tolist()
    one = http.post("/v1/models/digits/predict", json={"inputs": x[0].tolist(), "priority": 3}).json()
    assert one["labels"] == [expected.labels[0]]


def test_binary_predict_speaks_the_wire_format(http, digits_split, fp32):
    x = digits_split.x_test[:3]
    payload = wire.encode(wire.request("digits", x))
    response = http.post("/v1/models/digits/predict", content=payload, headers={"Content-Type": TENSOR_MEDIA_TYPE})
    assert response.headers["content-type"] == TENSOR_MEDIA_TYPE
    reply = wire.decode(response.content)
    np.testing.assert_allclose(reply.tensor, fp32.predict(x).outputs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "status", "text"),
    [
        ({"json": {"inputs": [[1.0, 2.0]]}}, 422, "shape"),
        ({"json": {"inputs": [[1.0], [2.0, 3.0]]}}, 422, "rectangular"),
        ({"json": {"inputs": "nope"}}, 400, "inputs"),
        ({"json": {"inputs": [[[0.0] * 8] * 8], "surprise": 1}}, 400, "surprise"),
        ({"json": {"inputs": [[[0.0] * 8] * 8], "priority": 99}}, 400, "priority"),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "json"),
        ({"content": b"\x00" * 100, "headers": {"Content-Type": TENSOR_MEDIA_TYPE}}, 400, "magic"),
        ({"content": b"x" * 70_000, "headers": {"Content-Type": "application/json"}}, 413, "bound"),
        ({"content": b"a,b", "headers": {"Content-Type": "text/csv"}}, 415, "content-type"),
        (
            {
                "content": wire.encode(wire.request("digits", np.zeros((1, 8, 8), bool))),
                "headers": {"Content-Type": TENSOR_MEDIA_TYPE},
            },
            422,
            "dtype",
        ),
    ],
    ids=["shape", "ragged", "type", "extra-key", "priority", "bad-json", "bad-wire", "oversized", "media", "dtype"],
)
def test_bad_requests_get_4xx_with_a_message(http, kwargs, status, text):
    response = http.post("/v1/models/digits/predict", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert text in error["message"].lower()
    assert http.post("/v1/models/digits/predict", json={"inputs": [[[0.0] * 8] * 8]}).status_code == 200


def test_unknown_model_is_404(http):
    response = http.post("/v1/models/nope/predict", json={"inputs": [[[0.0] * 8] * 8]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_model"


def sample_value(text: str, series: str) -> float:
    """The value of one series in Prometheus text (0 when it is not there yet)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_and_batches(http):
    ok = 'fedge_requests_total{model="digits",outcome="ok",transport="http"}'
    bad = 'fedge_requests_total{model="digits",outcome="bad_request",transport="http"}'
    latency = 'fedge_request_latency_seconds_count{model="digits",transport="http"}'
    batches = 'fedge_batch_size_count{model="digits"}'
    before = http.get("/metrics").text
    assert http.post("/v1/models/digits/predict", json={"inputs": [[[0.0] * 8] * 8]}).status_code == 200
    assert http.post("/v1/models/digits/predict", json={"inputs": [[1.0, 2.0]]}).status_code == 422
    after = http.get("/metrics").text
    assert sample_value(after, ok) == sample_value(before, ok) + 1
    assert sample_value(after, bad) == sample_value(before, bad) + 1
    assert sample_value(after, latency) == sample_value(before, latency) + 2
    assert sample_value(after, batches) == sample_value(before, batches) + 1  # the refused one never ran
    assert 'fedge_request_latency_seconds_bucket{le="+Inf",model="digits",transport="http"}' in after
    assert 'fedge_queue_depth{model="digits"} 0' in after


def test_metrics_speak_openmetrics_to_a_scraper_that_asks_for_it(http):
    answer = http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "# TYPE fedge_requests counter" in answer.text
    assert answer.text.endswith("# EOF\n")
    plain = http.get("/metrics")
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_openapi_documents_routes_errors_and_auth(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert {"200", "401", "404", "413", "422", "503", "504"} <= set(predict["responses"])
    assert set(predict["requestBody"]["content"]) == {"application/json", TENSOR_MEDIA_TYPE}
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    assert {"/healthz", "/readyz", "/metrics", "/v1/models"} <= set(spec["paths"])


def test_overload_is_503_with_retry_after(model_dir, gated):
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=1, max_queue=1)))
    responses: list[httpx.Response] = []
    lock = threading.Lock()
    try:
        with BackgroundServer(create_app({svc.name: svc})) as srv:

            def call():
                body = {"inputs": [[[0.0] * 8] * 8]}
                r = httpx.post(f"{srv.url}/v1/models/digits/predict", json=body, timeout=PATIENCE_S * 2)
                with lock:
                    responses.append(r)

            def shed() -> int:
                with lock:
                    return sum(r.status_code == 503 for r in responses)

            threads = [threading.Thread(target=call) for _ in range(10)]
            threads[0].start()
            assert svc.busy.wait(PATIENCE_S)  # the model holds the first request: one running, one may queue
            for t in threads[1:]:
                t.start()
            poll(lambda: shed() == 8, "eight of nine requests shed")
            svc.gate.set()
            for t in threads:
                t.join(PATIENCE_S)
    finally:
        svc.close()
    assert sorted(r.status_code for r in responses) == [200] * 2 + [503] * 8
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded"


def test_deadline_passed_in_the_queue_is_504(model_dir, gated):
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=1)))
    answers: dict[str, httpx.Response] = {}
    try:
        with BackgroundServer(create_app({svc.name: svc})) as srv:
            url = f"{srv.url}/v1/models/digits/predict"
            body = {"inputs": [[[0.0] * 8] * 8]}

            def post(name: str, **extra):
                answers[name] = httpx.post(url, json={**body, **extra}, timeout=PATIENCE_S * 2)

            first = threading.Thread(target=post, args=("first",))
            first.start()
            assert svc.busy.wait(PATIENCE_S)  # the model holds the first request
            late = threading.Thread(target=post, args=("late",), kwargs={"deadline_ms": 50})
            late.start()
            poll(lambda: svc.batcher.depth() == 1, "the late request queued")
            time.sleep(0.1)  # a lower bound: its deadline has passed, however slow the machine
            svc.gate.set()
            for t in (first, late):
                t.join(PATIENCE_S)
    finally:
        svc.close()
    assert answers["first"].status_code == 200
    assert answers["late"].status_code == 504
    assert answers["late"].json()["error"]["code"] == "deadline"
