"""The Open Inference Protocol v2 (KServe v2, Triton HTTP): health, metadata, readiness and ``infer``.

The same models, batcher, limits and API key as ``/v1``; errors in the protocol's body
``{"error": "<message>"}``. Health needs no key (an orchestrator's probe has none); every
other route does, checked before anything about the model. ``tritonclient.http`` works unchanged.
"""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sdk.cloud import oip_codec
from sdk.cloud.deps import Authorized, ServiceFor, State, service_for
from sdk.cloud.inference import InferenceService
from sdk.cloud.routes.models import counted, read_body
from sdk.errors import UnknownModel

__all__ = ["REQUEST_SCHEMAS", "SERVER_NAME", "SERVER_VERSION", "open_router", "router"]

_TAG = "open inference protocol"
#: The server's name in its metadata.
SERVER_NAME = "fedge"
try:
    SERVER_VERSION = metadata.version("fedge")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    SERVER_VERSION = "unknown"


class OipError(BaseModel):
    """The body of every error under ``/v2``."""

    error: str


class ServerMetadata(BaseModel):
    """Name, version and extensions (``binary_tensor_data``) of the server."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    """Name, datatype (``FP32`` ...) and shape (``-1``: any batch size) of a tensor."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """A model's name, the version served, platform and tensors."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Live(BaseModel):
    """Liveness."""

    live: bool


class Ready(BaseModel):
    """Readiness of the server (every model) or of one model."""

    ready: bool
    name: str | None = None


class ResponseOutput(BaseModel):
    """An output tensor: values in ``data`` (flat, row-major) or, binary, after the JSON header."""

    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = None
    parameters: dict[str, int] | None = None


class InferenceResponse(BaseModel):
    """The answer to ``infer``: model, version, the request's id and the outputs."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def _error(description: str) -> dict[str, Any]:
    return {"model": OipError, "description": description}


_GUARDED = {401: _error("Missing or invalid X-API-Key (when keys are configured).")}
_UNKNOWN = {404: _error("No such model, or not this version of it.")}
_INFER_ERRORS = {
    400: _error("Malformed JSON or binary layout, or an input of the wrong name, shape, datatype or size."),
    **_UNKNOWN,
    408: _error("The body did not arrive within body_timeout_s."),
    413: _error("Body (or its inflated form) larger than max_body_bytes; it was not parsed."),
    503: _error("Overloaded: the queue is full; retry after a pause (Retry-After)."),
    504: _error("parameters.timeout (microseconds) passed while the request was queued."),
}
_BINARY_NOTE = (
    f"With the binary tensor extension: the `{oip_codec.HEADER_LENGTH}` header gives the JSON header's length, "
    "each binary input's little-endian bytes follow it (`parameters.binary_data_size`), and an answer with a "
    "binary output (`binary_data`, or `binary_data_output` for all) has the same header."
)
_REQUEST_SCHEMA = oip_codec.InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
#: The ``infer`` body's JSON schema and those it refers to, for the app's OpenAPI components.
REQUEST_SCHEMAS = {
    "InferenceRequest": {k: v for k, v in _REQUEST_SCHEMA.items() if k != "$defs"},
    **_REQUEST_SCHEMA["$defs"],
}

#: The routes without a key: liveness and readiness, for an orchestrator's probes.
open_router = APIRouter(prefix=oip_codec.PREFIX, tags=[_TAG])
#: The routes behind the API key.
router = APIRouter(prefix=oip_codec.PREFIX, tags=[_TAG], dependencies=[Authorized], responses=_GUARDED)


async def _served_version(name: str, version: str, state: State) -> InferenceService:
    """The service of the model named in the path, if it serves the version named too."""
    service = await service_for(name, state)
    if version != str(service.manifest.version):
        raise UnknownModel(f"model {name!r} is served at version {service.manifest.version}, not {version!r}")
    return service


ServedVersion = Annotated[InferenceService, Depends(_served_version)]


@open_router.get("/health/live", summary="Liveness: the server answers")
async def live() -> Live:
    """Always live while the process serves HTTP."""
    return Live(live=True)


@open_router.get(
    "/health/ready",
    summary="Readiness: every model takes requests",
    responses={200: {"model": Ready}, 503: {"model": Ready, "description": "A model's batcher is not running."}},
)
async def ready(state: State) -> JSONResponse:
    """200 when every model's batcher runs, else 503."""
    up = bool(state.services) and all(service.ready for service in state.services.values())
    return JSONResponse({"ready": up}, status_code=200 if up else 503)


@router.get("", summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=[oip_codec.BINARY_EXTENSION])


@router.get("/models/{name}", summary="Model metadata", responses=_UNKNOWN)
async def model_metadata(service: ServiceFor) -> ModelMetadata:
    """Name, version served, platform, inputs and outputs from the model's manifest."""
    return ModelMetadata.model_validate(oip_codec.model_metadata(service.manifest))


@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version", responses=_UNKNOWN)
async def model_version_metadata(service: ServedVersion) -> ModelMetadata:
    """As the model's metadata, when that version is the one served."""
    return ModelMetadata.model_validate(oip_codec.model_metadata(service.manifest))


_MODEL_READY = {
    200: {"model": Ready},
    503: {"model": Ready, "description": "The model's batcher is not running."},
    **_UNKNOWN,
}


@router.get("/models/{name}/ready", summary="Model readiness", responses=_MODEL_READY)
async def model_ready(name: str, service: ServiceFor) -> JSONResponse:
    """200 when the model takes requests, else 503."""
    return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness of a version", responses=_MODEL_READY)
async def model_version_ready(name: str, service: ServedVersion) -> JSONResponse:
    """As the model's readiness, when that version is the one served."""
    return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)


_INFER = {
    "summary": "Run the model (JSON tensors or the binary tensor extension)",
    "description": _BINARY_NOTE,
    "response_model": InferenceResponse,
    "responses": {200: {"content": {"application/octet-stream": {}}}, **_INFER_ERRORS},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


@router.post("/models/{name}/infer", **_INFER)
async def infer(name: str, request: Request, service: ServiceFor, state: State) -> Response:
    """Answer through the model's dynamic batcher, as ``/v1`` predict does."""
    return await _infer(name, request, service, state)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(name: str, request: Request, service: ServedVersion, state: State) -> Response:
    """As ``infer``, when that version is the one served."""
    return await _infer(name, request, service, state)


async def _infer(name: str, request: Request, service: InferenceService, state: State) -> Response:
    manifest = service.manifest
    with counted(state, name, "oip"):
        limit = state.config.max_body_bytes
        body = await read_body(request, limit)
        body = oip_codec.inflate(body, request.headers.get("content-encoding"), limit)
        asked = oip_codec.decode_request(
            body,
            request.headers.get(oip_codec.HEADER_LENGTH),
            input_spec=manifest.input,
            output_names=[spec.name for spec in manifest.outputs],
        )
        future, single = service.submit(asked.tensor, deadline_s=asked.timeout_s, priority=asked.priority)
        result = await asyncio.wrap_future(future)
    answer, header_length = oip_codec.encode_response(name, manifest.version, asked, result[0] if single else result)
    if header_length is None:
        return Response(answer, media_type="application/json")
    headers = {oip_codec.HEADER_LENGTH: str(header_length)}
    return Response(answer, media_type="application/octet-stream", headers=headers)
