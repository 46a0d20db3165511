"""How a failure travels: one table from wire error code to HTTP status, device-side error and cloud health.

The cloud turns an exception into a code (:func:`error_code_for`) for the wire and
the HTTP body, and into an HTTP status (:func:`http_status_for`); the device turns a
code back into an exception (:func:`error_for`) and asks whether it says the cloud is
unwell (:func:`counts_against_cloud`, for its breaker). Every one of them reads
:data:`OUTCOMES`. A code this side does not know (a newer cloud's) is a
:class:`~sdk.errors.RemoteError` that counts against the cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdk.errors import (
    CloudError,
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RemoteError,
    Unauthorized,
    UnknownModel,
    WireFormatError,
)

__all__ = [
    "ERROR_CODES",
    "OUTCOMES",
    "ErrorCode",
    "Outcome",
    "code_for_status",
    "counts_against_cloud",
    "error_code_for",
    "error_for",
    "http_status_for",
]

ErrorCode = Literal["bad_request", "unknown_model", "overloaded", "deadline", "internal", "unauthorized"]


@dataclass(frozen=True)
class Outcome:
    """What one wire error code means on each side."""

    error: type[CloudError]  # raised on the device when the cloud answers with this code
    http_status: int
    unhealthy: bool  # whether the answer says the cloud is unwell (a breaker failure), not that the request was bad
    raised_for: tuple[type[Exception], ...] = ()  # the cloud-side exceptions answered with this code


OUTCOMES: dict[ErrorCode, Outcome] = {
    "bad_request": Outcome(RemoteError, 400, False, (InvalidInput, WireFormatError, ModelError, Conflict)),
    "unauthorized": Outcome(RemoteError, 401, False, (Unauthorized,)),
    "unknown_model": Outcome(UnknownModel, 404, False, (NotFound, UnknownModel)),
    "overloaded": Outcome(Overloaded, 503, True, (Overloaded,)),
    "deadline": Outcome(DeadlineExceeded, 504, True, (DeadlineExceeded,)),
    "internal": Outcome(RemoteError, 500, True),
}
ERROR_CODES: tuple[ErrorCode, ...] = tuple(OUTCOMES)

# HTTP says more than the wire code for these (first match wins); the rest get their code's status.
_FINER_HTTP_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (ModelError, 422),
    (InvalidInput, 422),
)


def error_code_for(exc: BaseException) -> ErrorCode:
    """The wire error code that tells a client what went wrong (``internal`` for anything unforeseen)."""
    for code, outcome in OUTCOMES.items():
        if isinstance(exc, outcome.raised_for):
            return code
    return "internal"


def http_status_for(exc: BaseException) -> int:
    """The HTTP status of a request that failed with ``exc``."""
    for kind, status in _FINER_HTTP_STATUS:
        if isinstance(exc, kind):
            return status
    return OUTCOMES[error_code_for(exc)].http_status


def code_for_status(status: int) -> ErrorCode:
    """The wire error code of an HTTP error status the framework answered by itself (405, 404 ...)."""
    for code, outcome in OUTCOMES.items():
        if outcome.http_status == status:
            return code
    return "internal" if status >= 500 else "bad_request"


def error_for(code: str, message: str) -> CloudError:
    """The exception the device raises for a cloud's error answer ``code``."""
    outcome = OUTCOMES.get(code)  # type: ignore[call-overload]
    if outcome is None or outcome.error is RemoteError:
        return RemoteError(code, message)
    return outcome.error(f"the cloud answered {code}: {message}")


def counts_against_cloud(exc: CloudError) -> bool:
    """Whether a failed call says the cloud is unwell (not only that this request was refused)."""
    code = exc.code if isinstance(exc, RemoteError) else error_code_for(exc)
    outcome = OUTCOMES.get(code)  # type: ignore[call-overload]
    return outcome is None or outcome.unhealthy
