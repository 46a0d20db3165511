"""The release service's moving parts: release notices, the fleet listener, and the timestamp schedule.

``ReleaseService`` owns one MQTT connection: it publishes a retained notice on
``fedge/v1/releases/<model>`` when a release changes, and records every device's status
from ``fedge/v1/devices/+/status`` in the registry. A thread re-signs the TUF timestamp
well before it expires, so that devices can tell a live repository from a frozen one.
A status's device is the one its topic names (:mod:`sdk.cloud.status_report`): a payload
naming another device, an oversized or a malformed one is dropped, logged and counted in
``dropped_statuses`` (by reason in ``drops``); one claiming a version that has no release is
counted in ``rejected_statuses`` and on the device's row, and changes neither its version nor
the telemetry. Nothing a stranger publishes stops the listener: each message is a boundary,
and the timestamp thread restarts the MQTT network thread should it die anyway.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from sdk import topics
from sdk.cloud.registry import Registry
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.status_report import read_status
from sdk.errors import StatusRejected
from sdk.mqtt import MqttSettings, connect, make_client, revive
from sdk.notices import notice_payload

__all__ = ["ReleaseService"]

log = logging.getLogger("fedge.cloud.releases")


class ReleaseService:
    """Notices out, fleet status in, timestamp kept fresh: ``with ReleaseService(...) as service: ...``."""

    def __init__(self, registry: Registry, settings: MqttSettings | None, *, refresh_every_s: float | None = None):
        """Serve ``registry``; without MQTT settings only the timestamp schedule runs."""
        self.registry = registry
        self.repository: ReleaseRepository = registry.repository
        self.settings = settings
        interval = self.repository.timestamp_expiry.total_seconds() / 3
        self.refresh_every_s = refresh_every_s or max(1.0, interval)
        self.dropped_statuses = 0
        self.drops: Counter[str] = Counter()  # dropped statuses by kind: rejected (bad input) or failed (a bug)
        self.rejected_statuses = 0  # statuses claiming a version that has no release
        self.loop_restarts = 0
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="fedge-timestamp", daemon=True)
        self._client: mqtt.Client | None = None
        if settings is not None:
            self._client = make_client(settings, "fedge-release-service")
            self._client.on_connect = self._on_connect
            self._client.on_message = self._on_status
        registry.notify = self.notify

    def start(self) -> ReleaseService:
        """Connect to the broker and start the timestamp schedule."""
        if self._client is not None and self.settings is not None:
            connect(self._client, self.settings)
        self._refresher.start()
        return self

    def notify(self, model: str, version: int) -> None:
        """Publish the retained notice that new signed metadata for ``model`` is available."""
        if self._client is not None:
            self._client.publish(topics.release(model), notice_payload(model, version), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if not reason.is_failure:
                client.subscribe(f"{topics.PREFIX}/devices/+/status", qos=1)
        except Exception:  # the boundary: paho's network thread dies on an exception from a callback
            log.exception("on_connect failed")

    def _on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id, event = read_status(msg.topic, msg.payload)
            rejected = self.registry.record_status(event, device_id=device_id)
            if rejected:
                self.rejected_statuses += 1
                log.warning("%s claims what no release has: %s", device_id, rejected[:300])
        except StatusRejected as exc:
            self._drop("rejected", msg.topic, exc)
        except Exception as exc:  # the boundary: one stranger's status must not stop the others' being recorded
            self._drop("failed", msg.topic, exc)

    def _drop(self, kind: str, topic: str, exc: Exception) -> None:
        self.dropped_statuses += 1
        self.drops[kind] += 1
        log.warning("ignored a status on %s (%s: %s)", topic[:200], type(exc).__name__, str(exc)[:200])

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_every_s):
            try:
                self.repository.refresh_timestamp()
            except OSError as exc:
                log.error("could not re-sign the timestamp: %s", exc)
            except Exception:  # the boundary: the schedule goes on, the next turn may succeed
                log.exception("re-signing the timestamp failed")
            self._keep_listening()

    def _keep_listening(self) -> None:
        """Restart the MQTT network thread if it died."""
        if self._client is None or self.settings is None or self._stop.is_set():
            return
        if revive(self._client, self.settings):
            self.loop_restarts += 1
            log.error("the release service's MQTT network thread had died; restarted it")

    def stop(self) -> None:
        """Stop the schedule and disconnect."""
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> ReleaseService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
