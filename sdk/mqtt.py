"""MQTT v5 connections the way Fedge needs them: paho 2.x, TCP_NODELAY, TLS, auth, backoff with jitter.

paho never sets ``TCP_NODELAY``; with Nagle's algorithm meeting delayed ACKs a QoS 1
request/response round trip on loopback takes ~88 ms instead of ~0.3 ms (see
DESIGN.md). Every client Fedge opens goes through :func:`make_client`, which sets it
on each socket paho opens, reconnects included.

paho's reconnect backoff doubles from a fixed minimum with no jitter, so a fleet that lost
its broker together comes back in lockstep. :class:`ReconnectJitter` sets each next wait
from :class:`~sdk.backoff.Backoff` with a fresh random draw. paho's network thread
dies on an exception it does not expect; :func:`loop_alive` tells, :func:`revive` restarts it.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from sdk.backoff import Backoff
from sdk.config import check, load_section
from sdk.errors import CloudUnavailable

__all__ = [
    "MqttSettings",
    "ReadWatch",
    "ReconnectJitter",
    "connect",
    "connect_properties",
    "loop_alive",
    "make_client",
    "parse_address",
    "publish_properties",
    "revive",
]


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """Where the broker is and how to log in (``[mqtt]`` table). The password never appears in ``repr``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 5.0
    reconnect_jitter: float = 0.5
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        check(bool(self.host), "host", "must not be empty")
        check(1 <= self.port <= 65535, "port", f"must be within 1..65535, got {self.port}")
        check(5 <= self.keepalive_s <= 3600, "keepalive_s", "must be within 5..3600")
        check(0 < self.reconnect_min_s <= self.reconnect_max_s, "reconnect_min_s", "must be > 0 and <= reconnect_max_s")
        check(0 <= self.reconnect_jitter < 1, "reconnect_jitter", "must be within [0, 1)")
        check(self.connect_timeout_s > 0, "connect_timeout_s", "must be > 0")
        check(self.password is None or self.username is not None, "password", "needs a username")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> MqttSettings:
        """Load ``[mqtt]`` from a TOML file and ``FEDGE_MQTT__*`` variables."""
        return load_section(cls, "mqtt", path, env)

    @classmethod
    def from_address(cls, address: str, **kwargs: Any) -> MqttSettings:
        """Settings for ``HOST:PORT`` (or ``HOST``, port 1883)."""
        host, port = parse_address(address)
        return cls(host=host, port=port, **kwargs)


def parse_address(address: str, default_port: int = 1883) -> tuple[str, int]:
    """Split ``HOST:PORT``; raise ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    if not port.isdigit():
        raise ValueError(f"broker address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    raw = getattr(sock, "_sock", sock)  # paho may hand over its own wrapper around the socket
    with contextlib.suppress(OSError, AttributeError):  # a unix or websocket transport has no TCP options
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ReconnectJitter:
    """Each reconnect wait of one client: ``Backoff`` from ``reconnect_min_s`` up to ``reconnect_max_s``, with jitter.

    paho waits before every connection attempt after the first; before each attempt
    (``on_pre_connect``) this sets the wait that follows if it fails, and a confirmed connection
    sets the wait after the next drop, each with a new draw. ``next_delay_s`` is that next wait.
    """

    def __init__(self, client: mqtt.Client, settings: MqttSettings, rng: Callable[[], float] = random.random) -> None:
        """Drive ``client``'s reconnect waits per ``settings``; ``rng`` draws uniformly from [0, 1)."""
        self.backoff = Backoff(
            base_s=settings.reconnect_min_s, max_s=settings.reconnect_max_s, jitter=settings.reconnect_jitter
        )
        self.attempts = 0
        self.next_delay_s = 0.0
        self._client = client
        self._rng = rng
        client.on_pre_connect = lambda c, userdata: self.before_attempt()
        self._set_next(1)

    def before_attempt(self) -> None:
        """A connection attempt starts: should it fail, the next wait is one step longer."""
        self.attempts += 1
        self._set_next(self.attempts)

    def connected(self) -> None:
        """The broker accepted: the wait after the next drop starts from the bottom again, with a new draw."""
        self.attempts = 0
        self._set_next(1)

    def _set_next(self, failures: int) -> None:
        self.next_delay_s = self.backoff.delay(failures, self._rng())
        # min == max: paho waits exactly this long (its own doubling would start again from a fixed minimum).
        self._client.reconnect_delay_set(min_delay=self.next_delay_s, max_delay=self.next_delay_s)  # type: ignore[arg-type]


