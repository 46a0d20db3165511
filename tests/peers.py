"""Bare MQTT peers for tests: a client whose subscription the broker has confirmed before the test goes on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from waiting import PATIENCE_S

from sdk import wire
from sdk.mqtt import MqttSettings, connect, make_client, publish_properties

__all__ = ["RawRequester", "publish", "subscribed_client"]


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


class RawRequester:
    """A bare paho client that publishes arbitrary bytes as requests and collects the replies by CorrelationData."""

    def __init__(self, settings: MqttSettings) -> None:
        self.replies: dict[bytes, wire.Message] = {}
        self.qos: dict[bytes, int] = {}  # the QoS each reply arrived at (this client subscribes at QoS 1)
        self.got = threading.Condition()
        self.reply_topic = f"fedge/v1/devices/raw-{uuid.uuid4().hex[:6]}/replies"
        self.client = subscribed_client(settings, self.reply_topic, self._on_message)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.got:
            self.replies[msg.properties.CorrelationData] = wire.decode(msg.payload)
            self.qos[msg.properties.CorrelationData] = msg.qos
            self.got.notify_all()

    def send(self, topic: str, payload: bytes, key: bytes | None = None, *, response_topic: str | None = None) -> bytes:
        """Publish ``payload`` as a request (QoS 1) and return its CorrelationData."""
        key = key or uuid.uuid4().hex.encode()
        props = publish_properties(response_topic=response_topic or self.reply_topic, correlation=key)
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(PATIENCE_S)
        return key

    def wait(self, key: bytes, timeout: float = PATIENCE_S) -> wire.Message:
        """The reply to the request ``key``."""
        with self.got:
            assert self.got.wait_for(lambda: key in self.replies, timeout), "no reply"
            return self.replies[key]

    def ask(self, topic: str, payload: bytes, timeout: float = PATIENCE_S) -> wire.Message:
        """Publish ``payload`` as a request and wait for its reply."""
        return self.wait(self.send(topic, payload), timeout)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
