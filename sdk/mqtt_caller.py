"""One paho client whose socket is read by the threads waiting on it: a call writes its request and reads its reply.

paho's threaded loop (``loop_start``) does a device's network I/O on its own thread: a request is
written there after a wake-up byte, and a reply is read there and handed back, two thread hand-offs
per call, each a context switch and a GIL transfer on a small machine. Here the calling thread
writes its request itself and, while no other thread reads the socket, waits in ``poll()`` on the
socket and reads its own reply: no hand-off at all (``python -m bench.fallback`` measured a call
at 1.47x a bare paho echo with the threaded loop and 1.26x this way, in one run, alternated).

Calls in flight at once take turns: one is the reader and settles every reply that comes, the
others wait until theirs is settled or the reader's turn ends, and the longest-waiting reads next;
each settled call wakes only its own caller.
Between calls, a housekeeping thread reads what came meanwhile (a late reply, the broker closing
the connection) every ``tick_s``, keeps the connection alive, and connects and reconnects with
jittered backoff. Every paho call happens under one lock, so its packet queue never has two threads
in it. An exception out of paho's packet handling (callbacks keep their own boundaries) is logged and
counted in ``errors``; the connection goes on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from sdk.backoff import Backoff
from sdk.mqtt import MqttSettings, ReadWatch, connect_properties

__all__ = ["TICK_S", "CallerLoop"]

log = logging.getLogger("fedge.mqtt_caller")

#: How often the housekeeping thread looks at the connection between calls.
TICK_S = 0.25

T = TypeVar("T")


class CallerLoop:
    """Runs one client's network I/O on the threads that wait on it: ``loop.run(publish)``, ``loop.wait(future, t)``."""

    def __init__(
        self,
        client: mqtt.Client,
        settings: MqttSettings,
        *,
        connecting: Callable[[], bool] | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        """Drive ``client`` (from :func:`sdk.mqtt.make_client`, not connected); nothing connects before :meth:`start`.

        ``connecting()`` says the client still waits for the broker with no call in flight (default: until
        CONNACK); the housekeeping thread then reads the socket as soon as anything comes, not once a tick.
        """
        self.client = client
        self._connecting = connecting or (lambda: not client.is_connected())
        self.settings = settings
        self.tick_s = tick_s
        self.errors = 0
        self._io = threading.Lock()  # every paho call
        self._reader = threading.Lock()  # the one thread reading the socket
        self._lock = threading.Lock()
        self._waiting: list[threading.Event] = []  # calls waiting while another reads, oldest first
        self._stopping = threading.Event()
        self._incoming = ReadWatch()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(
            base_s=settings.reconnect_min_s, max_s=settings.reconnect_max_s, jitter=settings.reconnect_jitter
        )

    @property
    def alive(self) -> bool:
        """Whether the housekeeping thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> CallerLoop:
        """Connect in the background (clean session) and keep the connection up until :meth:`stop`."""
        if self._thread is None:
            self._stopping.clear()
            self.client.connect_async(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive_s,
                clean_start=True,
                properties=connect_properties(),
            )
            self._thread = threading.Thread(target=self._housekeep, name="fedge-mqtt-caller", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Disconnect and stop the housekeeping thread."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.settings.connect_timeout_s + self.tick_s)
        with self._io:
            if self.client.socket() is not None:
                self._guarded(self.client.disconnect)

    def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` (a publish, say) under the I/O lock; what it queues is written before this returns."""
        with self._io:
            return call()

    def wait(self, future: Future[Any], deadline: float) -> None:
        """Read the socket, or wait while another call reads it, until ``future`` is done or ``deadline`` passes.

        ``deadline`` is a ``time.monotonic()`` reading; whoever reads settles ``future`` from a callback.
        """
        woken: threading.Event | None = None  # made only to wait: a lone call reads and never needs it
        try:
            while not future.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._reader.acquire(blocking=False):
                    try:
                        if self._read_until(future, deadline):
                            continue
                    finally:
                        self._reader.release()
                woken = woken or _woken_by(future)
                self._wait_turn(woken, min(left, self.tick_s))
        finally:
            if self._waiting:
                self._pass_turn()

    def _wait_turn(self, woken: threading.Event, timeout_s: float) -> None:
        with self._lock:
            self._waiting.append(woken)
        try:
            if self._reader.locked():  # checked after joining the queue: a reader that just left passes its turn
                woken.wait(timeout_s)
        finally:
            with self._lock:
                self._waiting.remove(woken)
        woken.clear()  # if the answer came meanwhile, future.done() says so

    def _pass_turn(self) -> None:
        """Wake the longest-waiting call to read next, if nobody reads now."""
        with self._lock:
            first = self._waiting[0] if self._waiting else None
        if first is not None and not self._reader.locked():
            first.set()

    def _read_until(self, future: Future[Any], deadline: float) -> bool:
        """Read until ``future`` is done or ``deadline`` passes; False at once when there is no connection."""
        while not future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if not self._turn(min(left, self.tick_s)):  # whoever settles the call says why
                return False
        return True

    def _turn(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the socket, then read and write what it allows; False without a connection."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return False
        try:
            ready = self._incoming.readable(sock, timeout_s)
        except (OSError, ValueError):  # closed meanwhile
            return False
        with self._io:
            if ready and client.socket() is sock:
                self._guarded(client.loop_read)
            if client.want_write() and client.socket() is not None:
                self._guarded(client.loop_write)
        return True

    def _housekeep(self) -> None:
        attempts, first = 0, True  # attempts since the broker last accepted us
        while not self._stopping.is_set():
            try:
                if self.client.socket() is None:
                    if not first:  # a jittered wait before every reconnect: a fleet does not come back in lockstep
                        attempts += 1
                        if self._stopping.wait(self._backoff.delay(attempts, random.random())):
                            return
                    first = False
                    self._connect()
                    continue
                if self.client.is_connected():
                    attempts = 0
                self._look_after()
            except Exception:  # the thread's boundary: whatever happened, the connection is looked after again
                self.errors += 1
                log.exception("looking after the MQTT connection failed; going on")
                self._stopping.wait(self.tick_s)

    def _look_after(self) -> None:
        """One housekeeping round: read what came between calls, then keep the connection alive."""
        waiting = self._connecting()  # no call is in flight before the connection is up: block on the socket
        if self._reader.acquire(blocking=False):  # else a call reads, and sees all that comes
            try:
                self._turn(self.tick_s if waiting else 0.0)
            finally:
                self._reader.release()
            self._pass_turn()
        with self._io:
            self._guarded(self.client.loop_misc)  # keepalive pings, and a broker that stopped answering them
        if not waiting:
            self._stopping.wait(self.tick_s)

    def _connect(self) -> None:
        with self._io:
            try:
                self.client.reconnect()  # host, port, keepalive and properties as connect_async set them
            except Exception as exc:  # refused, unreachable, a TLS failure: all mean "later"
                log.debug("connect to %s:%s failed: %s", self.settings.host, self.settings.port, exc)

    def _guarded(self, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:  # a bug boundary: a broken packet costs a count, never the connection's driver
            self.errors += 1
            log.exception("an MQTT network call raised; going on")


def _woken_by(future: Future[Any]) -> threading.Event:
    """An event set when ``future`` is done (and by whoever passes a turn to its caller)."""
    woken = threading.Event()
    future.add_done_callback(lambda _: woken.set())
    return woken
