"""The MQTT inference worker: answers requests from a shared subscription through the batcher.

Several workers subscribe to ``$share/<group>/fedge/v1/infer/+`` on one broker and
the broker hands each request to one of them. A request carries its ResponseTopic
(a device's ``fedge/v1/devices/<id>/replies``, nothing else) and CorrelationData
(MQTT v5); the answer, or a typed error, goes back there.

Nothing a sender puts in a request stops the worker: every callback has one boundary
that turns the unexpected into an ``internal`` error reply, or, with nowhere valid to
answer, a logged drop counted in ``fedge_worker_dropped_total{reason}``. The network
loop (a :class:`~sdk.mqtt_loop.SelectorLoop` of one client) goes on past an exception that
escapes paho anyway, counting it in ``fedge_worker_loop_errors_total``, and
:meth:`InferenceWorker.watch` raises when the worker has not served for a while, so
``fedge cloud worker`` exits non-zero and its supervisor (systemd) starts a fresh one.

At-least-once answers: a QoS 1 request is acknowledged (paho's manual acknowledgement)
only after its reply or error reply was handed to the client; both go out on one TCP
connection in that order, so a broker never holds the acknowledgement without the
reply. Replies go at QoS 0, and a device subscribes to its replies at QoS 0: with clean
sessions a broker redelivers nothing after a lost connection anyway, so a QoS 1 reply
would only cost two acknowledgements per call; what a lost connection loses, the
device's retry recovers. Request ids are de-duplicated per worker
(:class:`~sdk.cloud.recent.RecentRequests`): a repeat of a request in flight is dropped,
one of a request answered lately gets the same reply again; a device retries once with the same id.

What the broker does with the unacknowledged requests of a worker that is SIGKILLed
(measured with Mosquitto 2.0.11, ``tests/cloud/test_worker_delivery.py``):

- Mosquitto 2.0, clean session (the default here, ``session_expiry_s=0``): they are
  lost; Mosquitto does not hand them to another member of the shared subscription.
  Later requests go to the surviving members only, so the device's retry is answered.
- Mosquitto 2.0, persistent session (``session_expiry_s > 0``, client id = worker id):
  the session keeps them, and its share of every new request, until a worker with
  the same id reconnects (it gets them again, ``dup`` set) or the session expires
  (they are dropped; a request's MessageExpiryInterval, which the device sets to its
  deadline, drops stale ones earlier). Mosquitto never moves them to another member.
  Worth it only where the supervisor restarts the worker well within a device deadline.
- EMQX 5: a shared subscriber's unacknowledged QoS 1/2 messages are dispatched again
  to another member of the group when its session ends (its "dispatch ack" for shared
  subscriptions), so with a clean session a SIGKILL costs a retry at most; a persistent
  session keeps receiving its share while offline, so EMQX's docs advise clean sessions
  for shared subscribers.

A request that finds the model idle and nothing behind it on the connection (no bytes waiting to
be read) is answered on the network thread itself when the model is quick
(:meth:`~sdk.cloud.inference.InferenceService.serve`): no hand-off to the batcher's thread and
back, nor a future, which cost more than such a model's run. Its errors are answered as a batch's
are. Requests that do wait behind it go to the batcher and leave together, so bursts are batched
as before. The selector loop writes such an answer as soon as ``on_message`` returns; paho's own
loop would first wait in ``select()`` once more.

Holding acknowledgements has a cost on Mosquitto: ``max_inflight_messages`` (default 20
per client) caps the requests one worker holds at once, and so its batch size; raise it
in the broker's configuration for batches above 20.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from sdk import topics, tracing, wire
from sdk.cloud.inference import InferenceService
from sdk.cloud.metrics import WorkerMetrics
from sdk.cloud.recent import RecentRequests
from sdk.errors import CloudUnavailable, InvalidInput, Overloaded, WireFormatError
from sdk.mqtt import MqttSettings, ReadWatch, make_client, publish_properties
from sdk.mqtt_loop import SelectorLoop
from sdk.outcomes import error_code_for

__all__ = ["MAX_CORRELATION_BYTES", "MAX_RECEIVE", "InferenceWorker"]

#: Unacknowledged requests the broker may have in flight to a worker: MQTT's largest Receive Maximum.
MAX_RECEIVE = 65535

log = logging.getLogger("fedge.cloud.worker")

#: The longest CorrelationData a worker answers (a device sends a 32-character request id).
MAX_CORRELATION_BYTES = 128


@dataclass(frozen=True)
class _Target:
    """Where the answer to one request goes, and how to acknowledge the request."""

    topic: str
    correlation: bytes
    model: str
    arrived: float
    ack: Callable[[], None]
    span: Any = None  # the request's span, when tracing is on

    @property
    def request_id(self) -> str:
        return self.correlation.decode("ascii", "replace") or "unknown"


class InferenceWorker:
    """One worker process's MQTT side: ``with InferenceWorker(services, settings): ...``."""

    def __init__(
        self,
        services: Mapping[str, InferenceService],
        settings: MqttSettings,
        *,
        group: str = "cloud",
        worker_id: str | None = None,
        max_payload_bytes: int = wire.DEFAULT_MAX_BYTES,
        metrics: WorkerMetrics | None = None,
        session_expiry_s: int = 0,
        recent: RecentRequests | None = None,
    ) -> None:
        """Serve ``services`` (by model name) on the broker in ``settings``; call :meth:`start`.

        ``session_expiry_s`` > 0 keeps a persistent session under the worker id (see the module docstring).
        """
        self.services = dict(services)
        self.settings = settings
        self.worker_id = topics.check_segment(worker_id or f"worker-{os.getpid()}-{id(self) & 0xFFFF:x}", "worker id")
        self.subscription = topics.shared_infer(group)
        self.max_payload_bytes = max_payload_bytes
        self.session_expiry_s = session_expiry_s
        self.metrics = metrics or WorkerMetrics()
        for service in self.services.values():
            service.report_to(self.metrics)
        self.answered = 0
        self._count_lock = threading.Lock()
        self._recent = recent or RecentRequests()
        self._client = make_client(settings, self.worker_id, manual_ack=True)
        self._subscribed = threading.Event()
        self._generation = 0  # connections so far: an acknowledgement only goes out on the one its request came by
        self._down_since: float | None = time.monotonic()
        self._network: SelectorLoop | None = None
        self._behind = ReadWatch()  # watches the connection for requests behind the current one
        self._client.on_connect = self._guarded(self._on_connect)
        self._client.on_subscribe = self._guarded(self._on_subscribe)
        self._client.on_disconnect = self._guarded(self._on_disconnect)
        self._client.on_message = self._on_message

    @property
    def serving(self) -> bool:
        """Whether the worker is connected and subscribed, and its network loop runs."""
        network = self._network
        return self._subscribed.is_set() and network is not None and network.alive

    def down_for(self) -> float:
        """Seconds since the worker last served (0 while it serves)."""
        if self.serving:
            return 0.0
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def start(self, *, wait: bool = True) -> InferenceWorker:
        """Connect and subscribe (with ``wait``, until the broker confirmed); reconnects by itself.

        Raises:
            CloudUnavailable: with ``wait``, the broker did not accept the subscription in time.
        """
        self._network = SelectorLoop(name=f"fedge-worker-{self.worker_id}", on_error=self.metrics.loop_errors.inc)
        self._network.start()
        # Requests stay unacknowledged until answered, and the broker's in-flight window (Mosquitto's default:
        # 20) would cap the batch and keep the rest waiting at the broker, where no one sheds them: take all.
        self._network.add(
            self._client, self.settings, session_expiry_s=self.session_expiry_s, receive_maximum=MAX_RECEIVE
        )
        if wait and not self._subscribed.wait(self.settings.connect_timeout_s):
            self.stop()
            raise CloudUnavailable(f"{self.worker_id}: no subscription on {self.settings.host}:{self.settings.port}")
        return self

    def stop(self) -> None:
        """Disconnect; the services stay open (their owner closes them)."""
        network, self._network = self._network, None
        if network is not None:
            network.close(self.settings.connect_timeout_s)
        self._on_disconnect()

    def watch(self, stop: threading.Event, unavailable_s: float) -> None:
        """Block until ``stop`` is set.

        Raises:
            CloudUnavailable: the worker has not served for ``unavailable_s`` seconds.
        """
        while not stop.wait(min(1.0, unavailable_s / 4)):
            down = self.down_for()
            if down > unavailable_s:
                raise CloudUnavailable(f"{self.worker_id} has not served for {down:.0f} s")

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                log.exception("%s: %s failed", self.worker_id, callback.__name__)

        return guarded

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._generation += 1
            client.subscribe(self.subscription, qos=1)
            log.info("%s serving %s on %s", self.worker_id, ", ".join(self.services), self.subscription)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._subscribed.set()
            self._down_since = None

    def _on_disconnect(self, *args: Any) -> None:
        self._subscribed.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        ack = self._acknowledger(msg)
        target = None
        try:
            target = self._target(msg, ack)
            if target is None:
                ack()
            else:
                self._serve(msg, target)
        except Exception:
            log.exception("%s: unexpected failure on a request to %s", self.worker_id, msg.topic)
            self._fail_safely(target, ack)

    def _acknowledger(self, msg: mqtt.MQTTMessage) -> Callable[[], None]:
        generation, once = self._generation, threading.Lock()  # a lock taken once: cheaper than an Event

        def ack() -> None:
            if msg.qos > 0 and generation == self._generation and once.acquire(blocking=False):
                self._client.ack(msg.mid, msg.qos)

        return ack

    def _target(self, msg: mqtt.MQTTMessage, ack: Callable[[], None]) -> _Target | None:
        props = getattr(msg, "properties", None)
        topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None) or b""
        if not topic:
            return self._drop("no_response_topic", f"a request on {msg.topic} without a ResponseTopic")
        if not isinstance(topic, str) or not topics.is_device_replies(topic):
            return self._drop("bad_response_topic", f"a request on {msg.topic} answering to {str(topic)[:80]!r}")
        if not isinstance(correlation, bytes) or len(correlation) > MAX_CORRELATION_BYTES:
            return self._drop("bad_correlation", f"a request on {msg.topic} with a CorrelationData that is too long")
        model = msg.topic.rsplit("/", 1)[-1]
        span = tracing.process_span(props, msg.topic, correlation, self.worker_id)
        return _Target(
            topic=topic, correlation=correlation, model=model, arrived=time.perf_counter(), ack=ack, span=span
        )

    def _drop(self, reason: str, what: str) -> None:
        self.metrics.dropped.labels(reason=reason).inc()
        log.warning("%s dropped %s", self.worker_id, what)

    def _serve(self, msg: mqtt.MQTTMessage, target: _Target) -> None:
        key = (target.topic, target.correlation)
        if target.correlation:  # no CorrelationData: nothing tells one request from the next
            state, answer = self._recent.claim(key)
            if state != "new":
                self.metrics.duplicates.labels(state=state).inc()
                tracing.end_span(target.span, "duplicate")
                if answer is not None:
                    self._publish(target, answer)
                target.ack()
                return
        try:
            req = wire.decode(msg.payload, max_bytes=self.max_payload_bytes)
        except WireFormatError as exc:
            return self._fail(target, "bad_request", str(exc))
        if req.kind != "request":
            return self._fail(target, "bad_request", f"expected a request, got a {req.kind}")
        service = self.services.get(target.model)
        if service is None:
            return self._fail(
                target, "unknown_model", f"this worker serves {sorted(self.services)}, not {target.model!r}"
            )
        deadline_s = None if req.deadline_ms is None else req.deadline_ms / 1000.0
        submit = service.submit if self._backlog() else service.serve
        try:
            answer, single = submit(req.tensor, deadline_s=deadline_s, priority=req.priority, trace=target.span)
        except (InvalidInput, WireFormatError, Overloaded) as exc:
            return self._fail(target, error_code_for(exc), str(exc))
        except Exception as exc:  # the model failed on this request, run alone: answered as a failed batch is
            return self._refuse(target, exc)
        if isinstance(answer, Future):
            answer.add_done_callback(lambda f: self._finish(f, req, single, service, target))
        else:
            self._reply(target, req, answer, single, service)

    def _backlog(self) -> bool:
        """Whether more bytes wait on the connection: requests behind this one, which a batch should hold together."""
        sock = self._client.socket()
        if sock is None:
            return True
        return self._behind.readable(sock)

    def _finish(
        self, f: Future[np.ndarray], req: wire.Message, single: bool, service: InferenceService, target: _Target
    ) -> None:
        try:
            exc = f.exception()
            if exc is not None:
                return self._refuse(target, exc)
            self._reply(target, req, f.result(), single, service)
        except Exception:
            log.exception("%s: unexpected failure answering a request to %s", self.worker_id, target.model)
            self._fail_safely(target, target.ack)

    def _reply(
        self, target: _Target, req: wire.Message, out: np.ndarray, single: bool, service: InferenceService
    ) -> None:
        source = f"cloud:{self.worker_id}"
        reply = wire.reply(req, out[0] if single else out, model_version=service.manifest.version, source=source)
        with self._count_lock:  # counted first: whoever sees the reply sees the count
            self.answered += 1
        self._answer(target, reply, "ok")

    def _refuse(self, target: _Target, exc: BaseException) -> None:
        """Answer a request whose run failed with ``exc``: its typed error, or ``internal`` for the model's failure."""
        code = error_code_for(exc)
        if code == "internal":
            log.error("%s failed on a batch: %s", target.model, exc)
        self._fail(target, code, str(exc) if code != "internal" else "the model failed on this batch")

    def _fail(self, target: _Target, code: wire.ErrorCode, text: str) -> None:
        self._answer(target, wire.error_reply(target.request_id, code, text, model=target.model), code)

    def _fail_safely(self, target: _Target | None, ack: Callable[[], None]) -> None:
        try:
            if target is None:
                self._drop("internal", "a request it could not read")
            else:
                self._fail(target, "internal", "the worker failed on this request")
        except Exception:
            log.exception("%s: could not answer with an internal error either", self.worker_id)
            self.metrics.dropped.labels(reason="internal").inc()
        finally:
            ack()

    def _answer(self, target: _Target, message: wire.Message, outcome: str) -> None:
        payload = wire.encode(message)
        self.metrics.count_request("mqtt", target.model, outcome, time.perf_counter() - target.arrived)
        if target.correlation:
            self._recent.answered((target.topic, target.correlation), payload)
        tracing.end_span(target.span, outcome)  # before the reply: whoever sees it sees the span ended
        self._publish(target, payload)
        target.ack()

    def _publish(self, target: _Target, payload: bytes) -> None:
        props = publish_properties(correlation=target.correlation)
        self._client.publish(target.topic, payload, qos=0, properties=props)

    def __enter__(self) -> InferenceWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
