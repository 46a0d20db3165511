"""The cloud HTTP endpoint: ``create_app(services, config)`` returns a FastAPI app.

```python
services = load_services(["models/digits"])
uvicorn.run(create_app(services, CloudConfig(api_keys=("a-long-secret-key-1",))))
```
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from sdk.cloud.body_timeout import BodyTimeout
from sdk.cloud.config import CloudConfig
from sdk.cloud.deps import API_KEY_HEADER, AppState, api_key_accepted
from sdk.cloud.error_boundary import ErrorBoundary
from sdk.cloud.fleet_metrics import FleetCollector
from sdk.cloud.inference import InferenceService
from sdk.cloud.metrics import ServiceMetrics
from sdk.cloud.oip_codec import PREFIX, speaks_oip
from sdk.cloud.registry import Registry
from sdk.cloud.rollout_store import RolloutStore
from sdk.cloud.routes import dashboard, models, oip, ops
from sdk.cloud.routes import registry as registry_routes
from sdk.cloud.schemas import error_response_for
from sdk.cloud.trace_context import TraceContext
from sdk.errors import FedgeError, Unauthorized
from sdk.outcomes import code_for_status, error_code_for, http_status_for

__all__ = ["create_app"]


def create_app(
    services: Mapping[str, InferenceService],
    config: CloudConfig | None = None,
    *,
    metrics: ServiceMetrics | None = None,
    repository_dir: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
    rollouts: RolloutStore | None = None,
) -> FastAPI:
    """An app serving ``services`` (by model name); their owner closes them after the server stops.

    With ``repository_dir`` it also serves the signed release repository under ``/tuf``
    (``/tuf/metadata/...`` and ``/tuf/targets/...``): public, because every byte is verified
    by the device against signed metadata. With a ``registry``, ``rollouts`` holds its staged
    rollouts (default: under the default release policy).
    """
    app = FastAPI(
        title="Fedge cloud inference",
        version="1",
        description=(
            "Cloud fallback for Fedge devices: the same models and the same dynamic batcher as the MQTT workers. "
            'Errors have the body `{"error": {"code", "message"}}` with the wire format\'s codes. '
            "Under `/v2` it speaks the Open Inference Protocol (KServe v2, Triton HTTP), "
            'whose errors have the body `{"error": "<message>"}`.'
        ),
    )
    config = config or CloudConfig()
    metrics = metrics or ServiceMetrics()
    for service in services.values():
        service.report_to(metrics)
    if registry is not None and rollouts is None:
        rollouts = RolloutStore(registry)
    if registry is not None and rollouts is not None:
        metrics.registry.register(FleetCollector(registry, rollouts))
    app.state.fedge = AppState(services=services, config=config, metrics=metrics, registry=registry, rollouts=rollouts)
    app.include_router(models.router, responses=models.UNEXPECTED)
    app.include_router(ops.router, responses=models.UNEXPECTED)
    app.include_router(registry_routes.router, responses=models.UNEXPECTED)
    app.include_router(oip.open_router, responses=models.UNEXPECTED)
    app.include_router(oip.router, responses=models.UNEXPECTED)
    app.include_router(dashboard.router)
    app.add_middleware(BodyTimeout, timeout_s=config.body_timeout_s)
    app.add_middleware(ErrorBoundary)  # added last: outside the body timeout, so it sees what that lets through
    app.add_middleware(TraceContext)  # outermost: a request's span covers all of it, a 500 included
    if repository_dir is not None:
        app.mount("/tuf", StaticFiles(directory=os.fspath(repository_dir)), name="tuf")

    @app.exception_handler(FedgeError)
    async def fedge_error(request: Request, exc: FedgeError) -> JSONResponse:
        status = 415 if isinstance(exc, models.UnsupportedMediaType) else http_status_for(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return error_response_for(request.url.path, status, error_code_for(exc), str(exc), headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        path = request.url.path
        no_route = exc.status_code in (404, 405) and _guarded(path)
        # No route matched, so no route's key check ran: the key first, then whether the route exists.
        if no_route and not api_key_accepted(config, request.headers.get(API_KEY_HEADER)):
            return await fedge_error(request, Unauthorized(f"missing or invalid {API_KEY_HEADER} header"))
        code = code_for_status(exc.status_code)
        headers = exc.headers
        message = str(exc.detail)
        if no_route and exc.status_code == 404:  # an unknown route, not an unknown model
            code, message = "bad_request", f"no route {request.method} {path}"
        if exc.status_code == 405:  # the router's Allow names one route on the path, not every one
            allow = _allowed_methods(app.openapi()["paths"], path)
            headers = {**(headers or {}), "Allow": allow or (headers or {}).get("Allow", "")}
        return error_response_for(path, exc.status_code, code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(str(e.get("msg")) for e in exc.errors()[:5])
        return error_response_for(request.url.path, 422, "bad_request", message)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(models.REQUEST_SCHEMAS)
            components.update(oip.REQUEST_SCHEMAS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    return app


def _guarded(path: str) -> bool:
    """Whether ``path`` is under the prefixes whose routes want an API key (the protocol's health is open)."""
    under_v1 = path == "/v1" or path.startswith("/v1/")
    return under_v1 or (speaks_oip(path) and not path.startswith(f"{PREFIX}/health/"))


def _allowed_methods(paths: Mapping[str, Mapping[str, Any]], path: str) -> str:
    """The methods the OpenAPI ``paths`` list for ``path``, with HEAD where GET is (Starlette answers both)."""
    for template, operations in paths.items():
        parts = re.split(r"(\{[^}/]+\})", template)
        if re.fullmatch("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts), path):
            methods = {method.upper() for method in operations}
            return ", ".join(sorted(methods | {"HEAD"} if "GET" in methods else methods))
    return ""