def make_client(
    settings: MqttSettings, client_id: str, *, will: tuple[str, bytes] | None = None, manual_ack: bool = False
) -> mqtt.Client:
    """A configured, unconnected MQTT v5 client; ``will`` is a retained Last Will (topic, payload).

    With ``manual_ack`` a QoS 1 message is acknowledged only by ``client.ack(msg.mid, msg.qos)``.
    Its reconnect waits are jittered (``client.reconnect_jitter``, a :class:`ReconnectJitter`).
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    client.on_socket_open = _no_delay
    client.reconnect_jitter = ReconnectJitter(client, settings)  # type: ignore[attr-defined]
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def connect(
    client: mqtt.Client,
    settings: MqttSettings,
    *,
    wait: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    start_loop: bool = True,
) -> None:
    """Start the network loop and connect; with ``wait``, block until the broker accepts.

    The loop keeps reconnecting with backoff after a broker restart. Sessions start
    clean unless ``session_expiry_s`` > 0 asks the broker to keep this client id's
    session (subscriptions, unacknowledged messages) that long after a disconnect;
    subscribe from the client's ``on_connect`` either way: it runs again on every reconnect.
    ``receive_maximum`` is how many unacknowledged QoS 1 messages the broker may have in flight
    to this client (MQTT v5 Receive Maximum; Mosquitto's own default is 20).
    Without ``start_loop`` the caller runs the loop itself (``client.loop_forever``) and ``wait`` does nothing.

    Raises:
        CloudUnavailable: the broker refused or did not answer within ``connect_timeout_s``.
    """
    connected = threading.Event()
    refused: list[str] = []
    user_on_connect = client.on_connect

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            connected.set()
            jitter = getattr(c, "reconnect_jitter", None)
            if jitter is not None:
                jitter.connected()
        if user_on_connect is not None:
            user_on_connect(c, userdata, flags, reason, props)

    client.on_connect = on_connect
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=session_expiry_s <= 0,
        properties=connect_properties(session_expiry_s=session_expiry_s, receive_maximum=receive_maximum),
    )
    if not start_loop:
        return
    client.loop_start()
    if wait and not connected.wait(settings.connect_timeout_s):
        client.loop_stop()
        why = refused[0] if refused else "no answer"
        raise CloudUnavailable(f"MQTT broker {settings.host}:{settings.port}: {why}")


def connect_properties(*, session_expiry_s: int = 0, receive_maximum: int | None = None) -> Properties:
    """CONNECT properties: a session the broker keeps ``session_expiry_s`` (0: none), and the Receive Maximum."""
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s > 0:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = max(1, min(65535, receive_maximum))
    return props


class ReadWatch:
    """Whether a client's connection has bytes to read, waiting up to a timeout: ``ReadWatch().readable(sock, 0.1)``."""

    def __init__(self) -> None:
        self._poller: Any = None
        self._sock: Any = None

    def readable(self, sock: Any, timeout_s: float = 0.0) -> bool:
        """Whether ``sock`` has bytes to read now or within ``timeout_s``.

        Raises:
            OSError, ValueError: ``sock`` was closed meanwhile.
        """
        pending = getattr(sock, "pending", None)  # a TLS socket keeps decrypted bytes that poll() does not see
        if pending is not None and pending():
            return True
        if self._sock is not sock:  # one poller per connection; poll(), unlike select(), takes descriptors past 1,023
            self._poller, self._sock = select.poll(), sock
            self._poller.register(sock, select.POLLIN)
        return bool(self._poller.poll(timeout_s * 1000.0))


def loop_alive(client: mqtt.Client) -> bool:
    """Whether the network thread of ``client.loop_start()`` is running."""
    # paho 2.x keeps the thread in ``_thread`` and sets it to None when loop_forever returns or raises.
    thread = getattr(client, "_thread", None)
    return thread is not None and thread.is_alive()


def revive(client: mqtt.Client, settings: MqttSettings) -> bool:
    """Restart a network thread that died (and reconnect: its connection is in an unknown state); True if it had to.

    Call it only for a client that was started and not stopped.
    """
    if loop_alive(client):
        return False
    # loop_start makes a new wake-up socket pair; paho 2.x closes the old one only here or on garbage collection.
    client._reset_sockets(sockpair_only=True)
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s, clean_start=True)
    client.loop_start()
    return True


def publish_properties(
    *, response_topic: str | None = None, correlation: bytes | None = None, expiry_s: int | None = None
) -> Properties:
    """PUBLISH properties for request/response (MQTT v5 ResponseTopic and CorrelationData)."""
    props = _RequestResponseProperties()
    fields = props.__dict__  # the names are valid for PUBLISH: paho's per-assignment checks would find nothing
    if expiry_s is not None:
        fields["MessageExpiryInterval"] = max(1, int(expiry_s))
    if response_topic is not None:
        fields["ResponseTopic"] = response_topic
    if correlation is not None:
        fields["CorrelationData"] = correlation
    return props


_PUBLISH_TABLES = dict(Properties(PacketTypes.PUBLISH).__dict__)  # packetType and paho's name and type tables
#: The properties :func:`publish_properties` sets, by paho's attribute name: (identifier, writer).
_REQUEST_RESPONSE = {
    "MessageExpiryInterval": (b"\x02", lambda v: struct.pack("!L", v)),
    "ResponseTopic": (b"\x08", lambda v: _length_prefixed(v.encode("utf-8"))),
    "CorrelationData": (b"\x09", lambda v: _length_prefixed(bytes(v))),
}


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


class _RequestResponseProperties(Properties):
    """paho's PUBLISH properties, made and packed in a few microseconds instead of ~40 (measured).

    paho builds its name and type tables anew for every instance and walks all of them in
    ``pack``; these share one copy of the tables and pack only what is set, in paho's order,
    to the same bytes. Any other property set on one is packed by paho's own code.
    """

    def __init__(self) -> None:  # paho's constructor is what this replaces
        self.__dict__.update(_PUBLISH_TABLES)

    def pack(self) -> bytes:
        """The properties on the wire: their length, then each as identifier and value."""
        fields = self.__dict__
        if len(fields) - len(_PUBLISH_TABLES) > sum(name in fields for name in _REQUEST_RESPONSE):
            return bytes(super().pack())  # something else was set: paho knows how to write it
        body = b"".join(
            ident + write(fields[name]) for name, (ident, write) in _REQUEST_RESPONSE.items() if name in fields
        )
        return bytes(VariableByteIntegers.encode(len(body))) + body
