"""The cloud HTTP endpoint: ``create_app(services, config)`` returns a FastAPI app.

```python
services = load_services(["models/digits"])
uvicorn.run(create_app(services, CloudConfig(api_keys=("a-long-secret-key-1",))))
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from sdk.cloud.config import CloudConfig
from sdk.cloud.deps import AppState
from sdk.cloud.inference import InferenceService
from sdk.cloud.metrics import ServiceMetrics
from sdk.cloud.registry import Registry
from sdk.cloud.routes import models, ops
from sdk.cloud.routes import registry as registry_routes
from sdk.errors import FedgeError
from sdk.outcomes import code_for_status, error_code_for, http_status_for

__all__ = ["create_app"]


def create_app(
    services: Mapping[str, InferenceService],
    config: CloudConfig | None = None,
    *,
    metrics: ServiceMetrics | None = None,
    repository_dir: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """An app serving ``services`` (by model name); their owner closes them after the server stops.

    With ``repository_dir`` it also serves the signed release repository under ``/tuf``
    (``/tuf/metadata/...`` and ``/tuf/targets/...``): public, because every byte is verified
    by the device against signed metadata.
    """
    app = FastAPI(
        title="Fedge cloud inference",
        version="1",
        description=(
            "Cloud fallback for Fedge devices: the same models and the same dynamic batcher as the MQTT workers. "
            'Errors have the body `{"error": {"code", "message"}}` with the wire format\'s codes.'
        ),
    )
    metrics = metrics or ServiceMetrics()
    for service in services.values():
        service.report_to(metrics)
    app.state.fedge = AppState(services=services, config=config or CloudConfig(), metrics=metrics, registry=registry)
    app.include_router(models.router)
    app.include_router(ops.router)
    app.include_router(registry_routes.router)
    if repository_dir is not None:
        app.mount("/tuf", StaticFiles(directory=os.fspath(repository_dir)), name="tuf")

    @app.exception_handler(FedgeError)
    async def fedge_error(request: Request, exc: FedgeError) -> JSONResponse:
        status = 415 if isinstance(exc, models.UnsupportedMediaType) else http_status_for(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return _error(status, error_code_for(exc), str(exc), headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, code_for_status(exc.status_code), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "bad_request", "; ".join(str(e.get("msg")) for e in exc.errors()[:5]))

    return app


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)
