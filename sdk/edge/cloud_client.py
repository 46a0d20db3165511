"""The device's MQTT client for cloud inference: request/response over MQTT v5 with a deadline and a breaker.

Each request goes to ``fedge/v1/infer/<model>`` with the device's reply topic as
ResponseTopic and the request id as CorrelationData; the answer comes back there.
A call never waits past its deadline: a lost connection fails every waiting call
at once, and an open circuit fails new calls before they are sent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from sdk import outcomes, topics, wire
from sdk.edge.breaker import CircuitBreaker
from sdk.errors import (
    CloudError,
    CloudUnavailable,
    DeadlineExceeded,
    RemoteError,
    WireFormatError,
)
from sdk.mqtt import MqttSettings, connect, make_client, publish_properties

__all__ = ["CloudClient"]

log = logging.getLogger("fedge.edge.cloud")


class CloudClient:
    """Sends inference requests to the cloud workers: ``CloudClient(settings, device_id="pi-7").start()``."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str | None = None,
        breaker: CircuitBreaker | None = None,
        max_payload_bytes: int = wire.DEFAULT_MAX_BYTES,
    ) -> None:
        """Prepare a client; nothing connects before :meth:`start`."""
        self.settings = settings
        self.device_id = topics.check_segment(device_id or f"device-{uuid.uuid4().hex[:12]}", "device id")
        self.breaker = breaker or CircuitBreaker()
        self.max_payload_bytes = max_payload_bytes
        self.reply_topic = topics.device_replies(self.device_id)
        self._pending: dict[bytes, Future[wire.Message]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = make_client(settings, f"{self.device_id}-infer")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up and the reply topic subscribed."""
        return self._ready.is_set()

    def start(self, *, wait: bool = False) -> CloudClient:
        """Connect in the background; with ``wait``, block until ready (raises CloudUnavailable)."""
        connect(self._client, self.settings, wait=False)
        if wait and not self._ready.wait(self.settings.connect_timeout_s):
            raise CloudUnavailable(f"MQTT broker {self.settings.host}:{self.settings.port} did not accept us in time")
        return self

    def close(self) -> None:
        """Disconnect and fail the calls still waiting."""
        self._client.disconnect()
        self._client.loop_stop()
        self._fail_pending(CloudUnavailable("the cloud client was closed"))

    def infer(
        self, model: str, x: np.ndarray, *, timeout_s: float, priority: int = 0, model_version: int | None = None
    ) -> wire.Message:
        """Ask the cloud to run ``model`` on ``x``; return the reply within ``timeout_s`` or raise.

        Raises:
            CloudUnavailable: not connected, circuit open, or the connection dropped.
            DeadlineExceeded: no answer within ``timeout_s`` (or the cloud dropped it as late).
            Overloaded: the cloud shed the request.
            UnknownModel: the cloud does not serve ``model``.
            RemoteError: the cloud refused the request for another reason.
        """
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left for a cloud call")
        if not self.breaker.allow():
            raise CloudUnavailable("circuit open: the cloud failed recently")
        if not self._ready.is_set():
            self.breaker.record_failure()
            raise CloudUnavailable("not connected to the broker")
        request = wire.request(model, x, deadline_ms=timeout_s * 1000.0, priority=priority, model_version=model_version)
        key = request.id.encode()
        future: Future[wire.Message] = Future()
        with self._lock:
            self._pending[key] = future
        try:
            props = publish_properties(
                response_topic=self.reply_topic, correlation=key, expiry_s=max(1, int(timeout_s + 1))
            )
            info = self._client.publish(topics.infer(model), wire.encode(request), qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise CloudUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")
            try:
                reply = future.result(timeout_s)
            except FutureTimeout:
                raise DeadlineExceeded(f"no answer from the cloud within {timeout_s * 1000:.0f} ms") from None
        except CloudError as exc:
            if _cloud_is_up(exc):
                self.breaker.record_success()
            else:
                self.breaker.record_failure()
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
        self.breaker.record_success()
        return reply

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.reply_topic, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._ready.clear()
        self._fail_pending(CloudUnavailable(f"lost the broker connection ({reason})"))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        key = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        with self._lock:
            future = self._pending.get(key) if key else None
        if future is None:
            return  # a late answer to a call that already gave up
        try:
            message = wire.decode(msg.payload, max_bytes=self.max_payload_bytes)
        except WireFormatError as exc:
            _settle(future, exc=RemoteError("bad_reply", str(exc)))
            return
        if message.kind == "error":
            _settle(future, exc=_remote_error(message))
        else:
            _settle(future, result=message)

    def _fail_pending(self, exc: CloudError) -> None:
        with self._lock:
            waiting = list(self._pending.values())
        for future in waiting:
            _settle(future, exc=exc)

    def __enter__(self) -> CloudClient:
        return self.start(wait=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _cloud_is_up(exc: CloudError) -> bool:
    return not outcomes.counts_against_cloud(exc)


def _remote_error(message: wire.Message) -> CloudError:
    return outcomes.error_for(message.error_code or "internal", message.error_message or "error")


def _settle(future: Future[wire.Message], *, result: wire.Message | None = None, exc: Exception | None = None) -> None:
    with contextlib.suppress(InvalidStateError):  # another thread settled it first
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
