"""The Open Inference Protocol v2 (KServe v2, Triton HTTP) as data: requests to numpy and numpy to answers. No I/O.

An ``infer`` body is a JSON object, or, with the binary tensor extension, a JSON header of
``Inference-Header-Content-Length`` bytes followed by each binary input's raw little-endian
bytes (``parameters.binary_data_size`` each, in the order of ``inputs``). An answer carries
an output's values in JSON (``data``, flat, row-major) or, when ``binary_data`` asks for it,
after its own JSON header, whose length the answer's ``Inference-Header-Content-Length`` gives.

Request parameters read: ``timeout`` (microseconds, as Triton and ``tritonclient`` mean it:
the request is dropped with 504 when not run by then), ``priority`` (Triton's levels: 1 is the
highest; level p leaves the queue as Fedge priority ``10 - p``, 0 or above 9 as the default)
and ``binary_data_output``; other parameters are ignored, as the protocol allows, save those
whose meaning this server cannot honour (sequences, shared memory, classification): refused.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from sdk.errors import InputDtypeError, InputShapeError, InvalidInput, PayloadTooLarge, WireFormatError
from sdk.manifest import Manifest, TensorSpec

__all__ = [
    "BINARY_EXTENSION",
    "HEADER_LENGTH",
    "MAX_TIMEOUT_US",
    "PREFIX",
    "DecodedRequest",
    "InferenceRequest",
    "datatype_of",
    "decode_request",
    "encode_response",
    "error_body",
    "inflate",
    "model_metadata",
    "speaks_oip",
]

#: Where the protocol's routes live; every error under it has the protocol's body.
PREFIX = "/v2"
#: The header that gives the length of the JSON part of a binary body, in a request and in an answer.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The name of the binary tensor extension in the server metadata.
BINARY_EXTENSION = "binary_tensor_data"
#: The longest ``parameters.timeout`` taken, in microseconds (ten minutes, the bound of ``/v1``'s ``deadline_ms``).
MAX_TIMEOUT_US = 600_000_000

# The protocol's numeric datatypes; BYTES (length-prefixed strings) and BF16 have no place in the models served.
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
# The JSON values each kind of datatype takes: a boolean is not a number here, nor a fraction an integer.
_JSON_TYPES = {"b": {bool}, "i": {int}, "u": {int}, "f": {int, float}}
_REFUSED_REQUEST_PARAMETERS = {"sequence_id": "sequences", "sequence_start": "sequences", "sequence_end": "sequences"}
_REFUSED_TENSOR_PARAMETERS = {"shared_memory_region": "shared memory", "classification": "classification"}
_BRANCHES = {"bool", "int", "float", "str"}
_TRITON_LEVELS = 9  # Fedge priorities 9 (first out) .. 0

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Strict):
    """One input tensor: its values in ``data`` (flat or nested) or, with ``binary_data_size``, after the header."""

    name: str
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(_Strict):
    """An output asked for by name; ``parameters.binary_data`` asks for its values in binary."""

    name: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class InferenceRequest(_Strict):
    """The JSON object of an ``infer`` request (the whole body, or its header with the binary extension)."""

    id: str | None = None
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class DecodedRequest:
    """What an ``infer`` request asks: the input array, the outputs (name to binary or not), how and by when."""

    id: str | None
    tensor: np.ndarray
    outputs: dict[str, bool]
    priority: int
    timeout_s: float | None


def speaks_oip(path: str) -> bool:
    """Whether a request path is one of the protocol's (under :data:`PREFIX`)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_body(message: str) -> dict[str, str]:
    """The protocol's error object."""
    return {"error": message}


def datatype_of(dtype: str | np.dtype) -> str:
    """The protocol's datatype name (``FP32`` ...) of a numpy dtype or a manifest dtype name."""
    name = _NAMES.get(np.dtype(dtype))
    if name is None:
        raise ValueError(f"dtype {dtype} has no Open Inference Protocol datatype")
    return name


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": datatype_of(spec.dtype),
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def model_metadata(manifest: Manifest) -> dict[str, Any]:
    """The model metadata answer: name, versions, platform, inputs and outputs (``-1`` for the batch dimension)."""
    return {
        "name": manifest.name,
        "versions": [str(manifest.version)],
        "platform": "onnxruntime_onnx",
        "inputs": [_tensor_metadata(spec) for spec in manifest.inputs],
        "outputs": [_tensor_metadata(spec) for spec in manifest.outputs],
    }


