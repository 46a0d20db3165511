"""Liveness, readiness and metrics: what an orchestrator and Prometheus scrape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from sdk.cloud.deps import State

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves HTTP."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: every model takes requests",
    responses={503: {"description": "A model's batcher is not running, or no model is loaded."}},
)
async def readyz(state: State) -> JSONResponse:
    """200 when every model's batcher runs, else 503 naming the ones that do not."""
    down = [name for name, service in state.services.items() if not service.ready]
    ready = bool(state.services) and not down
    body = {"status": "ready" if ready else "not ready", "models": sorted(state.services), "down": down}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "Prometheus text format 0.0.4, or OpenMetrics when the Accept header asks for it.",
        }
    },
)
def metrics(state: State, request: Request) -> Response:
    """Request counts, latency and batch-size histograms, queue depth, and with a registry the fleet's gauges."""
    # A plain def: FastAPI runs it in its thread pool, so the fleet's queries do not hold up the event loop.
    body, content_type = state.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
