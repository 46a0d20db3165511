"""Browser sessions of the fleet dashboard: a signed, expiring token that opens it without holding the API key.

A browser cannot set ``X-API-Key`` on a navigation, so the dashboard asks for the key once
(a login form, never a query string: those end up in logs and history) and answers with a
cookie holding ``<expires>.<mac>``, where ``mac`` is HMAC-SHA256 of the expiry under the key
that was given. A token proves that its holder knew a configured key until ``expires``; the
key itself cannot be read back from it. Nothing is stored on the server: every uvicorn worker
checks a token alike, and removing a key from ``api_keys`` ends the sessions it opened.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

__all__ = ["SESSION_S", "issue", "valid"]

#: How long a dashboard session lasts before the key is asked again.
SESSION_S = 8 * 3600

_PURPOSE = "fedge-dashboard-session"


def _mac(key: str, expires: int) -> str:
    return hmac.new(key.encode(), f"{_PURPOSE}:{expires}".encode(), hashlib.sha256).hexdigest()


def issue(key: str, *, now: float | None = None, lifetime_s: int = SESSION_S) -> str:
    """A session token signed with ``key`` (an accepted API key), valid for ``lifetime_s``."""
    expires = int(now if now is not None else time.time()) + lifetime_s
    return f"{expires}.{_mac(key, expires)}"


def valid(token: str | None, keys: Sequence[str], *, now: float | None = None) -> bool:
    """Whether ``token`` was issued under one of ``keys`` and has not expired."""
    expires, _, mac = (token or "").partition(".")
    if not expires.isdigit() or len(expires) > 12:
        return False
    if int(expires) <= (now if now is not None else time.time()):
        return False
    # compare_digest against every key: the time taken does not say which key nearly matched
    return any(hmac.compare_digest(mac.encode(), _mac(k, int(expires)).encode()) for k in keys)
