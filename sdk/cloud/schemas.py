"""Request and response bodies of the HTTP API (they document themselves in ``/docs``)."""

from __future__ import annotations

from typing import Annotated, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat
from typing_extensions import TypeAliasType

from sdk.cloud import oip_codec

__all__ = [
    "TENSOR_MEDIA_TYPE",
    "ErrorBody",
    "ErrorDetail",
    "ModelInfo",
    "Numbers",
    "PredictRequest",
    "PredictResponse",
    "TensorInfo",
    "error_response",
    "error_response_for",
]

#: Media type of a binary body: the wire format of :mod:`sdk.wire`, as on MQTT.
TENSOR_MEDIA_TYPE = "application/x-fedge-tensor"


# Strict: a JSON number (integers too) and nothing else; "1" and true are refused, not converted.
# A recursive alias, so one schema covers a sample and a batch of any rank.
Numbers = TypeAliasType(
    "Numbers",
    Annotated[list[Union[StrictFloat, "Numbers"]], Field(min_length=1)],
)


class PredictRequest(BaseModel):
    """A JSON predict request: one sample or a batch as nested lists of numbers."""

    model_config = ConfigDict(extra="forbid")

    inputs: Numbers = Field(
        description="One sample (the model's sample shape) or a batch (with a leading axis): nested lists of numbers."
    )
    priority: int = Field(0, ge=0, le=9, description="Higher leaves the queue first.")
    deadline_ms: float | None = Field(None, gt=0, le=600_000, description="Drop the request if not run by then.")


class PredictResponse(BaseModel):
    """Outputs, labels and confidences, one row per sample."""

    model: str
    model_version: int
    outputs: list[list[float]]
    labels: list[int]
    confidences: list[float]


class TensorInfo(BaseModel):
    """Name, dtype and shape of a model input (``-1``: any batch size)."""

    name: str
    dtype: str
    shape: list[int]


class ModelInfo(BaseModel):
    """A model this service answers for."""

    name: str
    version: int
    input: TensorInfo
    labels: list[str]


class ErrorDetail(BaseModel):
    """What went wrong: a code from the wire format's list and a message."""

    code: str = Field(description="bad_request, unknown_model, overloaded, deadline, internal or unauthorized")
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer with the uniform body ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def error_response_for(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answer in the body of the protocol ``path`` speaks.

    Under the Open Inference Protocol's prefix: ``{"error": message}``, and 400 where ``/v1`` answers 422
    (the protocol has one status for a bad request); elsewhere the uniform body of :func:`error_response`.
    """
    if oip_codec.speaks_oip(path):
        return JSONResponse(
            oip_codec.error_body(message), status_code=400 if status == 422 else status, headers=headers
        )
    return error_response(status, code, message, headers)
