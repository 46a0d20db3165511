"""What a hostile or broken client sends the HTTP endpoint, through a real uvicorn server: the server stays up."""

import json
import logging
import resource
import socket
import struct

import httpx
import pytest
from waiting import PATIENCE_S, poll

from sdk import wire
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.metrics import ServiceMetrics
from sdk.cloud.schemas import TENSOR_MEDIA_TYPE
from sdk.cloud.server import BackgroundServer, uvicorn_options
from sdk.errors import ConfigError

KEY = "test-key-0123456789abcdef"
PREDICT = "/v1/models/digits/predict"
SAMPLE = [[[0.0] * 8] * 8]


@pytest.fixture(scope="module")
def metrics():
    return ServiceMetrics()


@pytest.fixture(scope="module")
def server(service, metrics):
    config = CloudConfig(api_keys=(KEY,), max_body_bytes=64 * 1024)
    # log_config=None: uvicorn's records reach the root logger, where caplog sees them
    app = create_app({service.name: service}, config, metrics=metrics)
    with BackgroundServer(app, log_config=None) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=PATIENCE_S) as client:
        yield client


def errors_logged(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def with_cell(value):
    """The sample with its first cell replaced by ``value`` (which is not a number)."""
    sample = json.loads(json.dumps(SAMPLE))
    sample[0][0][0] = value
    return sample


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs": [' + "9" * 400 + "]}",
        json.dumps({"inputs": with_cell("1")}),
        json.dumps({"inputs": with_cell(True)}),
        json.dumps({"inputs": with_cell(None)}),
        json.dumps({"inputs": []}),
        json.dumps({"inputs": [[]]}),
    ],
    ids=["400-digit-int", "string", "boolean", "null", "empty", "empty-row"],
)
def test_json_inputs_are_strictly_numbers(http, caplog, body):
    response = http.post(PREDICT, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert "inputs" in error["message"]
    assert not errors_logged(caplog)


def test_a_number_beyond_float32_is_invalid_input(http, caplog):
    response = http.post(PREDICT, json={"inputs": [[[3.2e134] * 8] * 8]})
    assert response.status_code == 422, response.text
    assert "float32" in response.json()["error"]["message"]
    assert not errors_logged(caplog)


def test_a_zero_next_to_a_huge_dimension_is_a_bad_payload(http, caplog):
    header = {"kind": "request", "id": "x", "model": "digits", "tensors": [{"name": "input", "dtype": "float32"}]}
    header["tensors"][0]["shape"] = [0, 2**62]
    raw = json.dumps(header).encode()
    payload = struct.pack("<3sBI", wire.MAGIC, wire.VERSION, len(raw)) + raw
    response = http.post(PREDICT, content=payload, headers={"Content-Type": TENSOR_MEDIA_TYPE})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert not errors_logged(caplog)
    assert http.post(PREDICT, json={"inputs": SAMPLE}).status_code == 200


def test_an_unexpected_error_is_a_500_with_the_uniform_body_logged_once(http, service, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug that names secret-value-42")

    # Fault injection: a real service has no bug to trigger on demand.
    monkeypatch.setattr(service, "submit", broken)
    response = http.post(PREDICT, json={"inputs": SAMPLE})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "internal"
    assert "secret-value-42" not in error["message"]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in caplog.records]
    assert KEY not in caplog.text
    monkeypatch.undo()
    assert http.post(PREDICT, json={"inputs": SAMPLE}).status_code == 200


def test_a_client_gone_mid_body_is_no_error(server, metrics, caplog):
    def count(outcome: str) -> float:
        return metrics.value("fedge_requests_total", transport="http", model="digits", outcome=outcome)

    before = {outcome: count(outcome) for outcome in ("disconnected", "internal")}
    with socket.create_connection((server.host, server.port), timeout=PATIENCE_S) as sock:
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + b'{"inputs": [[[0.0, 0.0')
    poll(lambda: count("disconnected") == before["disconnected"] + 1, "the hang-up counted as disconnected")
    assert count("internal") == before["internal"]
    assert not errors_logged(caplog)


