"""The tensor wire format shared by MQTT and HTTP: self-describing, size-bounded, versioned, no pickle.

```
offset  size  field
0       3     magic b"FDG"
3       1     format version (1)
4       4     header length H, uint32 little-endian
8       H     header: UTF-8 JSON object (kind, id, model, ..., tensors: [{name, dtype, shape}])
8+H     ...   tensor bytes, C order, little-endian, in header order
```

A message is a request (model, tensors, deadline, priority), a reply (tensors,
model version, who answered) or an error (a code from :data:`ERROR_CODES` and a
message). :func:`decode` checks the size bound before it reads anything and raises
only :class:`~sdk.errors.WireFormatError` (or its :class:`~sdk.errors.PayloadTooLarge`).
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sdk.errors import PayloadTooLarge, WireFormatError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DTYPES",
    "ERROR_CODES",
    "MAGIC",
    "VERSION",
    "ErrorCode",
    "Message",
    "decode",
    "encode",
    "error_reply",
    "new_request_id",
    "reply",
    "request",
]

MAGIC = b"FDG"
VERSION = 1
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 16
MAX_RANK = 8
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
ErrorCode = Literal["bad_request", "unknown_model", "overloaded", "deadline", "internal", "unauthorized"]
ERROR_CODES: tuple[ErrorCode, ...] = (
    "bad_request",
    "unknown_model",
    "overloaded",
    "deadline",
    "internal",
    "unauthorized",
)
Kind = Literal["request", "reply", "error"]
_PREFIX = struct.Struct("<3sBI")


@dataclass(frozen=True, kw_only=True)
class Message:
    """One decoded message: header fields and named tensors."""

    kind: Kind
    id: str
    model: str = ""
    model_version: int | None = None
    deadline_ms: float | None = None
    priority: int = 0
    source: str = ""
    error_code: ErrorCode | None = None
    error_message: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def tensor(self) -> np.ndarray:
        """The first tensor (most messages carry exactly one)."""
        if not self.tensors:
            raise WireFormatError("the message carries no tensor")
        return next(iter(self.tensors.values()))


def new_request_id() -> str:
    """A fresh, unique request id."""
    return uuid.uuid4().hex


def request(
    model: str,
    x: np.ndarray,
    *,
    id: str | None = None,
    deadline_ms: float | None = None,
    priority: int = 0,
    model_version: int | None = None,
) -> Message:
    """A request to run ``model`` on ``x``; ``deadline_ms`` is the time budget left when it is sent."""
    return Message(
        kind="request",
        id=id or new_request_id(),
        model=model,
        model_version=model_version,
        deadline_ms=deadline_ms,
        priority=priority,
        tensors={"input": x},
    )


def reply(req: Message, outputs: np.ndarray, *, model_version: int | None, source: str = "") -> Message:
    """The answer to ``req``."""
    return Message(
        kind="reply",
        id=req.id,
        model=req.model,
        model_version=model_version,
        source=source,
        tensors={"output": outputs},
    )


def error_reply(request_id: str, code: ErrorCode, message: str, *, model: str = "") -> Message:
    """A typed error answer to the request ``request_id``."""
    return Message(kind="error", id=request_id, model=model, error_code=code, error_message=message[:1000])


def encode(message: Message) -> bytes:
    """Serialise ``message``; tensors go out little-endian and C-contiguous."""
    specs, blobs = [], []
    for name, array in message.tensors.items():
        arr = np.asarray(array)
        if arr.dtype.name not in DTYPES:
            raise WireFormatError(f"tensor {name!r}: dtype {arr.dtype} cannot travel (allowed: {', '.join(DTYPES)})")
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        specs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        blobs.append(arr.tobytes())
    header: dict[str, Any] = {"kind": message.kind, "id": message.id, "tensors": specs}
    optional = {
        "model": message.model,
        "model_version": message.model_version,
        "deadline_ms": message.deadline_ms,
        "priority": message.priority,
        "source": message.source,
        "error_code": message.error_code,
        "error_message": message.error_message,
    }
    header.update({k: v for k, v in optional.items() if v not in (None, "", 0)})
    raw = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_PREFIX.pack(MAGIC, VERSION, len(raw)), raw, *blobs])


def decode(payload: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Parse a payload of at most ``max_bytes``; raise WireFormatError for anything else."""
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes is over the {max_bytes}-byte bound")
    view = memoryview(payload)
    if len(view) < _PREFIX.size:
        raise WireFormatError(f"payload of {len(view)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireFormatError("not a fedge payload (bad magic)")
    if version != VERSION:
        raise WireFormatError(f"wire format version {version} is not supported (this side speaks {VERSION})")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(view):
        raise WireFormatError(f"header length {header_len} runs past the payload")
    try:
        header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + header_len]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireFormatError("header is not a JSON object")
    tensors = _read_tensors(header.get("tensors"), view[_PREFIX.size + header_len :])
    return Message(
        kind=_field(header, "kind", str, choices=("request", "reply", "error")),
        id=_field(header, "id", str, required=True, max_len=128),
        model=_field(header, "model", str, default="", max_len=128),
        model_version=_field(header, "model_version", int, default=None),
        deadline_ms=_field(header, "deadline_ms", float, default=None),
        priority=_field(header, "priority", int, default=0),
        source=_field(header, "source", str, default="", max_len=128),
        error_code=_field(header, "error_code", str, default=None, choices=ERROR_CODES),
        error_message=_field(header, "error_message", str, default="", max_len=4000),
        tensors=tensors,
    )


def _field(
    header: dict[str, Any],
    key: str,
    kind: type,
    *,
    default: Any = ...,
    required: bool = False,
    choices: tuple[str, ...] | None = None,
    max_len: int | None = None,
) -> Any:
    if key not in header or header[key] is None:
        if default is ... or required:
            raise WireFormatError(f"header field {key!r} is missing")
        return default
    value = header[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise WireFormatError(f"header field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WireFormatError(f"header field {key!r} must be finite")
    if choices is not None and value not in choices:
        raise WireFormatError(f"header field {key!r} is {value!r}, expected one of {', '.join(choices)}")
    if max_len is not None and len(value) > max_len:
        raise WireFormatError(f"header field {key!r} is longer than {max_len}")
    return value


def _read_tensors(specs: Any, body: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise WireFormatError(f"header field 'tensors' must be a list of at most {MAX_TENSORS} entries")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise WireFormatError(f"tensor {i} is not an object")
        name = _field(spec, "name", str, required=True, max_len=64)
        dtype_name = _field(spec, "dtype", str, required=True, choices=DTYPES)
        shape = spec.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape)
        ):
            raise WireFormatError(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} non-negative ints")
        dtype = np.dtype(dtype_name).newbyteorder("<")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > len(body):
            raise WireFormatError(f"tensor {name!r} needs {nbytes} bytes, {len(body) - offset} are left (truncated)")
        arr = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        tensors[name] = arr.astype(dtype.newbyteorder("="), copy=False)
        offset += nbytes
    if offset != len(body):
        raise WireFormatError(f"{len(body) - offset} bytes follow the last tensor")
    return tensors