def inflate(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as ``tritonclient`` sends), at most ``max_bytes``.

    Raises:
        PayloadTooLarge: it inflates to more than ``max_bytes``.
        WireFormatError: an encoding other than gzip, deflate or identity, or a corrupt stream.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise WireFormatError(f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    stream = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = stream.decompress(body, max_bytes + 1)  # a bound on the output: a small bomb does not inflate here
    except zlib.error as exc:
        raise WireFormatError(f"the {encoding} body is corrupt: {exc}") from None
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"the {encoding} body inflates to more than the {max_bytes}-byte bound")
    if not stream.eof or stream.unused_data:
        raise WireFormatError(f"the {encoding} body is truncated or followed by other bytes")
    return out


def decode_request(
    body: bytes, header_length: str | None, *, input_spec: TensorSpec, output_names: Sequence[str]
) -> DecodedRequest:
    """Parse an ``infer`` body for a model of one input (``input_spec``) and these outputs.

    Raises:
        WireFormatError: malformed JSON or binary layout, or a parameter this server cannot honour.
        InvalidInput: an input or output the model does not have, or data that do not fit its shape or datatype.
    """
    header, binary = _split(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        problems = dict.fromkeys(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise WireFormatError(f"invalid inference request: {'; '.join(list(problems)[:5])}") from None
    for key, feature in _REFUSED_REQUEST_PARAMETERS.items():
        if request.parameters.get(key) not in (None, 0, False, ""):
            raise WireFormatError(f"parameters.{key}: {feature} are not supported by this server")
    if len(request.inputs) != 1 or request.inputs[0].name != input_spec.name:
        names = ", ".join(repr(i.name) for i in request.inputs)
        raise InvalidInput(f"the model takes one input, {input_spec.name!r}; the request has {names}")
    tensor = _input_array(request.inputs[0], binary)
    return DecodedRequest(
        id=request.id,
        tensor=tensor,
        outputs=_outputs(request, output_names),
        priority=_priority(request.parameters.get("priority", 0)),
        timeout_s=_timeout_s(request.parameters.get("timeout")),
    )


def encode_response(model: str, version: int, request: DecodedRequest, output: np.ndarray) -> tuple[bytes, int | None]:
    """The answer's body and, when some output is binary, the length of its JSON header.

    Raises:
        InvalidInput: a JSON output would hold NaN or infinity (the input overflowed the model).
    """
    answer: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        answer["id"] = request.id
    tensors, raw = [], []
    for name, binary in request.outputs.items():  # the model has one output: ``output``
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(output.dtype), "shape": list(output.shape)}
        if binary:
            data = np.ascontiguousarray(output, dtype=output.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            if output.dtype.kind == "f" and not np.isfinite(output).all():
                raise InvalidInput(
                    f"output {name!r} for this input holds NaN or infinity, which JSON cannot carry: "
                    "ask for it with binary_data"
                )
            tensor["data"] = output.reshape(-1).tolist()
        tensors.append(tensor)
    answer["outputs"] = tensors
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes | None]:
    """The JSON header and the binary part of a body (None: the body is all JSON)."""
    if header_length is None:
        return body, None
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise WireFormatError(
            f"{HEADER_LENGTH} must be a byte count within the body's {len(body)} bytes, got {header_length[:32]!r}"
        )
    return body[: int(text)], body[int(text) :]


def _where(loc: tuple[int | str, ...]) -> str:
    """``inputs.0.shape.1`` for a location, without the union branches pydantic names (``bool``, ``int`` ...)."""
    return ".".join(str(part) for part in loc if part not in _BRANCHES) or "body"


def _dtype(tensor: RequestInput) -> np.dtype:
    dtype = _DTYPES.get(tensor.datatype)
    if dtype is None:
        known = ", ".join(_DTYPES)
        raise InputDtypeError(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one of {known}")
    return dtype


def _refuse_features(where: str, parameters: dict[str, Any]) -> None:
    for key, feature in _REFUSED_TENSOR_PARAMETERS.items():
        if key in parameters:
            raise WireFormatError(f"{where}.parameters.{key}: {feature} is not supported by this server")


def _input_array(tensor: RequestInput, binary: bytes | None) -> np.ndarray:
    """The input's values as an array of its declared shape and datatype."""
    _refuse_features(f"input {tensor.name!r}", tensor.parameters)
    dtype = _dtype(tensor)
    count = math.prod(tensor.shape)
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if binary:  # the header says where the JSON ends, and bytes follow that no input claims
            raise WireFormatError(f"{len(binary)} bytes follow the header but no input declares binary_data_size")
        if tensor.data is None:
            raise WireFormatError(f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
        return _from_json(tensor, dtype, count)
    if tensor.data is not None:
        raise WireFormatError(f"input {tensor.name!r} has both data and parameters.binary_data_size")
    if binary is None:
        raise WireFormatError(f"input {tensor.name!r} declares binary_data_size without the {HEADER_LENGTH} header")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise WireFormatError(f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}")
    if size != len(binary):
        raise WireFormatError(f"input {tensor.name!r} declares {size} binary bytes; {len(binary)} follow the header")
    if size != count * dtype.itemsize:
        raise InputShapeError(
            f"input {tensor.name!r}: shape {tensor.shape} of {tensor.datatype} is {count * dtype.itemsize} bytes,"
            f" binary_data_size says {size}"
        )
    return np.frombuffer(binary, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tensor.shape)


def _from_json(tensor: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    data = tensor.data or []
    nested = any(isinstance(value, list) for value in data)
    if nested:  # nested lists must follow the shape exactly, level by level
        level: list[Any] = [data]
        for dim in tensor.shape:
            if any(not isinstance(item, list) or len(item) != dim for item in level):
                raise InputShapeError(f"input {tensor.name!r}: the nested data do not have shape {tensor.shape}")
            level = list(chain.from_iterable(level))
        data = level
    if len(data) != count:
        raise InputShapeError(f"input {tensor.name!r}: shape {tensor.shape} holds {count} values, data has {len(data)}")
    wrong = set(map(type, data)) - _JSON_TYPES[dtype.kind]
    if wrong:
        kinds = ", ".join(sorted(t.__name__ for t in wrong))
        raise InputDtypeError(
            f"input {tensor.name!r}: {tensor.datatype} data must be JSON numbers of its kind, not {kinds}"
        )
    try:
        with np.errstate(over="raise"):
            return np.array(data, dtype=dtype).reshape(tensor.shape)
    except (OverflowError, FloatingPointError):
        raise InvalidInput(f"input {tensor.name!r}: a value is beyond the range of {tensor.datatype}") from None


def _outputs(request: InferenceRequest, names: Sequence[str]) -> dict[str, bool]:
    """Each output asked for (all when none is named), and whether its values go in binary."""
    default = request.parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise WireFormatError(f"parameters.binary_data_output must be a boolean, got {default!r}")
    if request.outputs is None:
        return dict.fromkeys(names, default)
    chosen: dict[str, bool] = {}
    for output in request.outputs:
        if output.name not in names:
            raise InvalidInput(f"the model has no output {output.name!r}; it returns {', '.join(map(repr, names))}")
        if output.name in chosen:
            raise WireFormatError(f"output {output.name!r} is asked for twice")
        _refuse_features(f"output {output.name!r}", output.parameters)
        binary = output.parameters.get("binary_data", default)
        if not isinstance(binary, bool):
            raise WireFormatError(f"output {output.name!r}: binary_data must be a boolean, got {binary!r}")
        chosen[output.name] = binary
    return chosen


def _priority(level: Any) -> int:
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        raise WireFormatError(f"parameters.priority must be an integer >= 0, got {level!r}")
    return _TRITON_LEVELS + 1 - level if 1 <= level <= _TRITON_LEVELS else 0


def _timeout_s(timeout_us: Any) -> float | None:
    if timeout_us is None:
        return None
    valid = isinstance(timeout_us, (int, float)) and not isinstance(timeout_us, bool)
    if not valid or not 0 < timeout_us <= MAX_TIMEOUT_US:
        raise WireFormatError(
            f"parameters.timeout must be microseconds within (0, {MAX_TIMEOUT_US}], got {timeout_us!r}"
        )
    return timeout_us / 1e6
