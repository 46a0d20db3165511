"""Faults a real part cannot produce on demand, injected the same way by every test that needs them."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from peers import publish
from waiting import poll

from sdk.mqtt import MqttSettings

__all__ = ["kill_network_thread"]


def kill_network_thread(monkeypatch, client: mqtt.Client, settings: MqttSettings, topic: str) -> None:
    """End ``client``'s paho network thread by an exception inside it, and return once it is dead.

    The exception stands for an error inside paho's own packet handling (no broker makes one on demand):
    the next message on ``topic`` (one ``client`` subscribes to) raises in paho's thread; the client's
    own ``on_message`` is back in place when this returns. The thread's death is recorded here rather
    than by pytest, whose record would keep the dead client's sockets until the session ends.
    """
    died: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    own_on_message = client.on_message

    def fault(*args):
        raise RuntimeError("injected into paho's network thread")

    client.on_message = fault
    try:
        publish(settings, topic, [b"anything"])
        poll(lambda: died, "the network thread ended by the injected error")
    finally:
        client.on_message = own_on_message
    assert died == [RuntimeError]
