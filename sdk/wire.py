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
model version, who answered) or an error (a code from :data:`sdk.outcomes.ERROR_CODES`,
or any other ``[a-z][a-z0-9_]*`` code a newer peer sends, and a message).

Exact: :func:`decode` gives back every field :func:`encode` was given. A header field
is left out only when it holds its default (``None``, ``""``, and ``0`` for
``priority``), so ``model_version=0`` and ``deadline_ms=0.0`` travel and come back
as such; a 0-d tensor stays 0-d, and every dtype comes back bit for bit (in native
byte order). :func:`encode` refuses (``WireFormatError``) a message that
:func:`decode` would refuse, so what one side sends the other reads.

Bounded: :func:`decode` checks the size bound before it reads anything, and every
dimension and byte count before numpy sees them (a shape holds at most
:data:`MAX_ELEMENTS` elements even with its zero dimensions taken as one; integers are
64-bit), so that it raises only :class:`~sdk.errors.WireFormatError` (or its
:class:`~sdk.errors.PayloadTooLarge`) whatever the bytes. Payloads of format version 1
written before these rules decode as before.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from sdk.errors import PayloadTooLarge, WireFormatError
from sdk.outcomes import ErrorCode

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DTYPES",
    "MAGIC",
    "MAX_ELEMENTS",
    "MAX_RANK",
    "MAX_TENSORS",
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
MAX_ELEMENTS = 2**31 - 1
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
Kind = Literal["request", "reply", "error"]
_PREFIX = struct.Struct("<3sBI")
_INT64 = (-(2**63), 2**63 - 1)
_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Looked up once: numpy's dtype names and byte-order conversions cost microseconds a call.
_LITTLE = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
_NATIVE = {name: np.dtype(name).newbyteorder("=") for name in DTYPES}
_WIRE_DTYPE = {np.dtype(name).newbyteorder(order): name for name in DTYPES for order in "<>="}
_JSON = json.JSONEncoder(separators=(",", ":"))
_JSON_DECODER = json.JSONDecoder()
#: Whether tensors read off the wire need their bytes swapped to native order (only on big-endian hosts).
_SWAP = sys.byteorder != "little"
#: The header's message fields: (key, type, default (``...``: required), allowed values, longest length).
_HEADER_FIELDS: tuple[tuple[str, type, Any, tuple[str, ...] | None, int | None], ...] = (
    ("kind", str, ..., ("request", "reply", "error"), None),
    ("id", str, ..., None, 128),
    ("model", str, "", None, 128),
    ("model_version", int, None, None, None),
    ("deadline_ms", float, None, None, None),
    ("priority", int, 0, None, None),
    ("source", str, "", None, 128),
    ("error_code", str, None, None, 32),
    ("error_message", str, "", None, 4000),
)
_DEFAULTS = {key: None if default is ... else default for key, _, default, _, _ in _HEADER_FIELDS}
_PLAIN = {key: (kind, choices, max_len) for key, kind, _, choices, max_len in _HEADER_FIELDS}


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
    error_code: str | None = None  # one of sdk.outcomes.ERROR_CODES, or a newer peer's code
    error_message: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def tensor(self) -> np.ndarray:
        """The first tensor (most messages carry exactly one)."""
        if not self.tensors:
            raise WireFormatError("the message carries no tensor")
        return next(iter(self.tensors.values()))


