"""The device's MQTT client for cloud inference: request/response over MQTT v5 with a deadline and a breaker.

Each request goes to ``fedge/v1/infer/<model>`` with the device's reply topic as
ResponseTopic and the request id as CorrelationData; the answer comes back there.
A call never waits past its deadline: a lost connection fails every waiting call
at once, and an open circuit fails new calls before they are sent.

At least once: a call with no answer by ``resend_at`` of its deadline is sent once more with
the same request id (workers de-duplicate it), and the first answer wins; a late one is dropped.
Replies are subscribed at QoS 0: the session is clean, so a broker would not redeliver a QoS 1
reply lost with the connection either, and the retry is what recovers it.
A call writes its request and reads its own reply on the calling thread
(:class:`~sdk.mqtt_caller.CallerLoop`): no network thread in between. Calls in flight at once take
turns reading, and whoever reads hands each reply's bytes to the call waiting for it, which
decodes them, so a burst of replies to many callers is not decoded one after another on one
thread. Nothing a stranger publishes to the reply topic stops the client: a reply that does not
decode fails its call with a typed error and is counted, each callback is a boundary that counts
what escapes it (``callback_errors``), and an exception out of paho's own packet handling is
counted too (``loop_errors``) while the connection goes on. Being offline is not a cloud failure:
it fails the call at once without touching the breaker, and a reconnect half-opens the breaker,
so a broker restart costs the reconnect, not the breaker's wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from concurrent.futures import Future, InvalidStateError
from types import TracebackType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from sdk import outcomes, topics, tracing, wire
from sdk.edge.breaker import CircuitBreaker
from sdk.errors import (
    CloudError,
    CloudUnavailable,
    DeadlineExceeded,
    RemoteError,
    WireFormatError,
)
from sdk.mqtt import MqttSettings, make_client, publish_properties
from sdk.mqtt_caller import CallerLoop

__all__ = ["CloudClient"]

log = logging.getLogger("fedge.edge.cloud")


class _ConnectionLost(CloudUnavailable):
    """The broker connection dropped under a call: says nothing about the cloud's health."""


