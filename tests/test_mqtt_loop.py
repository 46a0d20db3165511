"""Many MQTT clients in one process on one selector thread, on a real Mosquitto: past 1,024 descriptors, and back
after a broker restart."""

import threading

import pytest
from waiting import PATIENCE_S, poll

from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings, make_client
from sdk.mqtt_loop import SelectorLoop, raise_fd_limit

#: More clients than select() can watch: paho's threaded loop tops out near 339 (three descriptors each).
MANY = 1100


class Fleet:
    """Clients that each subscribe to their own topic on every connect and record what arrives there."""

    def __init__(self, loop: SelectorLoop, settings: MqttSettings, count: int, prefix: str) -> None:
        self.lock = threading.Lock()
        self.subscribed: set[int] = set()
        self.received: dict[int, list[bytes]] = {}
        self.clients = []
        self.topics = [f"test/{prefix}/{i}" for i in range(count)]
        for i, topic in enumerate(self.topics):
            client = make_client(settings, f"{prefix}-{i}")
            client.on_connect = lambda c, *a, topic=topic: c.subscribe(topic, qos=1)
            client.on_subscribe = lambda *a, i=i: self._mark(self.subscribed, i)
            client.on_message = lambda c, u, msg, i=i: self._got(i, msg.payload)
            loop.add(client, settings)
            self.clients.append(client)

    def _mark(self, where: set[int], i: int) -> None:
        with self.lock:
            where.add(i)

    def _got(self, i: int, payload: bytes) -> None:
        with self.lock:
            self.received.setdefault(i, []).append(payload)

    def all_subscribed(self) -> bool:
        with self.lock:
            return len(self.subscribed) == len(self.clients)

    def all_received(self, payload: bytes) -> bool:
        with self.lock:
            return all(payload in self.received.get(i, []) for i in range(len(self.clients)))


def publish_to_each(loop: SelectorLoop, settings: MqttSettings, topics: list[str], payload: bytes) -> None:
    """From one more client on the same loop, publish ``payload`` to every topic once it is connected."""
    publisher = make_client(settings, f"pub-{payload.decode()}")
    connected = threading.Event()
    publisher.on_connect = lambda *a: connected.set()
    loop.add(publisher, settings)
    assert connected.wait(PATIENCE_S), "the publisher did not connect"
    loop.call_soon(lambda: [publisher.publish(topic, payload, qos=1) for topic in topics])


@pytest.fixture(scope="module")
def fd_room():
    limit = raise_fd_limit()  # before the broker starts: Mosquitto inherits it and needs one per client too
    if limit < MANY + 200:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {limit}: too low for {MANY} connections in one process")
    return limit


def test_one_process_holds_more_than_1024_descriptors_of_clients_and_each_gets_its_message(fd_room):
    with Mosquitto() as broker, SelectorLoop() as loop:
        settings = MqttSettings.from_address(broker.address)
        fleet = Fleet(loop, settings, MANY, "many")
        poll(fleet.all_subscribed, f"{MANY} clients subscribed")
        highest = max(client.socket().fileno() for client in fleet.clients)
        assert highest >= 1024  # beyond FD_SETSIZE: select() could not watch these
        publish_to_each(loop, settings, fleet.topics, b"hello")
        poll(lambda: fleet.all_received(b"hello"), f"a message to each of {MANY} clients")
        assert loop.errors == 0


def test_clients_come_back_by_themselves_after_a_broker_restart(broker):
    with SelectorLoop() as loop:
        settings = MqttSettings.from_address(broker.address)
        fleet = Fleet(loop, settings, 20, "back")
        poll(fleet.all_subscribed, "20 clients subscribed")
        with fleet.lock:
            fleet.subscribed.clear()
        broker.restart()
        poll(fleet.all_subscribed, "20 clients subscribed again after the restart")
        publish_to_each(loop, settings, fleet.topics, b"again")
        poll(lambda: fleet.all_received(b"again"), "a message to each client after the restart")
        assert loop.errors == 0


def test_a_callback_that_raises_is_counted_and_the_other_clients_go_on(broker):
    with SelectorLoop() as loop:
        settings = MqttSettings.from_address(broker.address)
        fleet = Fleet(loop, settings, 3, "bad")
        poll(fleet.all_subscribed, "3 clients subscribed")

        def explode(*args):
            raise RuntimeError("a bug in one device's callback")

        fleet.clients[0].on_message = explode
        publish_to_each(loop, settings, fleet.topics, b"poison")
        poll(lambda: all(b"poison" in fleet.received.get(i, []) for i in (1, 2)), "the other clients' messages")
        poll(lambda: loop.errors >= 1, "the raising callback counted")


def test_what_a_callback_publishes_is_written_before_the_loop_waits_again(broker):
    # Observed, not faked: the selector's waits and the client's writes are recorded by wrapping the real calls.
    events: list[str] = []
    with SelectorLoop() as loop:
        settings = MqttSettings.from_address(broker.address)
        echo = make_client(settings, "echo-same-turn")
        echo.on_connect = lambda c, *a: c.subscribe("test/same-turn/in", qos=1)
        subscribed = threading.Event()
        echo.on_subscribe = lambda *a: subscribed.set()

        def bounce(c, userdata, msg):
            events.append("message")
            c.publish("test/same-turn/out", msg.payload, qos=0)

        echo.on_message = bounce
        loop.add(echo, settings)
        assert subscribed.wait(PATIENCE_S), "the echo did not subscribe"
        got = threading.Event()
        listener = make_client(settings, "listener-same-turn")
        listener.on_connect = lambda c, *a: c.subscribe("test/same-turn/out", qos=0)
        listener.on_subscribe = lambda *a: got.set()
        listener.on_message = lambda *a: got.set()
        loop.add(listener, settings)
        assert got.wait(PATIENCE_S), "the listener did not subscribe"
        got.clear()

        def recorded_select(select):
            def wrapped(timeout=None):
                events.append("wait")
                return select(timeout)

            return wrapped

        def recorded_write(write):
            def wrapped():
                events.append("write")
                return write()

            return wrapped

        def instrument():
            loop._selector.select = recorded_select(loop._selector.select)
            echo.loop_write = recorded_write(echo.loop_write)

        loop.call_soon(instrument)
        sender = make_client(settings, "sender-same-turn")
        loop.add(sender, settings)
        poll(sender.is_connected, "the sender connected")
        loop.call_soon(lambda: sender.publish("test/same-turn/in", b"ping", qos=1))
        assert got.wait(PATIENCE_S), "the echo's answer did not arrive"
        at = events.index("message")
        assert "write" in events[at:], events
        assert events.index("write", at) < events.index("wait", at), events  # written in the turn that read it
        assert loop.errors == 0
