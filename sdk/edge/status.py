"""The device's MQTT side of updates: release notices in, status reports out (with a Last Will).

A notice on ``fedge/v1/releases/<model>`` (retained, so a device that was offline sees the
latest one when it connects) only says "new signed metadata may be there": the listener
calls back, the updater checks the signed metadata, and a forged notice installs nothing.
Status reports go to ``fedge/v1/devices/<id>/status`` (retained). The link starts without
waiting for the broker (paho keeps reconnecting in the background); the latest status is
published again on every connect. A clean stop publishes ``{"state": "offline"}`` before it
disconnects; the broker publishes the same Last Will when the device drops off.
Checks run in a :class:`~sdk.edge.background.CheckWorker`: coalesced, rate-limited, and
never ended by what they raise. Each MQTT callback is a boundary (logged, counted in
``callback_errors``), and the threads watch each other: a notice restarts a dead check
thread, and each check and each telemetry turn restarts a dead MQTT network thread.

Given a :class:`~sdk.edge.telemetry.Telemetry`, every status carries the telemetry window
that closed with it (``"telemetry"``: calls, error and fallback rates, mean confidence,
p50/p99 latency and latency buckets per version served): every ``telemetry_interval_s``,
with every update step (a swap is one), and with the final ``offline``. A window closes only
when the link is connected, so the counts of a time offline go out with the next status.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from sdk import topics
from sdk.edge.background import CheckSchedule, CheckWorker
from sdk.edge.telemetry import Telemetry
from sdk.mqtt import MqttSettings, connect, make_client, revive

__all__ = ["DeviceLink"]

log = logging.getLogger("fedge.edge.status")


class DeviceLink:
    """One MQTT connection per device for notices and status; ``on_notice`` (the check) runs in a worker thread.

    ``schedule`` says when else the check runs (at start, on a timer) and how close two checks
    may be; ``next_check_in(result)`` says when the check that returned ``result`` asks for the next.
    """

    def __init__(
        self,
        settings: MqttSettings,
        device_id: str,
        model: str,
        on_notice: Callable[[], Any] | None = None,
        *,
        schedule: CheckSchedule | None = None,
        next_check_in: Callable[[Any], float | None] | None = None,
        telemetry: Telemetry | None = None,
        telemetry_interval_s: float = 60.0,
    ) -> None:
        """Prepare the connection; :meth:`start` connects."""
        if telemetry_interval_s <= 0:
            raise ValueError(f"telemetry_interval_s must be > 0, got {telemetry_interval_s}")
        self.device_id = device_id
        self.model = model
        self.settings = settings
        self.status_topic = topics.device_status(device_id)
        self.notice_topic = topics.release(model)
        self.notices = 0
        self.callback_errors = 0
        self.loop_restarts = 0
        self.on_notice = on_notice
        name = f"fedge-checks-{device_id}"
        self.checks = CheckWorker(self._check, name=name, schedule=schedule, next_check_in=next_check_in)
        self._status_lock = threading.Lock()
        self._last_status: bytes | None = None
        self._last_event: dict[str, Any] = {"device_id": device_id, "model": model, "state": "online"}
        self._last_telemetry: dict[str, Any] | None = None
        self.telemetry = telemetry
        self.telemetry_interval_s = telemetry_interval_s
        self.telemetry_errors = 0
        self._halt = threading.Event()
        self._telemetry_thread = threading.Thread(
            target=self._telemetry_loop, name=f"fedge-telemetry-{device_id}", daemon=True
        )
        self._stopped = False
        self._connected_once = False
        will = json.dumps({"device_id": device_id, "state": "offline"}).encode()
        self._client = make_client(settings, f"{device_id}-ota", will=(self.status_topic, will))
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    @property
    def errors(self) -> int:
        """How many checks raised (each was logged, and the worker went on)."""
        return self.checks.errors

    def start(self, *, wait: bool = False) -> DeviceLink:
        """Connect in the background (reconnecting by itself) and start the check worker; never blocks by default.

        Raises:
            CloudUnavailable: only with ``wait``, when the broker does not accept in time.
        """
        self.checks.start()
        connect(self._client, self.settings, wait=wait)
        self._connected_once = True
        if self.telemetry is not None:
            self._telemetry_thread.start()
        return self

    def keep_alive(self) -> None:
        """Restart the MQTT network thread or the check thread, whichever died (each is logged)."""
        self.checks.ensure_running()
        with self._status_lock:
            if not self._connected_once or self._stopped or not revive(self._client, self.settings):
                return
            self.loop_restarts += 1
        log.error("the MQTT network thread of %s had died; restarted it", self.device_id)

    def report(self, event: dict[str, Any]) -> None:
        """Publish a status event (retained: the fleet view shows the latest one); kept for the next connect."""
        self._publish_status({"state": "online", **event})

    def report_telemetry(self) -> None:
        """Publish the latest status with the telemetry window closed now (the timer calls this)."""
        self._publish_status(None)

    def stop(self) -> None:
        """Publish the retained ``offline`` status, disconnect cleanly (no Last Will) and stop the worker."""
        self.checks.stop(timeout_s=0)  # an install under way is atomic: it may be cut off
        self._halt.set()
        offline = {"device_id": self.device_id, "model": self.model, "state": "offline", "step": "stopped"}
        info = self._publish_status({**offline, "time": time.time()}, final=True)
        if info is not None:
            try:
                info.wait_for_publish(self.settings.connect_timeout_s)
            except (RuntimeError, ValueError) as exc:  # the connection went while we waited
                log.warning("the offline status was not delivered: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    def _publish_status(self, body: dict[str, Any] | None, *, final: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Remember ``body`` (None: the last one) as the latest status and publish it when connected.

        Not connected, nothing is published (paho would queue it unbounded) and the telemetry
        window stays open. After the ``final`` (offline) status nothing else is published: a
        check still running must not mark a stopped device online again.
        """
        with self._status_lock:
            if self._stopped:
                return None
            self._stopped = final
            if body is not None:
                self._last_event = body
            connected = self._client.is_connected()
            if self.telemetry is not None and connected:
                self._last_telemetry = self.telemetry.take()
            message = self._last_event
            if self._last_telemetry is not None:
                message = {**message, "telemetry": self._last_telemetry}
            payload = json.dumps(message, default=str).encode()
            self._last_status = payload
            if not connected:
                return None
            return self._client.publish(self.status_topic, payload, qos=1, retain=True)

    def _telemetry_loop(self) -> None:
        while not self._halt.wait(self.telemetry_interval_s):
            try:
                self.keep_alive()
                self.report_telemetry()
            except Exception:  # the boundary: the next turn may succeed, and the counts wait for it
                self.telemetry_errors += 1
                log.exception("publishing telemetry failed")

    def _check(self) -> Any:
        self.keep_alive()
        return self.on_notice() if self.on_notice is not None else None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                log.warning("the broker refused %s: %s", self.device_id, reason)
                return
            log.info("connected to the broker at %s:%s", self.settings.host, self.settings.port)
            client.subscribe(self.notice_topic, qos=1)
            with self._status_lock:
                if self._last_status is not None:
                    client.publish(self.status_topic, self._last_status, qos=1, retain=True)
        except Exception:  # paho's network thread dies on an exception from a callback
            self.callback_errors += 1
            log.exception("on_connect failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.notices += 1
            self.checks.poke()  # the worker coalesces a burst of notices into one check per interval
        except Exception:  # the boundary
            self.callback_errors += 1
            log.exception("handling a notice on %s failed", msg.topic)

    def __enter__(self) -> DeviceLink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
