"""One error table: each wire code has one HTTP status, one device-side error and one verdict on the cloud's health."""

from __future__ import annotations

import uuid
from typing import get_args

import numpy as np
import pytest
from peers import subscribed_client
from waiting import PATIENCE_S

from sdk import outcomes, topics, wire
from sdk.edge.breaker import CircuitBreaker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import (
    CloudUnavailable,
    Conflict,
    DeadlineExceeded,
    InputShapeError,
    ModelIntegrityError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RemoteError,
    Unauthorized,
    UnknownModel,
    WireFormatError,
)
from sdk.mqtt import MqttSettings, publish_properties

NEWER_CODE = "rate_limited"  # a code a newer cloud may send and this side does not know


def test_the_error_code_type_lists_the_table():
    assert set(get_args(outcomes.ErrorCode)) == set(outcomes.ERROR_CODES) == set(outcomes.OUTCOMES)


@pytest.mark.parametrize("code", outcomes.ERROR_CODES)
def test_every_code_maps_both_ways(code):
    row = outcomes.OUTCOMES[code]
    error = outcomes.error_for(code, "why")

    assert type(error) is row.error
    assert (getattr(error, "code", None) or outcomes.error_code_for(error)) == code  # the device reads the code back
    assert outcomes.counts_against_cloud(error) is row.unhealthy
    assert outcomes.code_for_status(row.http_status) == code
    for raised in row.raised_for:
        assert outcomes.error_code_for(raised("why")) == code


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (WireFormatError("x"), "bad_request", 400),
        (PayloadTooLarge("x"), "bad_request", 413),
        (InputShapeError("x"), "bad_request", 422),
        (ModelIntegrityError("x"), "bad_request", 422),
        (Conflict("x"), "bad_request", 409),
        (NotFound("x"), "unknown_model", 404),
        (UnknownModel("x"), "unknown_model", 404),
        (Unauthorized("x"), "unauthorized", 401),
        (Overloaded("x"), "overloaded", 503),
        (DeadlineExceeded("x"), "deadline", 504),
        (RuntimeError("x"), "internal", 500),
    ],
)
def test_a_cloud_side_exception_gets_its_code_and_status(exc, code, status):
    assert (outcomes.error_code_for(exc), outcomes.http_status_for(exc)) == (code, status)


def test_a_status_the_table_does_not_hold_is_a_bad_request_or_internal():
    assert (outcomes.code_for_status(405), outcomes.code_for_status(502)) == ("bad_request", "internal")


def test_an_unknown_code_is_a_remote_error_that_counts_against_the_cloud():
    error = outcomes.error_for(NEWER_CODE, "slow down")

    assert type(error) is RemoteError
    assert error.code == NEWER_CODE
    assert outcomes.counts_against_cloud(error)
    assert outcomes.counts_against_cloud(CloudUnavailable("no broker"))


@pytest.mark.parametrize("code", [*outcomes.ERROR_CODES, NEWER_CODE])
def test_a_device_raises_the_tables_error_for_a_clouds_answer(module_broker, code):
    settings = MqttSettings.from_address(module_broker.address)

    def answer(client, userdata, msg):  # a cloud that answers every request with the error ``code``
        req = wire.decode(msg.payload)
        props = publish_properties(correlation=msg.properties.CorrelationData)
        error = wire.Message(kind="error", id=req.id, error_code=code, error_message="told so")
        client.publish(msg.properties.ResponseTopic, wire.encode(error), qos=1, properties=props)

    model = f"m-{uuid.uuid4().hex[:6]}"
    cloud = subscribed_client(settings, topics.infer(model), answer)
    breaker = CircuitBreaker(failure_threshold=1)
    expected = outcomes.OUTCOMES.get(code, outcomes.OUTCOMES["internal"]).error
    try:
        with (
            CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:6]}", breaker=breaker) as device,
            pytest.raises(expected) as info,
        ):
            device.infer(model, np.zeros((1, 2), np.float32), timeout_s=PATIENCE_S)
    finally:
        cloud.disconnect()
        cloud.loop_stop()

    assert "told so" in str(info.value)
    assert getattr(info.value, "code", code) == code
    unhealthy = outcomes.OUTCOMES[code].unhealthy if code in outcomes.OUTCOMES else True
    assert breaker.state == ("open" if unhealthy else "closed")
