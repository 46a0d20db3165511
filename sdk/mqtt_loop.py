"""Many paho MQTT clients on one selector thread (epoll on Linux): a gateway's devices, or a load simulator's.

paho's own loops (``loop_start``, ``loop_forever``) wait in ``select()``, which fails silently for
file descriptors >= 1024 (FD_SETSIZE; paho issue #819), and each threaded client holds a socket
pair besides its connection, so one process tops out near 339 clients. Here each client's
connection is registered with one ``selectors.DefaultSelector`` through paho's external-loop
callbacks (``on_socket_open``, ``on_socket_close``, ``on_socket_register_write``,
``on_socket_unregister_write``), and one thread calls ``loop_read``, ``loop_write`` and
``loop_misc`` for all of them: one descriptor per client, none of them passed to ``select()``.

What a callback on the loop's thread publishes (a reply from ``on_message``, an acknowledgement)
is written before the loop waits again, not one wait later as paho's own loops do: a request
answered from ``on_message`` goes back without a second pass through the selector.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import random
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from sdk.backoff import Backoff
from sdk.mqtt import MqttSettings, connect_properties

__all__ = ["MISC_INTERVAL_S", "SelectorLoop", "raise_fd_limit"]

log = logging.getLogger("fedge.mqtt_loop")

#: How often every client's ``loop_misc`` runs (keepalive pings, retries of unacknowledged messages).
MISC_INTERVAL_S = 1.0


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):  # some systems cap below an infinite hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Member:
    """What the loop keeps per client: where and how it connects, and how often it failed to in a row."""

    __slots__ = ("backoff", "failures", "properties", "session_expiry_s", "settings", "tried")

    def __init__(self, settings: MqttSettings, session_expiry_s: int, receive_maximum: int | None) -> None:
        self.settings = settings
        self.session_expiry_s = session_expiry_s
        self.properties = connect_properties(session_expiry_s=session_expiry_s, receive_maximum=receive_maximum)
        self.backoff = Backoff(base_s=settings.reconnect_min_s, max_s=settings.reconnect_max_s, interval_s=1.0)
        self.failures = 0
        self.tried = False


class SelectorLoop:
    """Runs the network side of many paho clients on one thread: ``with SelectorLoop() as loop: loop.add(c, s)``.

    Clients connect (clean start) and reconnect with jittered backoff by themselves; their callbacks
    run on the loop's thread, so one that publishes from ``on_message`` needs no lock. Work for the
    loop's thread comes in through :meth:`call_soon` and :meth:`call_later`, from any thread. A callback
    that raises is logged and counted in ``errors`` (and reported to ``on_error``); the loop goes on.
    """

    def __init__(self, *, name: str = "fedge-mqtt-loop", on_error: Callable[[], object] | None = None) -> None:
        self._selector = selectors.DefaultSelector()
        self._members: dict[mqtt.Client, _Member] = {}
        self._calls: collections.deque[Callable[[], object]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._unsent: set[mqtt.Client] = set()  # clients that queued packets on this thread since the last flush
        self._thread: threading.Thread | None = None
        self._running = False
        self._name = name
        self._on_error = on_error
        self.errors = 0

    @property
    def clients(self) -> int:
        """How many clients the loop runs."""
        return len(self._members)

    @property
    def alive(self) -> bool:
        """Whether the loop's thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> SelectorLoop:
        """Start the loop's thread."""
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def add(
        self,
        client: mqtt.Client,
        settings: MqttSettings,
        *,
        session_expiry_s: int = 0,
        receive_maximum: int | None = None,
    ) -> None:
        """Run ``client`` (made by :func:`sdk.mqtt.make_client`, not connected) on this loop and connect it.

        ``session_expiry_s`` and ``receive_maximum`` are as in :func:`sdk.mqtt.connect`.
        """
        chained_open = client.on_socket_open

        def on_open(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            if chained_open is not None:
                chained_open(c, userdata, sock)  # TCP_NODELAY from make_client
            self._on_loop(lambda: self._selector.register(sock, selectors.EVENT_READ, c))

        client.on_socket_open = on_open
        client.on_socket_close = lambda c, userdata, sock: self._on_loop(lambda: self._forget(c, sock))
        client.on_socket_register_write = lambda c, userdata, sock: self._on_loop(lambda: self._want(c, sock, True))
        client.on_socket_unregister_write = lambda c, userdata, sock: self._on_loop(lambda: self._want(c, sock, False))
        self.call_soon(lambda: self._join(client, _Member(settings, session_expiry_s, receive_maximum)))

    def remove(self, client: mqtt.Client) -> None:
        """Disconnect ``client`` and stop running it (it does not reconnect)."""
        self.call_soon(lambda: self._leave(client))

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop's thread as soon as it can."""
        with self._lock:
            self._calls.append(fn)
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(BlockingIOError):  # a wake-up already pending is enough
                self._wake_w.send(b"\0")

    def call_later(self, delay_s: float, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop's thread after ``delay_s`` seconds."""
        when = time.monotonic() + max(0.0, delay_s)
        self.call_soon(lambda: heapq.heappush(self._timers, (when, next(self._order), fn)))

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect every client, wait up to ``timeout_s`` for their sockets to close, stop the thread."""
        if self._thread is None:
            self._release()
            return
        drained = threading.Event()

        def leave_all() -> None:
            for client in list(self._members):
                self._leave(client)
            self.call_soon(drained.set)

        self.call_soon(leave_all)
        drained.wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while len(self._selector.get_map()) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        self._running = False
        self.call_soon(lambda: None)
        self._thread.join(timeout_s)
        self._thread = None
        self._release()

    def _release(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- on the loop's thread ------------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], object]) -> None:
        if threading.current_thread() is self._thread:
            fn()
        else:  # paho calls register_write from whichever thread publishes
            self.call_soon(fn)

    def _join(self, client: mqtt.Client, member: _Member) -> None:
        self._members[client] = member
        self._connect(client)

    def _connect(self, client: mqtt.Client) -> None:
        member = self._members.get(client)
        if member is None or client.socket() is not None:
            return
        settings = member.settings
        try:
            if member.tried:
                client.reconnect()
            else:
                member.tried = True  # connect() keeps host, port, keepalive and properties for later reconnects
                client.connect(
                    settings.host,
                    settings.port,
                    keepalive=settings.keepalive_s,
                    clean_start=member.session_expiry_s <= 0,
                    properties=member.properties,
                )
        except OSError as exc:
            log.debug("connect to %s:%s failed: %s", settings.host, settings.port, exc)
            self._retry(client, member)

    def _retry(self, client: mqtt.Client, member: _Member) -> None:
        member.failures += 1
        delay = member.backoff.delay(member.failures, random.random())
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._order), lambda: self._connect(client)))

    def _leave(self, client: mqtt.Client) -> None:
        if self._members.pop(client, None) is not None and client.socket() is not None:
            client.disconnect()

    def _forget(self, client: mqtt.Client, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        member = self._members.get(client)
        if member is not None:  # lost, not asked to leave: come back after a jittered pause
            self._retry(client, member)

    def _want(self, client: mqtt.Client, sock: Any, write: bool) -> None:
        if write:  # written by the next flush, this turn; the selector watches for room only if it does not all fit
            self._unsent.add(client)
        else:
            self._watch(client, sock, write=False)

    def _watch(self, client: mqtt.Client, sock: Any, *, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        with contextlib.suppress(KeyError, ValueError):  # closed meanwhile
            if self._selector.get_key(sock).events != events:
                self._selector.modify(sock, events, client)

    def _flush(self) -> None:
        """Write what was queued for the loop's thread now, outside paho's callbacks, rather than a wait later."""
        unsent, self._unsent = self._unsent, set()
        for client in unsent:
            sock = client.socket()
            if sock is not None and client.want_write():
                self._guarded(client.loop_write)
                if client.want_write() and client.socket() is sock:  # the socket took part of it: wait for room
                    self._watch(client, sock, write=True)

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while self._running:
            now = time.monotonic()
            wait = next_misc - now
            if self._timers:
                wait = min(wait, self._timers[0][0] - now)
            if self._calls:
                wait = 0
            for key, events in self._selector.select(max(0.0, wait)):
                client = key.data
                if client is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                    continue
                if events & selectors.EVENT_READ:
                    self._guarded(client.loop_read)
                if events & selectors.EVENT_WRITE and client.socket() is not None:
                    self._guarded(client.loop_write)
            self._run_calls()
            self._flush()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                self._guarded(heapq.heappop(self._timers)[2])
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL_S
                for client, member in list(self._members.items()):
                    if client.socket() is not None:
                        self._guarded(client.loop_misc)
                    if client.is_connected():  # the broker accepted it: the next loss starts the backoff afresh
                        member.failures = 0
            self._flush()  # what timers and loop_misc queued: a CONNECT, a PINGREQ

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
        for fn in calls:
            self._guarded(fn)

    def _guarded(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # a bug boundary: one bad callback must not stop every client on the loop
            self.errors += 1
            log.exception("a callback on the MQTT selector loop raised")
            if self._on_error is not None:
                self._on_error()

    def __enter__(self) -> SelectorLoop:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
