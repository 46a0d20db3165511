"""The private broker fixture: real Mosquitto, TCP_NODELAY, restart on the same port."""

from __future__ import annotations

import threading

from waiting import poll

from sdk.mqtt import MqttSettings, connect, make_client


def test_broker_restarts_and_clients_reconnect(broker):
    settings = MqttSettings.from_address(broker.address)
    got = threading.Event()
    client = make_client(settings, "t1")
    client.on_connect = lambda c, *_: c.subscribe("fedge/test", qos=1)
    client.on_message = lambda *_: got.set()
    connect(client, settings)
    try:
        assert "set_tcp_nodelay true" in broker.config_file.read_text()
        broker.restart(down_for=0.2)

        def delivered() -> bool:
            client.publish("fedge/test", b"after restart", qos=1)
            return got.wait(0.2)

        poll(delivered, "a message through the restarted broker")
    finally:
        client.loop_stop()
        client.disconnect()
