"""How a failure travels: the wire error code for an exception, and the HTTP status for a code."""

from __future__ import annotations

from sdk import wire
from sdk.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnknownModel,
    WireFormatError,
)

__all__ = ["error_code_for", "http_status_for"]


def error_code_for(exc: BaseException) -> wire.ErrorCode:
    """The wire error code that tells a client what went wrong."""
    if isinstance(exc, (InvalidInput, WireFormatError, ModelError, Conflict)):
        return "bad_request"
    if isinstance(exc, NotFound):
        return "unknown_model"
    if isinstance(exc, UnknownModel):
        return "unknown_model"
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, Unauthorized):
        return "unauthorized"
    return "internal"


def http_status_for(exc: BaseException) -> int:
    """The HTTP status of a failed request."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, ModelError):
        return 422
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, InvalidInput):
        return 422
    return {
        "bad_request": 400,
        "unknown_model": 404,
        "overloaded": 503,
        "deadline": 504,
        "unauthorized": 401,
        "internal": 500,
    }[error_code_for(exc)]
