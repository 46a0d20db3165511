"""A worker's own small HTTP port: ``/healthz`` (200 serving, 503 not) and ``/metrics`` (Prometheus text).

The stdlib server in a daemon thread: a worker has no web framework and needs two read-only routes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from sdk.cloud.metrics import Metrics

__all__ = ["StatusServer"]

log = logging.getLogger("fedge.cloud.status")


class StatusServer:
    """Serves ``healthy()`` and ``metrics`` on ``host:port`` (port 0: a free one, see :attr:`port`)."""

    def __init__(self, healthy: Callable[[], bool], metrics: Metrics, *, host: str = "127.0.0.1", port: int = 0):
        """Bind now; :meth:`start` serves."""
        self._server = ThreadingHTTPServer((host, port), _handler(healthy, metrics))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fedge-status", daemon=True)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._server.server_address[1]

    def start(self) -> StatusServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _handler(healthy: Callable[[], bool], metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, "application/json", b'{"status":"%s"}' % (b"ok" if ok else b"down"))
            elif self.path == "/metrics":
                body, content_type = metrics.render(self.headers.get("Accept"))
                self._send(200, content_type, body)
            else:
                self._send(404, "application/json", b'{"status":"not found"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    return Handler
