"""The Open Inference Protocol through a real uvicorn server, driven by ``tritonclient.http`` unchanged."""

import json
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from waiting import PATIENCE_S, poll

from sdk.cloud.app import create_app
from sdk.cloud.batching import BatcherConfig
from sdk.cloud.config import CloudConfig
from sdk.cloud.inference import InferenceService
from sdk.cloud.metrics import ServiceMetrics
from sdk.cloud.server import BackgroundServer

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402 - after the skip: a dev dependency

KEY = "oip-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
WRONG = {"X-API-Key": "wrong-key-0123456789abcdef"}


def auth() -> dict[str, str]:
    """The key's header, in a dict of its own: tritonclient adds its own headers to the dict it is given."""
    return dict(AUTH)


@pytest.fixture(scope="module")
def metrics():
    return ServiceMetrics()


@pytest.fixture(scope="module")
def server(service, metrics):
    config = CloudConfig(api_keys=(KEY,), max_body_bytes=64 * 1024, body_timeout_s=2.0)
    with BackgroundServer(create_app({service.name: service}, config, metrics=metrics), log_config=None) as running:
        yield running


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(url=f"{server.host}:{server.port}", network_timeout=PATIENCE_S)
    yield client
    client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=auth(), timeout=PATIENCE_S) as client:
        yield client


def v1_outputs(http, x: np.ndarray) -> np.ndarray:
    """What our own /v1 predict answers for ``x``."""
    response = http.post("/v1/models/digits/predict", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["outputs"], dtype=np.float32)


def test_health_readiness_and_metadata(triton, service):
    assert triton.is_server_live()  # health needs no key: an orchestrator's probe has none
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits", headers=auth())
    version = str(service.manifest.version)
    assert triton.is_model_ready("digits", model_version=version, headers=auth())
    assert not triton.is_model_ready("digits", model_version=version + "9", headers=auth())
    server = triton.get_server_metadata(headers=auth())
    assert server["name"] == "fedge"
    assert "binary_tensor_data" in server["extensions"]
    for asked in ("", version):
        model = triton.get_model_metadata("digits", model_version=asked, headers=auth())
        assert model["name"] == "digits"
        assert model["versions"] == [version]
        assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["json", "binary-in", "binary-out", "binary"],
)
def test_infer_answers_as_v1_predict_does(triton, http, digits_split, service, binary_in, binary_out):
    x = digits_split.x_test[:5].astype(np.float32)
    expected = v1_outputs(http, x)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput("output", binary_data=binary_out)]
    result = triton.infer("digits", [tensor], outputs=outputs, request_id="req-7", headers=auth())
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-5)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == str(service.manifest.version)
    assert ("parameters" in response["outputs"][0]) is binary_out


def test_infer_with_defaults_a_version_and_a_compressed_body(triton, http, digits_split, service):
    x = digits_split.x_test[5:9].astype(np.float32)
    expected = v1_outputs(http, x)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x)
    version = str(service.manifest.version)
    for options in ({}, {"model_version": version}, {"request_compression_algorithm": "gzip"}):
        result = triton.infer("digits", [tensor], headers=auth(), **options)  # no outputs named: all, in binary
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-5)


def test_a_wrong_key_an_unknown_model_and_a_wrong_shape_are_refused_and_serving_goes_on(triton, digits_split):
    x = digits_split.x_test[:2].astype(np.float32)
    good = httpclient.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x)
    for headers in ({}, WRONG):  # copied for each call: tritonclient adds its headers to the dict given
        for model in ("digits", "nope"):  # the key first, whatever the model
            with pytest.raises(InferenceServerException) as refused:
                triton.infer(model, [good], headers=dict(headers))
            assert refused.value.status() == "401"
            assert "X-API-Key" in refused.value.message()
        with pytest.raises(InferenceServerException) as refused:
            triton.get_model_metadata("nope", headers=dict(headers))
        assert refused.value.status() == "401"
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("nope", [good], headers=auth())
    assert unknown.value.status() == "404"
    assert "'nope'" in unknown.value.message()
    flat = x.reshape(2, 64)
    wrong = httpclient.InferInput("input", list(flat.shape), "FP32").set_data_from_numpy(flat)
    with pytest.raises(InferenceServerException) as bad:
        triton.infer("digits", [wrong], headers=auth())
    assert bad.value.status() == "400"
    assert "shape" in bad.value.message()
    assert triton.infer("digits", [good], headers=auth()).as_numpy("output").shape == (2, 10)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/v2/nope", {}, 401),
        ("GET", "/v2/nope", AUTH, 404),
        ("GET", "/v2/models/nope", {}, 401),
        ("GET", "/v2/models/nope/ready", AUTH, 404),
        ("GET", "/v2/models/digits/versions/999/ready", AUTH, 404),
        ("GET", "/v2/models/digits/infer", {}, 401),
        ("GET", "/v2/models/digits/infer", AUTH, 405),
        ("GET", "/v1/nope", {}, 401),
        ("PUT", "/v1/models", WRONG, 401),
    ],
    ids=[
        "route-no-key",
        "route",
        "model-no-key",
        "model",
        "version",
        "method-no-key",
        "method",
        "v1-route-no-key",
        "v1-method-wrong-key",
    ],
)
def test_unknown_routes_models_and_methods_ask_for_the_key_first(server, method, path, headers, status):
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=PATIENCE_S)
    assert response.status_code == status, response.text
    body = response.json()
    if path.startswith("/v2"):
        assert list(body) == ["error"]
        assert isinstance(body["error"], str)
        assert ("X-API-Key" in body["error"]) is (status == 401)
    else:
        assert body["error"]["code"] == "unauthorized"


