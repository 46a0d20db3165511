"""The Open Inference Protocol codec without a server: requests to arrays, arrays to answers, every refusal typed."""

import gzip
import json
import zlib

import numpy as np
import pytest

from sdk.cloud import oip_codec
from sdk.errors import InputDtypeError, InputShapeError, InvalidInput, PayloadTooLarge, WireFormatError
from sdk.manifest import TensorSpec

SPEC = TensorSpec(name="input", shape=(None, 1, 8, 8), dtype="float32")
OUTPUTS = ["output"]
X = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8) / 128


def decode(request: dict, binary: bytes | None = None):
    header = json.dumps(request).encode()
    if binary is None:
        return oip_codec.decode_request(header, None, input_spec=SPEC, output_names=OUTPUTS)
    return oip_codec.decode_request(header + binary, str(len(header)), input_spec=SPEC, output_names=OUTPUTS)


def tensor(**extra) -> dict:
    return {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", **extra}


def test_json_data_flat_and_nested_give_the_same_array():
    flat = decode({"inputs": [tensor(data=X.ravel().tolist())]})
    nested = decode({"inputs": [tensor(data=X.tolist())]})
    np.testing.assert_array_equal(flat.tensor, X)
    np.testing.assert_array_equal(nested.tensor, X)
    assert flat.tensor.dtype == np.float32
    assert flat.outputs == {"output": False}  # all outputs, in JSON, when none is named
    assert (flat.id, flat.priority, flat.timeout_s) == (None, 0, None)


def test_binary_input_is_read_little_endian_after_the_header():
    raw = X.astype("<f4").tobytes()
    request = decode({"id": "r1", "inputs": [tensor(parameters={"binary_data_size": len(raw)})]}, raw)
    np.testing.assert_array_equal(request.tensor, X)
    assert request.id == "r1"


@pytest.mark.parametrize(
    ("parameters", "outputs", "expected"),
    [
        pytest.param({}, None, {"output": False}, id="default-json"),
        pytest.param({"binary_data_output": True}, None, {"output": True}, id="all-binary"),
        pytest.param({"binary_data_output": True}, [{"name": "output"}], {"output": True}, id="named-inherits"),
        pytest.param({}, [{"name": "output", "parameters": {"binary_data": True}}], {"output": True}, id="named"),
        pytest.param(
            {"binary_data_output": True},
            [{"name": "output", "parameters": {"binary_data": False}}],
            {"output": False},
            id="named-overrides",
        ),
    ],
)
def test_outputs_and_their_encoding(parameters, outputs, expected):
    request = {"inputs": [tensor(data=X.ravel().tolist())], "parameters": parameters}
    if outputs is not None:
        request["outputs"] = outputs
    assert decode(request).outputs == expected


def test_timeout_is_microseconds_and_priority_follows_triton_levels():
    request = decode({"inputs": [tensor(data=X.ravel().tolist())], "parameters": {"timeout": 250_000, "priority": 1}})
    assert request.timeout_s == pytest.approx(0.25)
    assert request.priority == 9  # Triton's highest level is the first out of the queue
    lowest = decode({"inputs": [tensor(data=X.ravel().tolist())], "parameters": {"priority": 9}})
    assert lowest.priority == 1


@pytest.mark.parametrize(
    ("body", "header_length", "error", "text"),
    [
        pytest.param(b"{not json", None, WireFormatError, "invalid inference request", id="bad-json"),
        pytest.param(b'{"inputs": []}', None, WireFormatError, "inputs", id="no-inputs"),
        pytest.param(b'{"inputs": [{"name": "input"}]}', None, WireFormatError, "shape", id="no-shape"),
        pytest.param(b"{}", "99", WireFormatError, "Inference-Header-Content-Length", id="header-past-body"),
        pytest.param(b"{}", "-1", WireFormatError, "Inference-Header-Content-Length", id="header-negative"),
    ],
)
def test_malformed_bodies_are_wire_format_errors(body, header_length, error, text):
    with pytest.raises(error, match=text):
        oip_codec.decode_request(body, header_length, input_spec=SPEC, output_names=OUTPUTS)


@pytest.mark.parametrize(
    ("request_", "binary", "error", "text"),
    [
        pytest.param({"inputs": [tensor(name="x", data=[0.0] * 128)]}, None, InvalidInput, "'x'", id="input-name"),
        pytest.param(
            {"inputs": [tensor(data=[0.0] * 128), tensor(data=[0.0] * 128)]}, None, InvalidInput, "one input", id="two"
        ),
        pytest.param({"inputs": [tensor(data=[0.0] * 127)]}, None, InputShapeError, "128 values", id="too-few"),
        pytest.param({"inputs": [tensor(data=[[0.0] * 64] * 2)]}, None, InputShapeError, "nested", id="nesting"),
        pytest.param({"inputs": [tensor(data=["1"] * 128)]}, None, InputDtypeError, "str", id="strings"),
        pytest.param({"inputs": [tensor(data=[True] * 128)]}, None, InputDtypeError, "bool", id="booleans"),
        pytest.param(
            {"inputs": [tensor(datatype="INT32", data=[0.5] * 128)]}, None, InputDtypeError, "float", id="int"
        ),
        pytest.param({"inputs": [tensor(datatype="BYTES", data=["a"] * 128)]}, None, InputDtypeError, "BYTES", id="bt"),
        pytest.param({"inputs": [tensor(data=[3.2e134] * 128)]}, None, InvalidInput, "range of FP32", id="overflow"),
        pytest.param({"inputs": [tensor(datatype="UINT8", data=[300] * 128)]}, None, InvalidInput, "range", id="u8"),
        pytest.param({"inputs": [tensor()]}, None, WireFormatError, "neither data", id="no-data"),
        pytest.param(
            {"inputs": [tensor(parameters={"binary_data_size": 512})]}, None, WireFormatError, "without", id="no-header"
        ),
        pytest.param(
            {"inputs": [tensor(parameters={"binary_data_size": 500})]}, b"\0" * 500, InputShapeError, "512", id="size"
        ),
        pytest.param(
            {"inputs": [tensor(parameters={"binary_data_size": 512})]}, b"\0" * 100, WireFormatError, "100", id="short"
        ),
        pytest.param({"inputs": [tensor(data=[0.0] * 128)]}, b"\0" * 8, WireFormatError, "8 bytes", id="stray-bytes"),
        pytest.param(
            {"inputs": [tensor(data=[0.0] * 128, parameters={"binary_data_size": 0})]},
            b"",
            WireFormatError,
            "both",
            id="data-and-binary",
        ),
        pytest.param(
            {"inputs": [tensor(data=[0.0] * 128)], "outputs": [{"name": "probs"}]},
            None,
            InvalidInput,
            "no output 'probs'",
            id="output-name",
        ),
        pytest.param(
            {
                "inputs": [tensor(data=[0.0] * 128)],
                "outputs": [{"name": "output", "parameters": {"classification": 3}}],
            },
            None,
            WireFormatError,
            "classification",
            id="classification",
        ),
        pytest.param(
            {"inputs": [tensor(parameters={"shared_memory_region": "r"})]},
            None,
            WireFormatError,
            "shared memory",
            id="shared-memory",
        ),
        pytest.param(
            {"inputs": [tensor(data=[0.0] * 128)], "parameters": {"sequence_id": 7}},
            None,
            WireFormatError,
            "sequences",
            id="sequence",
        ),
        pytest.param(
            {"inputs": [tensor(data=[0.0] * 128)], "parameters": {"timeout": 0}},
            None,
            WireFormatError,
            "timeout",
            id="timeout-zero",
        ),
        pytest.param(
            {"inputs": [tensor(data=[0.0] * 128)], "parameters": {"priority": -1}},
            None,
            WireFormatError,
            "priority",
            id="priority",
        ),
    ],
)
def test_bad_requests_are_typed_errors_that_say_what_is_wrong(request_, binary, error, text):
    with pytest.raises(error, match=text):
        decode(request_, binary)


def test_the_answer_in_json_and_in_binary():
    y = np.array([[0.5, -1.25], [2.0, 3.0]], dtype=np.float32)
    json_request = decode({"id": "a", "inputs": [tensor(data=X.ravel().tolist())]})
    body, header_length = oip_codec.encode_response("digits", 3, json_request, y)
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "digits",
        "model_version": "3",
        "id": "a",
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [2, 2], "data": [0.5, -1.25, 2.0, 3.0]}],
    }
    binary_request = decode({"inputs": [tensor(data=X.ravel().tolist())], "parameters": {"binary_data_output": True}})
    body, header_length = oip_codec.encode_response("digits", 3, binary_request, y)
    header = json.loads(body[:header_length])
    assert "id" not in header
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], "<f4").reshape(2, 2), y)


