"""Simulated devices for fleet tests: real status messages on their own status topics, as a device sends them.

Each device's telemetry windows are made by the device's own :class:`~sdk.edge.telemetry.Telemetry`;
a device takes a new version when the release's percent admits it (:func:`sdk.edge.rollout.in_rollout`).
"""

from __future__ import annotations

import json

from peers import publish

from sdk import topics
from sdk.cloud.registry import Registry
from sdk.edge.rollout import in_rollout
from sdk.edge.telemetry import Telemetry
from sdk.mqtt import MqttSettings

__all__ = ["Fleet"]


class Fleet:
    """Devices reporting on their status topics what they run and what they served, as a device does."""

    def __init__(self, settings: MqttSettings, ids: list[str]) -> None:
        self.settings = settings
        self.telemetry = {device_id: Telemetry() for device_id in ids}
        self.running: dict[str, int] = {}

    def serve(
        self,
        device_id: str,
        version: int,
        *,
        calls: int = 30,
        errors: int = 0,
        fallbacks: int = 0,
        confidence: float = 0.9,
    ) -> None:
        """Report that ``device_id`` runs ``version``, served ``calls`` calls, the last ``fallbacks`` by the cloud."""
        counter = self.telemetry[device_id]
        for i in range(calls):
            failed = i < errors
            counter.record(
                version,
                0.5,
                rows=0 if failed else 1,
                fallbacks=int(i >= calls - fallbacks and not failed),
                confidence_sum=0.0 if failed else confidence,
                confident_rows=0 if failed else 1,
                error=failed,
            )
        status = {"model": "digits", "step": "healthy", "installed_version": version, "telemetry": counter.take()}
        publish(self.settings, topics.device_status(device_id), [json.dumps(status).encode()])
        self.running[device_id] = version

    def follow(self, registry: Registry, version: int, **served) -> None:
        """Each device the release of ``version`` admits now and that does not run it yet takes it and serves."""
        release = next(r for r in registry.releases("digits") if r["version"] == version)
        if release["state"] != "active":
            return
        for device_id in self.telemetry:
            if self.running.get(device_id) != version and in_rollout(device_id, "digits", release["rollout"]):
                self.serve(device_id, version, **served)