_OPTIONAL = tuple((f.name, f.default) for f in fields(Message) if f.name not in ("kind", "id", "tensors"))


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
    """Serialise ``message``; tensors go out little-endian and C-contiguous.

    Raises:
        WireFormatError: the message holds something :func:`decode` would refuse (a dtype that
            cannot travel, a rank over MAX_RANK, a field of the wrong type or length ...).
    """
    specs, blobs = [], []
    for name, array in message.tensors.items():
        arr = np.asarray(array)
        dtype = _WIRE_DTYPE.get(arr.dtype)
        if dtype is None:
            raise WireFormatError(f"tensor {name!r}: dtype {arr.dtype} cannot travel (allowed: {', '.join(DTYPES)})")
        if arr.dtype != _LITTLE[dtype] or not arr.flags.c_contiguous:
            arr = np.asarray(arr, dtype=_LITTLE[dtype], order="C")  # keeps 0-d arrays 0-d
        specs.append({"name": name, "dtype": dtype, "shape": list(arr.shape)})
        blobs.append(arr.tobytes())
    header: dict[str, Any] = {"kind": message.kind, "id": message.id, "tensors": specs}
    for key, default in _OPTIONAL:  # a default is left out; 0, 0.0 and "" of a field whose default is None travel
        value = getattr(message, key)
        if not (type(value) is type(default) and value == default):
            header[key] = value.item() if isinstance(value, np.generic) else value
    _read_header(header)  # the checks decode makes, so that what goes out comes back
    raw = _JSON.encode(header).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise WireFormatError(f"the header of {len(raw)} bytes is over the {MAX_HEADER_BYTES}-byte bound")
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
        header = _parse_json(str(view[_PREFIX.size : _PREFIX.size + header_len], "utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError(f"header is not valid JSON: {exc}") from None
    fields_, specs = _read_header(header)
    return Message(**fields_, tensors=_read_tensors(specs, view[_PREFIX.size + header_len :]))


def _parse_json(text: str) -> Any:
    """The JSON document ``text`` holds, as ``json.loads`` reads it; the common case in one call of the C scanner."""
    try:
        value, end = _JSON_DECODER.raw_decode(text)
    except ValueError:
        return json.loads(text)  # leading whitespace is allowed there; else it raises the error to report
    return value if end == len(text) else json.loads(text)


def _read_header(header: Any) -> tuple[dict[str, Any], list[tuple[str, str, tuple[int, ...], int]]]:
    """The checked message fields of a parsed header, and its tensors as (name, dtype name, shape, element count)."""
    if not isinstance(header, dict):
        raise WireFormatError("header is not a JSON object")
    fields_ = _plain_fields(header)
    if fields_ is None:
        fields_ = _checked_fields(header)
    if fields_["error_code"] is not None and not _CODE.fullmatch(fields_["error_code"]):
        raise WireFormatError(f"header field 'error_code' is {fields_['error_code']!r}, not a [a-z][a-z0-9_]* code")
    specs = header.get("tensors")
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise WireFormatError(f"header field 'tensors' must be a list of at most {MAX_TENSORS} entries")
    tensors: list[tuple[str, str, tuple[int, ...], int]] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise WireFormatError(f"tensor {i} is not an object")
        name = spec.get("name")
        if type(name) is not str or len(name) > 64:
            name = _field(spec, "name", str, required=True, max_len=64)
        if any(name == seen for seen, *_ in tensors):
            raise WireFormatError(f"tensor {name!r} is named twice")
        dtype = spec.get("dtype")
        if type(dtype) is not str or dtype not in _LITTLE:
            dtype = _field(spec, "dtype", str, required=True, choices=DTYPES)
        shape = _shape(name, spec.get("shape"))
        tensors.append((name, dtype, shape, math.prod(shape)))
    return fields_, tensors


def _plain_fields(header: dict[str, Any]) -> dict[str, Any] | None:
    """The message fields of a header in one pass over its keys when each is plainly valid; else None.

    A header's few keys are walked instead of every field, each checked in line: a call per
    field costs more than the checks. Anything unusual (a null, an int where a float goes, a
    missing required field) is left to :func:`_checked_fields`, which says what is wrong.
    """
    fields_ = dict(_DEFAULTS)
    for key, value in header.items():
        spec = _PLAIN.get(key)
        if spec is None:  # "tensors", or a field a newer peer sends
            continue
        kind, choices, max_len = spec
        if type(value) is not kind:
            return None
        if kind is str:
            if (choices is not None and value not in choices) or (max_len is not None and len(value) > max_len):
                return None
        elif kind is int:
            if not _INT64[0] <= value <= _INT64[1]:
                return None
        elif not math.isfinite(value):
            return None
        fields_[key] = value
    if fields_["kind"] is None or fields_["id"] is None:
        return None
    return fields_


def _checked_fields(header: dict[str, Any]) -> dict[str, Any]:
    """The message fields of a header, field by field in table order; raise for the first bad one."""
    return {
        key: _field(header, key, kind, default=default, choices=choices, max_len=max_len)
        for key, kind, default, choices, max_len in _HEADER_FIELDS
    }


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    # Checked before numpy sees it: numpy refuses a shape whose size overflows even when a zero makes it empty.
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise WireFormatError(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} dimensions")
    span = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise WireFormatError(f"tensor {name!r}: shape {shape!r} holds {d!r}, not a non-negative int")
        span *= max(d, 1)  # each factor is checked before the next multiplication, so span stays <= 2**62
        if span > MAX_ELEMENTS:
            raise WireFormatError(f"tensor {name!r}: shape spans more than {MAX_ELEMENTS} elements")
    return tuple(shape)


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
    if isinstance(value, bool) or not isinstance(value, (float, int) if kind is float else kind):
        raise WireFormatError(f"header field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise WireFormatError(f"header field {key!r} is outside the 64-bit range")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise WireFormatError(f"header field {key!r} must be finite")
    if choices is not None and value not in choices:
        raise WireFormatError(f"header field {key!r} is {value!r}, expected one of {', '.join(choices)}")
    if max_len is not None and len(value) > max_len:
        raise WireFormatError(f"header field {key!r} is longer than {max_len}")
    return value


def _read_tensors(specs: list[tuple[str, str, tuple[int, ...], int]], body: memoryview) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype_name, shape, count in specs:
        dtype, native = _LITTLE[dtype_name], _NATIVE[dtype_name]
        nbytes = count * dtype.itemsize
        if nbytes > len(body) - offset:
            raise WireFormatError(f"tensor {name!r} needs {nbytes} bytes, {len(body) - offset} are left (truncated)")
        if count == 0:  # nothing to read, and some numpy versions refuse frombuffer at the end of a buffer
            tensors[name] = np.empty(shape, native)
        else:
            arr = np.ndarray(shape, dtype, buffer=body, offset=offset)  # a read-only view: one numpy call
            tensors[name] = arr.astype(native) if _SWAP else arr
        offset += nbytes
    if offset != len(body):
        raise WireFormatError(f"{len(body) - offset} bytes follow the last tensor")
    return tensors
