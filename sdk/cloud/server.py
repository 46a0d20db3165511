"""Run an ASGI app under a real uvicorn server in a background thread (tests, benchmarks, demo)."""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from sdk.cloud.config import CloudConfig
from sdk.cloud.request_head import with_head_limits
from sdk.errors import ConfigError
from sdk.mosquitto import free_port

__all__ = ["BackgroundServer", "ensure_open_files", "uvicorn_options"]

#: Descriptors the process needs besides its connections: models, logs, the registry's database, the broker.
SPARE_FILES = 64


def uvicorn_options(config: CloudConfig) -> dict[str, Any]:
    """The uvicorn settings that the ``[cloud]`` keys set (the body timeout is the app's own).

    The head limits live in the protocol class, since uvicorn has no deadline on a request's headers;
    ``h11_max_incomplete_event_size`` repeats the size bound for h11's own buffer.
    """
    return {
        "http": with_head_limits(config.header_timeout_s, config.max_header_bytes),
        "limit_concurrency": config.limit_concurrency,
        "timeout_keep_alive": config.keep_alive_s,
        "backlog": config.backlog,
        "h11_max_incomplete_event_size": config.max_header_bytes,
    }


def ensure_open_files(config: CloudConfig) -> None:
    """Raise the soft open-files limit to what ``limit_concurrency`` needs, or refuse naming the key.

    Above the limit, accept() fails and every new client is refused, the legitimate ones too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = config.limit_concurrency + SPARE_FILES
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ConfigError(
            "cloud.limit_concurrency",
            f"{config.limit_concurrency} connections need {need} open files; this process may open {hard} (ulimit -n)",
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")``."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int | None = None, **options: Any) -> None:
        self.host = host
        self.port = port or free_port()
        options.setdefault("log_level", "warning")
        options.setdefault("access_log", False)
        self._server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, **options))
        # uvicorn installs signal handlers only in the main thread; this one is not.
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            await self._server.serve()
            # A connection closed at shutdown closes its socket from a callback of a later loop turn:
            # without these turns the loop ends first and the socket is left to the garbage collector.
            await asyncio.sleep(0.05)

        with asyncio.Runner(loop_factory=self._server.config.get_loop_factory()) as runner:
            runner.run(serve())

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        """Start serving and wait until the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
