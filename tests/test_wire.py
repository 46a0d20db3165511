"""The wire format round-trips tensors and refuses every malformed payload with WireFormatError."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk import wire
from sdk.errors import PayloadTooLarge, WireFormatError


@pytest.mark.parametrize("dtype", wire.DTYPES)
def test_round_trip_every_dtype(dtype):
    x = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    msg = wire.decode(wire.encode(wire.request("digits", x, deadline_ms=25.0, priority=1, model_version=3)))

    assert msg.kind == "request"
    assert msg.model == "digits"
    assert msg.deadline_ms == 25.0
    assert msg.priority == 1
    assert msg.model_version == 3
    assert msg.tensor.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(msg.tensor, x)


def test_reply_and_error_round_trip():
    req = wire.request("digits", np.zeros((1, 2), np.float32))
    rep = wire.decode(wire.encode(wire.reply(req, np.ones((1, 10), np.float32), model_version=2, source="w1")))
    err = wire.decode(wire.encode(wire.error_reply(req.id, "overloaded", "queue full", model="digits")))

    assert (rep.kind, rep.id, rep.model_version, rep.source) == ("reply", req.id, 2, "w1")
    assert (err.kind, err.id, err.error_code, err.error_message) == ("error", req.id, "overloaded", "queue full")


def test_big_endian_input_travels_as_little_endian():
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    np.testing.assert_array_equal(wire.decode(wire.encode(wire.request("m", x))).tensor, x)


def test_object_arrays_cannot_travel():
    with pytest.raises(WireFormatError, match="cannot travel"):
        wire.encode(wire.request("m", np.array([{"a": 1}], dtype=object)))


def _payload(header: dict, body: bytes = b"", version: int = wire.VERSION, magic: bytes = wire.MAGIC) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<3sBI", magic, version, len(raw)) + raw + body


GOOD = {"kind": "request", "id": "abc", "model": "m", "tensors": [{"name": "x", "dtype": "float32", "shape": [2]}]}


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        pytest.param(b"", "shorter than", id="empty"),
        pytest.param(b"FDG\x01\x00", "shorter than", id="short-prefix"),
        pytest.param(_payload(GOOD, bytes(8), magic=b"XYZ"), "bad magic", id="magic"),
        pytest.param(_payload(GOOD, bytes(8), version=2), "version 2", id="version"),
        pytest.param(struct.pack("<3sBI", b"FDG", 1, 999) + b"{}", "runs past", id="header-length"),
        pytest.param(struct.pack("<3sBI", b"FDG", 1, 3) + b"{no", "not valid JSON", id="json"),
        pytest.param(_payload([1, 2]), "not a JSON object", id="header-list"),
        pytest.param(_payload(GOOD, bytes(4)), "truncated", id="truncated-tensor"),
        pytest.param(_payload(GOOD, bytes(12)), "follow the last tensor", id="trailing-bytes"),
        pytest.param(_payload({**GOOD, "kind": "exec"}, bytes(8)), "'kind'", id="kind"),
        pytest.param(_payload({**GOOD, "id": 5}, bytes(8)), "'id' must be str", id="id-type"),
        pytest.param(_payload({**GOOD, "deadline_ms": "soon"}, bytes(8)), "deadline_ms", id="deadline-type"),
        pytest.param(_payload({**GOOD, "priority": True}, bytes(8)), "priority", id="bool-priority"),
        pytest.param(
            _payload({**GOOD, "tensors": [{"name": "x", "dtype": "object", "shape": [1]}]}, bytes(8)),
            "dtype",
            id="dtype",
        ),
        pytest.param(
            _payload({**GOOD, "tensors": [{"name": "x", "dtype": "float32", "shape": [-1]}]}), "shape", id="neg-dim"
        ),
        pytest.param(
            _payload({**GOOD, "tensors": [{"name": "x", "dtype": "uint8", "shape": [1 << 40]}]}),
            "truncated",
            id="huge-shape",
        ),
    ],
)
def test_malformed_payloads(payload, match):
    with pytest.raises(WireFormatError, match=match):
        wire.decode(payload)


def test_size_bound_is_checked_before_parsing():
    payload = wire.encode(wire.request("m", np.zeros(1000, np.float32)))
    with pytest.raises(PayloadTooLarge, match="over the 1000-byte bound"):
        wire.decode(payload, max_bytes=1000)
    assert wire.decode(payload, max_bytes=len(payload)).tensor.shape == (1000,)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_wire_format_error(data):
    with contextlib.suppress(WireFormatError):
        wire.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=200))
def test_corrupted_valid_payloads_raise_only_wire_format_error(noise, position):
    payload = bytearray(wire.encode(wire.request("m", np.arange(6, dtype=np.float32))))
    position = position % len(payload)
    payload[position : position + len(noise)] = noise
    with contextlib.suppress(WireFormatError):
        wire.decode(bytes(payload))
