"""Bare MQTT peers for tests: a client whose subscription the broker has confirmed before the test goes on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from waiting import PATIENCE_S

from sdk.mqtt import MqttSettings, connect, make_client

__all__ = ["publish", "subscribed_client"]


def subscribed_client(
    settings: MqttSettings, topic: str, on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]
) -> mqtt.Client:
    """A connected client subscribed to ``topic`` (QoS 1), returned once the broker acknowledged the subscription."""
    subscribed = threading.Event()
    client = make_client(settings, f"peer-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    connect(client, settings)
    assert subscribed.wait(PATIENCE_S), f"the broker did not confirm the subscription to {topic}"
    return client


def publish(settings: MqttSettings, topic: str, payloads: list[bytes], *, retain: bool = False) -> None:
    """Publish ``payloads`` to ``topic`` at QoS 1 from a fresh client, and return once the broker has them all."""
    client = make_client(settings, f"pub-{time.monotonic_ns()}")
    connect(client, settings)
    infos = [client.publish(topic, payload, qos=1, retain=retain) for payload in payloads]
    for info in infos:
        info.wait_for_publish(PATIENCE_S)
    client.disconnect()
    client.loop_stop()
