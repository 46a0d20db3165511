"""The MQTT inference worker: answers requests from a shared subscription through the batcher.

Several workers subscribe to ``$share/<group>/fedge/v1/infer/+`` on one broker and
the broker hands each request to one of them. A request carries its ResponseTopic
and CorrelationData (MQTT v5); the answer, or a typed error, goes back there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from sdk import topics, wire
from sdk.cloud.inference import InferenceService
from sdk.cloud.metrics import ServiceMetrics
from sdk.errors import CloudUnavailable, InvalidInput, Overloaded, WireFormatError
from sdk.mqtt import MqttSettings, connect, make_client, publish_properties
from sdk.outcomes import error_code_for

__all__ = ["InferenceWorker"]

log = logging.getLogger("fedge.cloud.worker")


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
        metrics: ServiceMetrics | None = None,
    ) -> None:
        """Serve ``services`` (by model name) on the broker in ``settings``; call :meth:`start`."""
        self.services = dict(services)
        self.settings = settings
        self.worker_id = topics.check_segment(worker_id or f"worker-{os.getpid()}-{id(self) & 0xFFFF:x}", "worker id")
        self.subscription = topics.shared_infer(group)
        self.max_payload_bytes = max_payload_bytes
        self.metrics = metrics or ServiceMetrics()
        for service in self.services.values():
            service.report_to(self.metrics)
        self.answered = 0
        self._count_lock = threading.Lock()
        self._client = make_client(settings, self.worker_id)
        self._subscribed = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *args: self._subscribed.clear()
        self._client.on_message = self._on_message

    @property
    def serving(self) -> bool:
        """Whether the worker is connected and subscribed."""
        return self._subscribed.is_set()

    def start(self, *, wait: bool = True) -> InferenceWorker:
        """Connect and subscribe (with ``wait``, until the broker confirmed); reconnects by itself.

        Raises:
            CloudUnavailable: with ``wait``, the broker did not accept the subscription in time.
        """
        connect(self._client, self.settings, wait=False)
        if wait and not self._subscribed.wait(self.settings.connect_timeout_s):
            self.stop()
            raise CloudUnavailable(f"{self.worker_id}: no subscription on {self.settings.host}:{self.settings.port}")
        return self

    def stop(self) -> None:
        """Disconnect; the services stay open (their owner closes them)."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.subscription, qos=1)
            log.info("%s serving %s on %s", self.worker_id, ", ".join(self.services), self.subscription)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None) or b""
        if not response_topic:
            log.warning("dropped a request on %s without a ResponseTopic", msg.topic)
            return
        model = msg.topic.rsplit("/", 1)[-1]
        request_id = correlation.decode("ascii", "replace")[:128] or "unknown"

        def answer(message: wire.Message, outcome: str) -> None:
            props_out = publish_properties(correlation=correlation)
            client.publish(response_topic, wire.encode(message), qos=1, properties=props_out)
            self.metrics.requests.inc(transport="mqtt", model=model, outcome=outcome)
            self.metrics.latency.observe(time.perf_counter() - arrived, transport="mqtt", model=model)

        def fail(code: wire.ErrorCode, text: str) -> None:
            answer(wire.error_reply(request_id, code, text, model=model), code)

        try:
            req = wire.decode(msg.payload, max_bytes=self.max_payload_bytes)
        except WireFormatError as exc:
            return fail("bad_request", str(exc))
        if req.kind != "request":
            return fail("bad_request", f"expected a request, got a {req.kind}")
        service = self.services.get(model)
        if service is None:
            return fail("unknown_model", f"this worker serves {sorted(self.services)}, not {model!r}")
        try:
            future, single = service.submit(
                req.tensor,
                deadline_s=None if req.deadline_ms is None else req.deadline_ms / 1000.0,
                priority=req.priority,
            )
        except (InvalidInput, WireFormatError, Overloaded) as exc:
            return fail(error_code_for(exc), str(exc))

        def done(f: Future[np.ndarray]) -> None:
            exc = f.exception()
            if exc is not None:
                code = error_code_for(exc)
                if code == "internal":
                    log.error("%s failed on a batch: %s", model, exc)
                return fail(code, str(exc) if code != "internal" else "the model failed on this batch")
            out = f.result()
            reply = wire.reply(
                req,
                out[0] if single else out,
                model_version=service.manifest.version,
                source=f"cloud:{self.worker_id}",
            )
            answer(reply, "ok")
            with self._count_lock:
                self.answered += 1

        future.add_done_callback(done)

    def __enter__(self) -> InferenceWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