class CloudClient:
    """Sends inference requests to the cloud workers: ``CloudClient(settings, device_id="pi-7").start()``."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str | None = None,
        breaker: CircuitBreaker | None = None,
        max_payload_bytes: int = wire.DEFAULT_MAX_BYTES,
        resend_at: float | None = 0.5,
    ) -> None:
        """Prepare a client; nothing connects before :meth:`start`.

        ``resend_at``: the share of a call's deadline after which, with no answer yet, the request
        goes out once more under the same id (None: one attempt only).
        """
        if resend_at is not None and not 0 < resend_at < 1:
            raise ValueError(f"resend_at must be within (0, 1) or None, got {resend_at}")
        self.settings = settings
        self.device_id = topics.check_segment(device_id or f"device-{uuid.uuid4().hex[:12]}", "device id")
        self.breaker = breaker or CircuitBreaker()
        self.max_payload_bytes = max_payload_bytes
        self.resend_at = resend_at
        self.reply_topic = topics.device_replies(self.device_id)
        self.resent = 0
        self.bad_replies = 0
        self.late_replies = 0
        self.callback_errors = 0
        self.connections = 0
        self._pending: dict[bytes, Future[bytes]] = {}  # request id -> the reply's payload
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = make_client(settings, f"{self.device_id}-infer")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._network = CallerLoop(self._client, settings, connecting=lambda: not self._ready.is_set())

    @property
    def loop_errors(self) -> int:
        """Exceptions out of paho's own packet handling, counted; the connection went on after each."""
        return self._network.errors

    @property
    def connected(self) -> bool:
        """Whether the connection is looked after, up, and the reply topic subscribed."""
        return self._ready.is_set() and self._network.alive

    def start(self, *, wait: bool = False) -> CloudClient:
        """Connect in the background; with ``wait``, block until ready (raises CloudUnavailable)."""
        self._network.start()
        if wait and not self._ready.wait(self.settings.connect_timeout_s):
            raise CloudUnavailable(f"MQTT broker {self.settings.host}:{self.settings.port} did not accept us in time")
        return self

    def close(self) -> None:
        """Disconnect and fail the calls still waiting."""
        self._network.stop()
        self._fail_pending(CloudUnavailable("the cloud client was closed"))

    def infer(
        self, model: str, x: np.ndarray, *, timeout_s: float, priority: int = 0, model_version: int | None = None
    ) -> wire.Message:
        """Ask the cloud to run ``model`` on ``x``; return the reply within ``timeout_s`` or raise.

        Unanswered by ``resend_at`` of ``timeout_s``, the request goes out once more under the same id.

        Raises:
            CloudUnavailable: not connected, circuit open, or the connection dropped.
            DeadlineExceeded: no answer within ``timeout_s`` (or the cloud dropped it as late).
            Overloaded: the cloud shed the request.
            UnknownModel: the cloud does not serve ``model``.
            RemoteError: the cloud refused the request for another reason.
        """
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left for a cloud call")
        deadline = time.monotonic() + timeout_s
        if not self._ready.is_set():  # offline is not a cloud failure: the reconnect half-opens the breaker
            raise CloudUnavailable("not connected to the broker")
        if not self.breaker.allow():
            raise CloudUnavailable("circuit open: the cloud failed recently")
        request = wire.request(model, x, deadline_ms=timeout_s * 1000.0, priority=priority, model_version=model_version)
        key = request.id.encode()
        future: Future[bytes] = Future()
        with self._lock:
            self._pending[key] = future
        try:
            self._send(request, key, timeout_s)
            reply = self._read_reply(self._wait(future, request, key, deadline))
        except _ConnectionLost:
            self.breaker.release()
            raise
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

    def _send(self, request: wire.Message, key: bytes, budget_s: float) -> None:
        props = publish_properties(response_topic=self.reply_topic, correlation=key, expiry_s=max(1, int(budget_s + 1)))
        tracing.inject(props)  # the calling predict's trace context, when tracing is on
        topic, payload = topics.infer(request.model), wire.encode(request)
        info = self._network.run(lambda: self._client.publish(topic, payload, qos=1, properties=props))
        if info.rc == mqtt.MQTT_ERR_NO_CONN:  # the connection went since the call started
            raise _ConnectionLost("lost the broker connection before the request went out")
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise CloudUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")

    def _wait(self, future: Future[bytes], request: wire.Message, key: bytes, deadline: float) -> bytes:
        """The first answer by ``deadline``; a request unanswered by ``resend_at`` of it goes out once more."""
        budget_s = deadline - time.monotonic()
        if self.resend_at is not None:
            self._network.wait(future, time.monotonic() + budget_s * self.resend_at)
            left_s = deadline - time.monotonic()
            if left_s > 0 and not future.done():
                # The same id: workers de-duplicate it, and whichever answer comes first wins.
                self._send(dataclasses.replace(request, deadline_ms=left_s * 1000.0), key, left_s)
                self.resent += 1
        self._network.wait(future, deadline)
        if not future.done():
            raise DeadlineExceeded(f"no answer from the cloud within {budget_s * 1000:.0f} ms")
        return future.result()

    def _read_reply(self, payload: bytes) -> wire.Message:
        """The reply in ``payload``, or the error it carries raised; a payload that is no reply is a bad reply."""
        try:
            message = wire.decode(payload, max_bytes=self.max_payload_bytes)
            if message.kind not in ("reply", "error"):
                raise WireFormatError(f"expected a reply, got a {message.kind}")
        except WireFormatError as exc:
            self.bad_replies += 1
            log.warning("dropped a bad reply on %s (%s: %s)", self.reply_topic, type(exc).__name__, exc)
            raise RemoteError("bad_reply", f"{type(exc).__name__}: {exc}") from None
        if message.kind == "error":
            raise _remote_error(message)
        return message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if not reason.is_failure:
                client.subscribe(self.reply_topic, qos=0)
        except Exception:  # the boundary: what escapes a callback would raise in whichever thread reads
            self._callback_failed("on_connect")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        try:
            if all(not r.is_failure for r in reasons):
                self.connections += 1
                self._ready.set()
                self.breaker.on_reconnect()
            else:
                log.warning("the broker refused %s the reply topic: %s", self.device_id, reasons)
        except Exception:  # the boundary
            self._callback_failed("on_subscribe")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            self._ready.clear()
            self._fail_pending(_ConnectionLost(f"lost the broker connection ({reason})"))
        except Exception:  # the boundary
            self._callback_failed("on_disconnect")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            key = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            with self._lock:
                future = self._pending.get(bytes(key)) if isinstance(key, (bytes, bytearray)) else None
            if future is None or future.done():
                self.late_replies += 1  # a late answer to a call that gave up, or the second of two copies
                return
            _settle(future, result=msg.payload)  # the caller decodes it: see the module docstring
        except Exception:  # the boundary: nothing a stranger publishes may escape into the call that reads it
            self._callback_failed("on_message")

    def _callback_failed(self, name: str) -> None:
        self.callback_errors += 1
        log.exception("%s of %s failed", name, self.device_id)

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


def _settle(future: Future[bytes], *, result: bytes | None = None, exc: Exception | None = None) -> None:
    with contextlib.suppress(InvalidStateError):  # another thread settled it first
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