def exchange(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_bodies_are_timed_out_and_a_legitimate_call_gets_its_answer(service):
    slow, limit = 120, 32
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 3 * slow + 100:  # both ends of each connection live here
        pytest.skip(f"needs {3 * slow + 100} open files, may open {soft}")
    config = CloudConfig(body_timeout_s=1.0, limit_concurrency=limit)
    with BackgroundServer(create_app({service.name: service}, config), **uvicorn_options(config)) as srv:
        socks = []
        try:
            for _ in range(slow):
                sock = socket.create_connection((srv.host, srv.port), timeout=PATIENCE_S)
                socks.append(sock)
                sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode())
                sock.sendall(b"Content-Length: 1000\r\n\r\n" + b'{"inputs": ')  # and never the rest

            statuses = []

            def answered() -> bool:
                response = httpx.post(f"{srv.url}{PREDICT}", json={"inputs": SAMPLE}, timeout=PATIENCE_S)
                statuses.append(response.status_code)
                return response.status_code == 200

            poll(answered, "a legitimate call answered", interval_s=0.1)
            answers = [exchange(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    assert set(statuses[:-1]) <= {503}  # refused at once while the slow ones held every slot, never left hanging
    firsts = [answer.split(b"\r\n", 1)[0] for answer in answers]
    timed_out = [a for a, first in zip(answers, firsts, strict=True) if first == b"HTTP/1.1 408 Request Timeout"]
    shed = [first for first in firsts if first == b"HTTP/1.1 503 Service Unavailable"]
    assert len(timed_out) + len(shed) == slow, set(firsts)
    assert 1 <= len(timed_out) <= limit
    for answer in timed_out:
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"


def test_silent_and_trickling_clients_are_hung_up_on_and_a_legitimate_call_gets_its_answer(service):
    silent, trickling, limit = 12, 12, 16
    config = CloudConfig(header_timeout_s=1.0, limit_concurrency=limit)
    with BackgroundServer(create_app({service.name: service}, config), **uvicorn_options(config)) as srv:
        socks = [socket.create_connection((srv.host, srv.port), timeout=PATIENCE_S) for _ in range(silent + trickling)]
        try:
            for sock in socks[silent:]:
                sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n".encode())  # and never the end of the headers
            statuses = []

            def answered() -> bool:
                response = httpx.post(f"{srv.url}{PREDICT}", json={"inputs": SAMPLE}, timeout=PATIENCE_S)
                statuses.append(response.status_code)
                return response.status_code == 200

            poll(answered, "a legitimate call answered", interval_s=0.1)
            answers = [exchange(sock) for sock in socks]  # a socket timeout here: the server held on
        finally:
            for sock in socks:
                sock.close()
    assert set(statuses[:-1]) <= {503}
    assert answers == [b""] * len(socks)  # hung up on without a word (the app never saw a request)


def test_an_oversized_request_head_is_refused(service):
    config = CloudConfig(max_header_bytes=4096)
    with BackgroundServer(create_app({service.name: service}, config), **uvicorn_options(config)) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=PATIENCE_S) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100_000)  # no end of headers
            assert exchange(sock).startswith(b"HTTP/1.1 431 ")
        assert httpx.get(f"{srv.url}/healthz", headers={"X-Padding": "a" * 1000}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", PREDICT, "POST"),
        ("PUT", "/v1/models", "GET, HEAD"),
        ("DELETE", "/v1/registry/models/digits/versions", "GET, HEAD, POST"),  # two routes on one path
    ],
)
def test_405_names_every_allowed_method(http, method, path, allow):
    response = http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "bad_request"


def test_openapi_documents_401_on_every_guarded_route_and_refuses_empty_inputs(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    guarded = [
        (path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items() if op.get("security")
    ]
    assert len(guarded) >= 7  # the models and the registry routes
    for path, method, op in guarded:
        assert "401" in op["responses"], f"{method.upper()} {path}"
    schemas = spec["components"]["schemas"]
    inputs = schemas["PredictRequest"]["properties"]["inputs"]
    assert inputs["$ref"] == "#/components/schemas/Numbers"
    assert schemas["Numbers"]["minItems"] == 1
    assert schemas["Numbers"]["items"]["anyOf"][0] == {"type": "number"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("header_timeout_s", "0"),
        ("body_timeout_s", "0"),
        ("limit_concurrency", "0"),
        ("keep_alive_s", "0"),
        ("backlog", "0"),
        ("max_header_bytes", "10"),
    ],
)
def test_http_limits_are_checked_on_load(key, value):
    with pytest.raises(ConfigError, match=f"cloud.{key}: must be within"):
        CloudConfig.load(env={f"FEDGE_CLOUD__{key.upper()}": value})
