"""The HTTP app's last line: an exception no handler took becomes a 500 with the uniform body, logged once.

Starlette's own catch-all (``exception_handler(Exception)``) answers but re-raises, so uvicorn
logs the traceback a second time; this middleware sits inside it and ends the exception here.
A client that hung up is not an error: nothing is logged above debug and nothing is sent.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdk.cloud.schemas import error_response_for

__all__ = ["ErrorBoundary"]

log = logging.getLogger(__name__)


class ErrorBoundary:
    """ASGI middleware: answer 500 ``internal`` for an unhandled exception and log its traceback once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except ClientDisconnect:
            log.debug("%s %s: the client hung up before its request was read", scope["method"], scope["path"])
        except Exception:
            # The method and path only: headers may carry an API key, bodies user data.
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                message = "internal error; the server log has the details"
                answer = error_response_for(scope["path"], 500, "internal", message, {"Connection": "close"})
                await answer(scope, receive, send)
