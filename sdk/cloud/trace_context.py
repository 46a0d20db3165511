"""HTTP requests continue their caller's trace: a server span per request from its ``traceparent`` header.

The span is current while the request is answered, so a request that reaches the batcher is
linked from its batch's span. With tracing off (:func:`sdk.tracing.active`) requests pass straight through.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdk import tracing

__all__ = ["TraceContext"]


class TraceContext:
    """ASGI middleware: one server span per HTTP request, child of the context its headers carry."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http" or not tracing.active():
            await self.app(scope, receive, send)
            return
        with tracing.server_span(Headers(scope=scope), scope["method"], scope["path"]) as span:

            async def recorded_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    tracing.record_http_status(span, message["status"])
                await send(message)

            await self.app(scope, receive, recorded_send)
