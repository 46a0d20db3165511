"""The device's MQTT side of updates: release notices in, status reports out (with a Last Will).

A notice on ``fedge/v1/releases/<model>`` (retained, so a device that was offline sees the
latest one when it connects) only says "new signed metadata may be there": the listener
calls back, the updater checks the signed metadata, and a forged notice installs nothing.
Status reports go to ``fedge/v1/devices/<id>/status`` (retained); the broker publishes the
Last Will, ``{"state": "offline"}``, when the device drops off.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from sdk import topics
from sdk.mqtt import MqttSettings, connect, make_client

__all__ = ["DeviceLink", "notice_payload"]


def notice_payload(model: str, version: int) -> bytes:
    """The body of a release notice (informational only: devices trust the signed metadata)."""
    return json.dumps({"model": model, "version": version, "time": time.time()}).encode()


class DeviceLink:
    """One MQTT connection per device for notices and status; ``on_notice`` runs in a worker thread."""

    def __init__(
        self, settings: MqttSettings, device_id: str, model: str, on_notice: Callable[[], Any] | None = None
    ) -> None:
        """Prepare the connection; :meth:`start` connects."""
        self.device_id = device_id
        self.model = model
        self.settings = settings
        self.status_topic = topics.device_status(device_id)
        self.notice_topic = topics.release(model)
        self.notices = 0
        self.on_notice = on_notice
        self._wake = threading.Event()
        self._stop = threading.Event()
        will = json.dumps({"device_id": device_id, "state": "offline"}).encode()
        self._client = make_client(settings, f"{device_id}-ota", will=(self.status_topic, will))
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._worker = threading.Thread(target=self._run, name=f"fedge-notices-{device_id}", daemon=True)

    def start(self, *, wait: bool = True) -> DeviceLink:
        """Connect (reconnecting by itself) and start handling notices."""
        connect(self._client, self.settings, wait=wait)
        self._worker.start()
        return self

    def report(self, event: dict[str, Any]) -> None:
        """Publish a status event (retained: the fleet view shows the latest one)."""
        body = {"state": "online", **event}
        self._client.publish(self.status_topic, json.dumps(body, default=str).encode(), qos=1, retain=True)

    def stop(self) -> None:
        """Disconnect cleanly (the Last Will is not sent) and stop the worker."""
        self._stop.set()
        self._wake.set()
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.notice_topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.notices += 1
        self._wake.set()  # coalesces a burst of notices into one check

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set() or self.on_notice is None:
                continue
            self.on_notice()

    def __enter__(self) -> DeviceLink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
