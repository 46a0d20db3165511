"""The wire format round-trips tensors and refuses every malformed payload with WireFormatError."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk import outcomes, wire
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
        pytest.param(_payload({**GOOD, "tensors": [GOOD["tensors"][0]] * 17}), "at most 16", id="too-many-tensors"),
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
            "spans more than",
            id="huge-shape",
        ),
        pytest.param(
            _payload({**GOOD, "tensors": [{"name": "x", "dtype": "float64", "shape": [1 << 20, 64]}]}),
            "truncated",
            id="shape-past-the-body",
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


# --- exactness: every field and every shape comes back as it was sent ---------------------------------------------


def _huge_shape_payload(shape: list) -> bytes:
    return _payload({**GOOD, "tensors": [{"name": "x", "dtype": "float32", "shape": shape}]})


@pytest.mark.parametrize(
    "shape",
    [[0, 2**62], [0, 2**40, 2**40], [2**31, 0], [2**40, 2**40], [0] * 7 + [10**400]],
    ids=["zero-then-2^62", "zero-then-2^40x2^40", "2^31-then-zero", "2^40x2^40", "zeros-then-10^400"],
)
def test_a_huge_dimension_is_a_wire_format_error_even_next_to_a_zero(shape):
    with pytest.raises(WireFormatError, match="shape"):
        wire.decode(_huge_shape_payload(shape))


@pytest.mark.parametrize(
    ("key", "value"),
    [("deadline_ms", 10**400), ("deadline_ms", -(10**400)), ("model_version", 10**400), ("priority", -(2**64))],
    ids=["deadline-10^400", "deadline-minus-10^400", "version-10^400", "priority-minus-2^64"],
)
def test_a_number_too_big_for_its_field_is_a_wire_format_error(key, value):
    with pytest.raises(WireFormatError, match=key):
        wire.decode(_payload({**GOOD, key: value}, bytes(8)))


def test_zero_values_are_not_taken_for_absent_ones():
    sent = wire.request("digits", np.zeros((1, 2), np.float32), deadline_ms=0.0, priority=0, model_version=0)
    got = wire.decode(wire.encode(sent))

    assert (got.model_version, got.deadline_ms, got.priority) == (0, 0.0, 0)
    absent = wire.decode(wire.encode(wire.request("digits", np.zeros((1, 2), np.float32))))
    assert (absent.model_version, absent.deadline_ms, absent.priority) == (None, None, 0)


def test_a_zero_d_tensor_keeps_its_shape():
    got = wire.decode(wire.encode(wire.request("m", np.array(2.5, np.float64)))).tensor

    assert got.shape == ()
    assert got.dtype == np.float64
    assert got == 2.5


def test_an_unknown_error_code_from_a_newer_cloud_decodes():
    got = wire.decode(wire.encode(wire.Message(kind="error", id="r1", error_code="rate_limited", error_message="x")))

    assert (got.error_code, got.error_message) == ("rate_limited", "x")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(wire.request("m", np.zeros([1] * (wire.MAX_RANK + 1), np.float32)), id="rank"),
        pytest.param(wire.Message(kind="request", id="x" * 129), id="long-id"),
        pytest.param(wire.Message(kind="request", id="a", deadline_ms=float("nan")), id="nan-deadline"),
        pytest.param(wire.Message(kind="request", id="a", priority=True), id="bool-priority"),
        pytest.param(wire.Message(kind="error", id="a", error_code="Bad Code"), id="error-code"),
        pytest.param(
            wire.Message(kind="request", id="a", tensors={str(i): np.zeros(1) for i in range(wire.MAX_TENSORS + 1)}),
            id="too-many-tensors",
        ),
        pytest.param(wire.Message(kind="request", id="a", tensors={"n" * 65: np.zeros(1)}), id="long-name"),
    ],
)
def test_encode_refuses_what_decode_would_refuse(message):
    with pytest.raises(WireFormatError):
        wire.encode(message)


def test_two_tensors_of_one_name_are_refused():
    spec = {"name": "x", "dtype": "uint8", "shape": [1]}
    with pytest.raises(WireFormatError, match="twice"):
        wire.decode(_payload({**GOOD, "tensors": [spec, spec]}, bytes(2)))


# --- property tests on structured messages and structured, hostile headers -------------------------------------------

_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_ENDIAN = {"float32": "<>", "float16": "<>", "float64": "<>", "int32": "<>", "int64": "<>"}


@st.composite
def _arrays(draw) -> np.ndarray:
    name = draw(st.sampled_from(wire.DTYPES))
    dtype = np.dtype(name).newbyteorder(draw(st.sampled_from(_ENDIAN.get(name, "="))))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=wire.MAX_RANK, min_side=0, max_side=3))
    return draw(hnp.arrays(dtype, shape))


_messages = st.builds(
    wire.Message,
    kind=st.sampled_from(("request", "reply", "error")),
    id=st.text(max_size=128),
    model=st.text(max_size=128),
    model_version=st.none() | _INT64,
    deadline_ms=st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    priority=_INT64,
    source=st.text(max_size=128),
    error_code=st.none() | st.sampled_from(outcomes.ERROR_CODES) | st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"),
    error_message=st.text(max_size=300),
    tensors=st.dictionaries(st.text(max_size=64), _arrays(), max_size=4),
)


def _bits(arr: np.ndarray) -> bytes:
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _assert_same(got: wire.Message, sent: wire.Message) -> None:
    scalars = ("kind", "id", "model", "model_version", "deadline_ms", "priority", "source", "error_code")
    assert [getattr(got, k) for k in scalars] == [getattr(sent, k) for k in scalars]
    assert got.error_message == sent.error_message
    assert list(got.tensors) == list(sent.tensors)
    for name, arr in sent.tensors.items():
        back = got.tensors[name]
        assert (back.shape, back.dtype) == (arr.shape, arr.dtype.newbyteorder("="))
        assert _bits(back) == _bits(arr)  # bit for bit: NaN payloads and -0.0 included


@settings(max_examples=250, deadline=None)
@given(_messages)
def test_every_structured_message_round_trips_exactly(sent):
    _assert_same(wire.decode(wire.encode(sent)), sent)


_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_dims = st.one_of(
    st.integers(min_value=-3, max_value=4),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 2**31 - 1, 2**31, 2**62, 2**63, 2**64, 10**400]),
    st.booleans(),
    st.floats(),
    st.none(),
    st.text(max_size=2),
)
_numbers = st.one_of(
    _INT64,
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([2**63, -(2**63) - 1, 10**400]),
    st.floats(),
    st.booleans(),
)


def _spoiled(plausible: dict) -> st.SearchStrategy[dict]:
    """``plausible`` with up to two of its keys (or new ones) set to junk, or dropped."""
    keys = st.sampled_from([*plausible, "extra"])
    return st.builds(
        lambda junk, dropped: {k: v for k, v in {**plausible, **junk}.items() if k not in dropped},
        st.dictionaries(keys, _junk, max_size=2),
        st.sets(keys, max_size=1),
    )


_specs = st.fixed_dictionaries(
    {
        "name": st.text(max_size=70),
        "dtype": st.sampled_from((*wire.DTYPES, "object", "float128", "<f4", "")),
        "shape": st.lists(_dims, max_size=wire.MAX_RANK + 2),
    }
).flatmap(lambda spec: st.just(spec) | _spoiled(spec))
_headers = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(("request", "reply", "error")),
        "id": st.text(max_size=140),
        "tensors": st.lists(_specs, max_size=3),
    },
    optional={
        "model": st.text(max_size=140),
        "model_version": _numbers,
        "deadline_ms": _numbers,
        "priority": _numbers,
        "source": st.text(max_size=140),
        "error_code": st.sampled_from(outcomes.ERROR_CODES) | st.text(max_size=40),
        "error_message": st.text(max_size=50),
    },
).flatmap(lambda header: st.just(header) | _spoiled(header))


@settings(max_examples=300, deadline=None)
@given(_headers, st.binary(max_size=64))
def test_hostile_headers_raise_only_wire_format_error(header, body):
    payload = _payload(header, body)  # json.dumps writes NaN and Infinity literals and 400-digit numbers as they are
    try:
        got = wire.decode(payload)
    except WireFormatError:
        return
    _assert_same(wire.decode(wire.encode(got)), got)  # what decodes can travel again, unchanged


@settings(max_examples=300, deadline=None)
@given(_headers)
def test_the_one_pass_header_check_agrees_with_the_field_by_field_one(header):
    try:
        expected = wire._checked_fields(header)
    except WireFormatError:
        expected = None  # refused: the one-pass check must leave it to the field-by-field one
    plain = wire._plain_fields(header)
    assert plain is None or plain == expected


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        pytest.param({"deadline_ms": 5}, "deadline_ms", 5.0, id="int-deadline-becomes-float"),
        pytest.param({"model": None}, "model", "", id="null-model-is-the-default"),
        pytest.param({"newer_field": [1]}, "model", "m", id="unknown-key-ignored"),
    ],
)
def test_headers_off_the_one_pass_path_decode_as_before(extra, field, value):
    got = getattr(wire.decode(_payload({**GOOD, **extra}, bytes(8))), field)
    assert got == value
    assert type(got) is type(value)
