"""Bounds on a request's head (request line and headers), which uvicorn does not enforce: time and size.

uvicorn's ``timeout_keep_alive`` runs only after a response: a connection that never completes
a request's headers is held for ever, and with ``limit_concurrency`` enough of them would turn
every other client away (uvicorn issue #157 asks for this timeout). The httptools parser, which
uvicorn prefers, buffers headers of any size, and h11 bounds only what it has not parsed yet.
The app cannot help: it is called once the headers are in. The body has its own deadline in the
app (:mod:`sdk.cloud.body_timeout`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["with_head_limits"]

_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def with_head_limits(timeout_s: float, max_bytes: int) -> type[asyncio.Protocol]:
    """Uvicorn's HTTP protocol (httptools, else h11) that hangs up on a slow or oversized request head.

    The deadline runs from the connection, and on a kept-alive connection from the first byte
    of the next request, until the headers are complete (uvicorn starts a new request); then the
    connection is closed without an answer. A head still incomplete past ``max_bytes`` gets 431.
    """

    class HeadLimitsProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _timer: asyncio.TimerHandle | None = None
        _armed_after: Any = None  # the request that was current when the head began
        _head_bytes = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._in_head() and (self._timer is None or self._armed_after is not self.cycle):
                self._arm()  # a new request begins; a trickle of the same one does not move its deadline
            super().data_received(data)
            if not self._in_head() or self._armed_after is not self.cycle:
                return  # the headers are complete: a new request runs
            self._head_bytes += len(data)
            if self._head_bytes > max_bytes and not self.transport.is_closing():
                self.transport.write(_TOO_LARGE)
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def _in_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._armed_after = self.cycle
            self._head_bytes = 0
            self._timer = self.loop.call_later(timeout_s, self._expire)

        def _expire(self) -> None:
            self._timer = None
            # A request whose headers came in since has a new cycle, and is no business of ours.
            if self.cycle is self._armed_after and not self.transport.is_closing():
                self.transport.close()

    return HeadLimitsProtocol
