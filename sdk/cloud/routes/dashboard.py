"""The fleet dashboard: ``/dashboard``, a server-rendered page that a small script refreshes every few seconds.

Behind the API keys like ``/v1``, but a browser cannot send ``X-API-Key`` on a navigation:
``/dashboard/login`` takes a key once through a form POST (never a query string) and sets
an HttpOnly, SameSite=Strict cookie, scoped to ``/dashboard``, holding a signed, expiring
session token (:mod:`sdk.cloud.dashboard_session`), not the key. The page and its fragment
``/dashboard/fleet`` accept that cookie or the ``X-API-Key`` header; without either the page
redirects to the login form and the fragment answers 401. With no API keys configured the
dashboard is open, as ``/v1`` is. Keys are never logged, echoed nor put in a page. The page
runs no inline script or style, and its Content-Security-Policy allows only this origin's.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.templating import Jinja2Templates

from sdk.cloud import dashboard_session
from sdk.cloud.deps import API_KEY_HEADER, AppState, State, api_key_accepted
from sdk.cloud.fleet_view import fleet_view
from sdk.cloud.routes.models import read_body

__all__ = ["COOKIE", "REFRESH_MS", "router"]

#: The session cookie's name.
COOKIE = "fedge_dashboard"
#: How often the page asks for a fresh rendering of the fleet.
REFRESH_MS = 2000

_FILES = Path(__file__).resolve().parent.parent / "dashboard"
_MAX_LOGIN_BYTES = 4096
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_templates = Jinja2Templates(directory=_FILES)
_templates.env.filters["percent"] = lambda rate: "-" if rate is None else f"{100 * rate:.1f} %"
_templates.env.filters["version"] = lambda version: "none" if version is None else f"v{version}"
_templates.env.filters["ago"] = lambda s: f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago"

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)

ApiKey = Annotated[str | None, Header(alias=API_KEY_HEADER)]


def _signed_in(request: Request, state: AppState, key: str | None) -> bool:
    """Whether the request carries a live session cookie or an accepted key (or no keys are configured)."""
    keys = state.config.api_keys
    return api_key_accepted(state.config, key) or dashboard_session.valid(request.cookies.get(COOKIE), keys)


async def _view(state: AppState):
    # The registry answers from the database: off the event loop.
    return None if state.registry is None else await run_in_threadpool(fleet_view, state.registry, state.rollouts)


@router.get("")
async def page(request: Request, state: State, key: ApiKey = None) -> Response:
    """The dashboard, or a redirect to the login form."""
    if not _signed_in(request, state, key):
        return RedirectResponse("/dashboard/login", status_code=303, headers=_HEADERS)
    context = {"view": await _view(state), "refresh_ms": REFRESH_MS, "session": bool(state.config.api_keys)}
    return _templates.TemplateResponse(request, "page.html", context, headers=_HEADERS)


@router.get("/fleet")
async def fleet(request: Request, state: State, key: ApiKey = None) -> Response:
    """The fleet section alone, for the page's script to swap in; 401 without a session."""
    if not _signed_in(request, state, key):
        return Response("sign in at /dashboard/login", status_code=401, media_type="text/plain", headers=_HEADERS)
    return _templates.TemplateResponse(request, "fleet.html", {"view": await _view(state)}, headers=_HEADERS)


@router.get("/login")
async def login_form(request: Request) -> Response:
    """The form that asks for an API key."""
    return _templates.TemplateResponse(request, "login.html", {"refused": False}, headers=_HEADERS)


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Exchange an accepted API key for a session cookie and go to the dashboard; 401 and the form again if not."""
    body = await read_body(request, _MAX_LOGIN_BYTES)
    given = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
    keys = state.config.api_keys
    if not keys:
        return RedirectResponse("/dashboard", status_code=303, headers=_HEADERS)
    matched = next((k for k in keys if hmac.compare_digest(given.encode(), k.encode())), None)
    if matched is None:
        return _templates.TemplateResponse(request, "login.html", {"refused": True}, status_code=401, headers=_HEADERS)
    answer = RedirectResponse("/dashboard", status_code=303, headers=_HEADERS)
    answer.set_cookie(
        COOKIE,
        dashboard_session.issue(matched),
        max_age=dashboard_session.SESSION_S,
        path="/dashboard",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return answer


@router.post("/logout")
async def logout() -> Response:
    """Drop the session cookie and go back to the login form."""
    answer = RedirectResponse("/dashboard/login", status_code=303, headers=_HEADERS)
    answer.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
    return answer


@router.get("/dashboard.js")
async def script() -> FileResponse:
    """The page's script."""
    return FileResponse(_FILES / "dashboard.js", media_type="text/javascript", headers=_HEADERS)


@router.get("/dashboard.css")
async def style() -> FileResponse:
    """The page's style sheet."""
    return FileResponse(_FILES / "dashboard.css", media_type="text/css", headers=_HEADERS)
