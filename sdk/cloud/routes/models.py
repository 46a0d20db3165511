"""The models resource: list what is served, and predict (JSON or the binary wire format)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from sdk import wire
from sdk.cloud.body_timeout import BodyTimedOut
from sdk.cloud.deps import AppState, Authorized, ServiceFor, State
from sdk.cloud.schemas import TENSOR_MEDIA_TYPE, ErrorBody, ModelInfo, PredictRequest, PredictResponse, TensorInfo
from sdk.confidence import confidences
from sdk.errors import InvalidInput, PayloadTooLarge, WireFormatError
from sdk.outcomes import error_code_for

__all__ = ["GUARDED", "REQUEST_SCHEMAS", "UNEXPECTED", "UnsupportedMediaType", "counted", "read_body", "router"]

#: The answer of every route an API key guards, when the key is missing or wrong.
GUARDED = {401: {"model": ErrorBody, "description": "Missing or invalid X-API-Key (when keys are configured)."}}
#: What any route may answer: the catch-all's 500 (the traceback is in the server log, not the body).
UNEXPECTED = {500: {"model": ErrorBody, "description": "An unexpected server error; code internal."}}
#: What a route that reads a body may answer besides its own errors.
SLOW_BODY = {408: {"model": ErrorBody, "description": "The body did not arrive within body_timeout_s."}}

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized], responses=GUARDED)

_REQUEST_SCHEMA = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
#: The predict body's JSON schema and the recursive one it refers to, for the app's OpenAPI components.
REQUEST_SCHEMAS = {
    "PredictRequest": {k: v for k, v in _REQUEST_SCHEMA.items() if k != "$defs"},
    **_REQUEST_SCHEMA["$defs"],
}

_ERRORS = {
    400: {
        "model": ErrorBody,
        "description": "Malformed body (bad JSON, numbers as strings or booleans, bad wire payload).",
    },
    404: {"model": ErrorBody, "description": "No model of that name is served."},
    **SLOW_BODY,
    413: {"model": ErrorBody, "description": "Body larger than max_body_bytes; it was not parsed."},
    415: {"model": ErrorBody, "description": "Content-Type is neither JSON nor the tensor wire format."},
    422: {"model": ErrorBody, "description": "Input of the wrong shape or dtype, or not finite."},
    503: {"model": ErrorBody, "description": "Overloaded: the queue is full; retry after a pause."},
    504: {"model": ErrorBody, "description": "The request's deadline passed while it was queued."},
}


class UnsupportedMediaType(WireFormatError):
    """The body's Content-Type is neither JSON nor the tensor wire format."""


@router.get("", summary="List the models served here")
async def list_models(state: State) -> list[ModelInfo]:
    """Name, version, input spec and labels of every model."""
    return [
        ModelInfo(
            name=name,
            version=service.manifest.version,
            input=TensorInfo(
                name=service.manifest.input.name,
                dtype=service.manifest.input.dtype,
                shape=[-1 if d is None else d for d in service.manifest.input.shape],
            ),
            labels=list(service.manifest.labels),
        )
        for name, service in sorted(state.services.items())
    ]


@router.post(
    "/{name}/predict",
    summary="Run the model on one sample or a batch",
    response_model=PredictResponse,
    responses={200: {"content": {TENSOR_MEDIA_TYPE: {}}}, **_ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
                TENSOR_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def predict(name: str, request: Request, service: ServiceFor, state: State) -> Response:
    """Answer through the model's dynamic batcher.

    A JSON body gets a JSON answer; a body in the tensor wire format (the MQTT payload,
    Content-Type ``application/x-fedge-tensor``) gets a wire-format reply.
    """
    with counted(state, name, "http"):
        body = await read_body(request, state.config.max_body_bytes)
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media == TENSOR_MEDIA_TYPE:
            message = wire.decode(body, max_bytes=state.config.max_body_bytes)
            if message.kind != "request":
                raise WireFormatError(f"expected a request, got a {message.kind}")
            x, priority, deadline_ms = message.tensor, message.priority, message.deadline_ms
        elif media == "application/json":
            req = _parse_json(body)
            x, priority, deadline_ms = _to_array(req.inputs), req.priority, req.deadline_ms
        else:
            raise UnsupportedMediaType(f"Content-Type {media!r}: send application/json or {TENSOR_MEDIA_TYPE}")
        future, single = service.submit(
            x, deadline_s=None if deadline_ms is None else deadline_ms / 1000.0, priority=priority
        )
        outputs = await asyncio.wrap_future(future)
    version = service.manifest.version
    if media == TENSOR_MEDIA_TYPE:
        answer = wire.reply(message, outputs[0] if single else outputs, model_version=version, source="cloud:http")
        return Response(wire.encode(answer), media_type=TENSOR_MEDIA_TYPE)
    probs = confidences(outputs, service.manifest.output_kind, service.model.artifact.temperature)
    labels = probs.argmax(axis=1)
    body_out = {
        "model": name,
        "model_version": version,
        "outputs": outputs.tolist(),
        "labels": labels.tolist(),
        "confidences": probs[np.arange(len(labels)), labels].tolist(),
    }
    return Response(json.dumps(body_out), media_type="application/json")


@contextmanager
def counted(state: AppState, model: str, transport: str) -> Iterator[None]:
    """Count the request the block answers, by its outcome, and time it."""
    start = time.perf_counter()
    outcome = "internal"
    try:
        yield
        outcome = "ok"
    except ClientDisconnect:
        outcome = "disconnected"  # not an error of ours; the error boundary lets it go quietly
        raise
    except BodyTimedOut:
        outcome = "body_timeout"
        raise
    except Exception as exc:
        outcome = error_code_for(exc)
        raise
    finally:
        state.metrics.count_request(transport, model, outcome, time.perf_counter() - start)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with PayloadTooLarge as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte bound")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a missing or lying Content-Length does not get past the bound
            raise PayloadTooLarge(f"body is over the {limit}-byte bound")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = dict.fromkeys(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())  # ordered, no repeats
        raise WireFormatError(f"invalid JSON body: {'; '.join(list(problems)[:5])}") from None


def _where(loc: tuple[int | str, ...]) -> str:
    """``inputs.0.1`` for a location: the top-level key and the indices, not the union branches pydantic names."""
    if not loc:
        return "body"
    return ".".join([str(loc[0]), *(str(part) for part in loc[1:] if isinstance(part, int))])


def _to_array(inputs: list) -> np.ndarray:
    try:
        with np.errstate(over="raise"):
            return np.asarray(inputs, dtype=np.float32)
    except FloatingPointError:
        raise InvalidInput("inputs hold a number beyond the float32 range") from None
    except (ValueError, TypeError):
        raise InvalidInput("inputs must be a rectangular nested list of numbers") from None