def test_an_output_json_cannot_carry_is_refused_in_json_and_sent_in_binary():
    y = np.array([[np.inf, -np.inf, np.nan]], dtype=np.float32)  # what an overflowing input makes of the model
    json_request = decode({"inputs": [tensor(data=X.ravel().tolist())]})
    with pytest.raises(InvalidInput, match="NaN or infinity, which JSON cannot carry"):
        oip_codec.encode_response("digits", 3, json_request, y)
    binary_request = decode({"inputs": [tensor(data=X.ravel().tolist())], "parameters": {"binary_data_output": True}})
    body, header_length = oip_codec.encode_response("digits", 3, binary_request, y)
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], "<f4").reshape(1, 3), y)


def test_model_metadata_names_datatypes_and_dynamic_dimensions():
    from sdk.manifest import Artifact, Manifest

    artifact = Artifact(kind="onnx-fp32", file="m.onnx", sha256="0" * 64, size=1)
    manifest = Manifest(
        name="digits",
        version=4,
        inputs=(SPEC,),
        outputs=(TensorSpec(name="output", shape=(None, 10), dtype="float32"),),
        artifacts={"onnx-fp32": artifact},
    )
    assert oip_codec.model_metadata(manifest) == {
        "name": "digits",
        "versions": ["4"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert [oip_codec.datatype_of(d) for d in ("float16", "int8", "uint8", "int64")] == [
        "FP16",
        "INT8",
        "UINT8",
        "INT64",
    ]


def test_compressed_bodies_inflate_within_the_bound():
    body = json.dumps({"inputs": [tensor(data=X.ravel().tolist())]}).encode()
    assert oip_codec.inflate(gzip.compress(body), "gzip", 10_000) == body
    assert oip_codec.inflate(zlib.compress(body), "deflate", 10_000) == body
    assert oip_codec.inflate(body, None, 10) == body  # not encoded: the route's own bound applies
    with pytest.raises(PayloadTooLarge, match="inflates"):
        oip_codec.inflate(gzip.compress(b"\0" * 1_000_000), "gzip", 10_000)
    with pytest.raises(WireFormatError, match="corrupt"):
        oip_codec.inflate(b"not gzip", "gzip", 10_000)
    with pytest.raises(WireFormatError, match="truncated"):
        oip_codec.inflate(gzip.compress(body)[:-10], "gzip", 10_000)
    with pytest.raises(WireFormatError, match="br"):
        oip_codec.inflate(body, "br", 10_000)


@pytest.mark.parametrize(
    ("path", "speaks"),
    [("/v2", True), ("/v2/models/x/infer", True), ("/v2x", False), ("/v1/models", False), ("/", False)],
)
def test_which_paths_speak_the_protocol(path, speaks):
    assert oip_codec.speaks_oip(path) is speaks