def test_an_unknown_v1_route_is_not_an_unknown_model(http):
    response = http.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "bad_request", "message": "no route GET /v1/nope"}


@pytest.mark.parametrize(
    ("content", "headers", "status", "text"),
    [
        (b"{not json", {}, 400, "invalid inference request"),
        (b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}', {}, 400, "neither data"),
        (b"{}" + b"\0" * 8, {"Inference-Header-Content-Length": "x"}, 400, "Inference-Header-Content-Length"),
        (b" " * 70_000, {}, 413, "bound"),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "corrupt"),
    ],
    ids=["bad-json", "no-data", "bad-header-length", "oversized", "bad-gzip"],
)
def test_bad_bodies_get_the_protocols_error_and_serving_goes_on(http, content, headers, status, text):
    response = http.post("/v2/models/digits/infer", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert text in response.json()["error"]
    ok = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    assert http.post("/v2/models/digits/infer", json=ok).status_code == 200


def test_a_body_that_never_comes_is_a_408_in_the_protocols_shape(server):
    with socket.create_connection((server.host, server.port), timeout=PATIENCE_S) as sock:
        head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b'{"inputs": ')  # and never the rest
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "the request body did not arrive within 2 s"}


def test_an_unexpected_error_is_a_500_in_the_protocols_shape(http, service, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug that names secret-value-42")

    # Fault injection: a real service has no bug to trigger on demand.
    monkeypatch.setattr(service, "submit", broken)
    ok = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    with caplog.at_level(logging.ERROR):
        response = http.post("/v2/models/digits/infer", json=ok)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error; the server log has the details"}
    assert len([r for r in caplog.records if r.exc_info]) == 1
    monkeypatch.undo()
    assert http.post("/v2/models/digits/infer", json=ok).status_code == 200


def test_requests_are_counted_under_their_own_transport(http, metrics):
    def count(outcome: str) -> float:
        return metrics.value("fedge_requests_total", transport="oip", model="digits", outcome=outcome)

    before = {outcome: count(outcome) for outcome in ("ok", "bad_request")}
    ok = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    assert http.post("/v2/models/digits/infer", json=ok).status_code == 200
    assert http.post("/v2/models/digits/infer", content=b"[").status_code == 400
    assert count("ok") == before["ok"] + 1
    assert count("bad_request") == before["bad_request"] + 1


def test_overload_is_503_with_retry_after_and_a_timeout_passed_in_the_queue_is_504(model_dir, gated):
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=1, max_queue=1)))
    answers: dict[str, httpx.Response] = {}
    sample = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    try:
        with BackgroundServer(create_app({svc.name: svc})) as srv:
            url = f"{srv.url}/v2/models/digits/infer"

            def post(name: str, **parameters) -> None:
                body = {"inputs": [sample], "parameters": parameters}
                answers[name] = httpx.post(url, json=body, timeout=PATIENCE_S * 2)

            first = threading.Thread(target=post, args=("first",))
            first.start()
            assert svc.busy.wait(PATIENCE_S)  # the model holds the first request
            late = threading.Thread(target=post, args=("late",), kwargs={"timeout": 50_000})  # 50 ms, in µs
            late.start()
            poll(lambda: svc.batcher.depth() == 1, "the late request queued")
            post("shed")  # the queue holds one: refused at once
            time.sleep(0.1)  # a lower bound: the late one's timeout has passed, however slow the machine
            svc.gate.set()
            for t in (first, late):
                t.join(PATIENCE_S)
    finally:
        svc.close()
    assert [answers[name].status_code for name in ("first", "shed", "late")] == [200, 503, 504]
    assert answers["shed"].headers["retry-after"] == "1"
    for name in ("shed", "late"):
        assert list(answers[name].json()) == ["error"]
