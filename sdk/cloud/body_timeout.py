"""A deadline on the request body: a client that declares a body and does not send it gets 408 and is hung up on.

uvicorn times out an idle keep-alive connection (``timeout_keep_alive``) but not a request
whose body stalls; without this, each such client holds a connection and a task for ever.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdk.cloud.schemas import error_response_for

__all__ = ["BodyTimedOut", "BodyTimeout"]


async def _within(awaitable: Awaitable[Message], deadline: float) -> Message:
    """``await awaitable`` unless the loop's clock passes ``deadline`` first (then TimeoutError)."""
    if sys.version_info >= (3, 11):  # a timer on this task; wait_for would start a task per call
        async with asyncio.timeout_at(deadline):
            return await awaitable
    return await asyncio.wait_for(awaitable, max(deadline - asyncio.get_running_loop().time(), 0.0))


class BodyTimedOut(Exception):
    """The request's body did not arrive within the deadline (the route sees this from ``receive``)."""


class BodyTimeout:
    """ASGI middleware: the whole body must arrive within ``timeout_s`` of the request's start, else 408.

    Whatever the app answers once the deadline has passed (it may turn the error into its own
    response) is replaced by the 408, sent with ``Connection: close``.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False
        timed_out = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done or timed_out:
                return await receive()
            try:
                message = await _within(receive(), deadline)
            except asyncio.TimeoutError:  # the builtin TimeoutError only from 3.11
                timed_out = True
                raise BodyTimedOut(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # the 408 below answers instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise  # once the body timed out, whatever the app raised follows from it
        if timed_out and not started:
            message = f"the request body did not arrive within {self.timeout_s:g} s"
            answer = error_response_for(scope["path"], 408, "bad_request", message, {"Connection": "close"})
            await answer(scope, receive, send)
