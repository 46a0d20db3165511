"""Reconnect waits with jitter: the decision alone, then a fleet of clients through a real broker restart."""

from __future__ import annotations

import threading

import pytest
from waiting import poll

from sdk.errors import ConfigError
from sdk.mqtt import MqttSettings, ReconnectJitter, connect, make_client

SETTINGS = MqttSettings(reconnect_min_s=0.1, reconnect_max_s=1.6, reconnect_jitter=0.5)


class Draws:
    """A scripted random source."""

    def __init__(self, *values: float):
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


def test_each_wait_doubles_up_to_the_bound_less_a_random_share_and_a_connection_starts_over():
    client = make_client(SETTINGS, "jitter-1")
    draws = Draws(1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5)
    jitter = ReconnectJitter(client, SETTINGS, rng=draws)
    assert jitter.next_delay_s == pytest.approx(0.1)  # the wait after a first drop, drawn at the top
    jitter.before_attempt()  # the first attempt: should it fail, the next wait is from the bottom, drawn low
    assert jitter.next_delay_s == pytest.approx(0.05)
    waits = []
    for _ in range(5):
        jitter.before_attempt()
        waits.append(jitter.next_delay_s)
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 1.6])  # doubling, capped at reconnect_max_s
    jitter.connected()
    assert jitter.attempts == 0
    assert jitter.next_delay_s == pytest.approx(0.075)  # from the bottom again, with a new draw


def test_a_fleet_waits_spread_instead_of_in_lockstep():
    fleet = [make_client(SETTINGS, f"fleet-{i}").reconnect_jitter for i in range(50)]
    for member in fleet:
        member.before_attempt()
    first = [m.next_delay_s for m in fleet]
    assert all(0.05 <= w <= 0.1 for w in first)
    assert len(set(first)) == len(first)  # no two the same
    assert max(first) - min(first) > 0.025  # spread over more than half of the jitter range


def test_the_jitter_setting_is_checked():
    with pytest.raises(ConfigError, match="reconnect_jitter"):
        MqttSettings(reconnect_jitter=1.0)


def test_clients_reconnect_after_a_broker_restart_and_each_draws_its_own_next_wait(broker):
    settings = MqttSettings.from_address(broker.address, reconnect_min_s=0.05, reconnect_max_s=0.4)
    clients, connects = [], []
    lock = threading.Lock()

    def counting(i):
        def on_connect(client, userdata, flags, reason, props):
            if not reason.is_failure:
                with lock:
                    connects.append(i)

        return on_connect

    for i in range(4):
        client = make_client(settings, f"restart-{i}")
        client.on_connect = counting(i)
        connect(client, settings)
        clients.append(client)
    try:
        poll(lambda: len(connects) == 4, "four first connections")
        broker.restart(down_for=0.3)  # long enough for more than one attempt while it is down
        poll(lambda: len(connects) == 8, "four reconnections")
        assert sorted(connects[4:]) == [0, 1, 2, 3]
        waits = [c.reconnect_jitter.next_delay_s for c in clients]
        assert len(set(waits)) == 4  # each drew its own
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
