"""A deadline on a request's headers, which uvicorn does not have: silent or trickling clients are hung up on.

uvicorn's ``timeout_keep_alive`` runs only after a response; a connection that never completes
a request is held for ever, and with ``limit_concurrency`` enough of them would turn every
other client away (uvicorn issue #157 asks for this timeout). The app cannot help: it is called
only once the headers are in. The body has its own deadline in the app (:mod:`sdk.cloud.body_timeout`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["with_header_timeout"]


def with_header_timeout(timeout_s: float) -> type[asyncio.Protocol]:
    """Uvicorn's HTTP protocol (httptools, else h11), hanging up when request headers take over ``timeout_s``.

    The deadline runs from the connection, and on a kept-alive connection from the first byte
    of the next request; it ends when the headers are complete (uvicorn starts a new request).
    """

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _timer: asyncio.TimerHandle | None = None
        _armed_after: Any = None  # the request that was current when the deadline started

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            between_requests = self.cycle is None or self.cycle.response_complete
            if between_requests and (self._timer is None or self._armed_after is not self.cycle):
                self._arm()  # a new request begins; a trickle of the same one does not move its deadline
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._armed_after = self.cycle
            self._timer = self.loop.call_later(timeout_s, self._expire)

        def _expire(self) -> None:
            self._timer = None
            # A request whose headers came in since is no business of ours: it has a new cycle.
            if self.cycle is self._armed_after and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
