"""The registry resource: upload versions, release them, steer and recall releases, and see the fleet."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Body, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool

from sdk.cloud.deps import Admin, Authorized, RegistryDep, RolloutsDep, State
from sdk.cloud.model_archive import unpack_model
from sdk.cloud.registry import STALE_AFTER_S, Registry
from sdk.cloud.repository import MAX_REASON_CHARS
from sdk.cloud.routes.models import GUARDED, SLOW_BODY, read_body
from sdk.cloud.schemas import ErrorBody
from sdk.errors import Conflict

__all__ = ["router"]

_ANSWERS = {
    **GUARDED,
    404: {"model": ErrorBody, "description": "No such model, version or release, or this service runs no registry."},
    422: {"model": ErrorBody, "description": "A path, query or body field is invalid, or the model is unusable."},
}
_CONFLICT = {409: {"model": ErrorBody, "description": "The operation contradicts the registry's state."}}
_JSON_BODY = {400: {"model": ErrorBody, "description": "The body is not JSON."}, **SLOW_BODY}
_UPLOAD = {
    400: {
        "model": ErrorBody,
        "description": "Not a tar archive, or a member that is not a plain top-level file the manifest lists.",
    },
    413: {
        "model": ErrorBody,
        "description": "Archive over max_upload_bytes, or members declaring more than max_unpacked_bytes.",
    },
}

router = APIRouter(prefix="/v1/registry", tags=["registry"], responses=_ANSWERS)
_BINARY = {"type": "string", "format": "binary"}
# What the registry's columns hold (a 32-bit INTEGER and a VARCHAR(64) on PostgreSQL): a larger value is refused
# with 422 here instead of failing in the database.
_MAX_VERSION, _MAX_NAME = 2**31 - 1, 64
Version = Annotated[int, Field(ge=0, le=_MAX_VERSION)]
ModelName = Annotated[str, Field(min_length=1, max_length=_MAX_NAME)]
# An uploaded model's name becomes a folder of the store: a plain name, never "..".
_PLAIN_NAME = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{_MAX_NAME - 1}}}$"
# The registry checks, then inserts: two uploads at once in worker threads would race between the two.
_ONE_UPLOAD_AT_A_TIME = threading.Lock()


class ReleaseRequest(BaseModel):
    """Release a registered version to a channel and a share of the fleet."""

    model: ModelName
    version: Version
    channel: str = Field("stable", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    rollout: int = Field(100, ge=0, le=100, description="Percent of devices (by a stable hash of their id).")
    staged: bool = Field(
        False, description="Start at the first stage of the model's release policy (rollout is then ignored)."
    )


Reason = Annotated[str, Field(max_length=MAX_REASON_CHARS, description="Why, kept in the signed recall.")]


class ReleaseChange(BaseModel):
    """Pause, resume or abort a release (an abort recalls it, with an optional reason), or change its rollout."""

    state: Literal["active", "paused", "aborted"] | None = None
    rollout: int | None = Field(None, ge=0, le=100)
    reason: Reason | None = None

    @model_validator(mode="after")
    def _reason_goes_with_an_abort(self) -> ReleaseChange:
        if self.reason is not None and self.state != "aborted":
            raise ValueError('a reason goes with state "aborted" only')
        return self


class RecallRequest(BaseModel):
    """Recall (abort) a release: its devices go back to the newest earlier release of its channel not aborted."""

    reason: Reason


@router.post(
    "/models/{name}/versions",
    dependencies=[Admin],
    status_code=201,
    summary="Upload a model directory (a tar or tar.gz of its files) as a new version",
    responses={**_UPLOAD, **_CONFLICT, **SLOW_BODY},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_version(
    name: Annotated[str, PathParam(min_length=1, max_length=_MAX_NAME, pattern=_PLAIN_NAME)],
    request: Request,
    registry: RegistryDep,
    state: State,
) -> dict[str, Any]:
    """Verify every file against the manifest and register the version (admin key)."""
    body = await read_body(request, state.config.max_upload_bytes)
    # Unpacking, hashing and copying block: in a worker thread, /tuf and predictions go on answering meanwhile.
    return await anyio.to_thread.run_sync(_register, registry, name, body, state.config.max_unpacked_bytes)


def _register(registry: Registry, name: str, archive: bytes, max_unpacked_bytes: int) -> dict[str, Any]:
    """Unpack an upload into a staging folder of the store and register it; nothing stays if it is refused."""
    with _ONE_UPLOAD_AT_A_TIME:
        registry.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".upload-", dir=registry.store_dir) as staging:
            manifest = unpack_model(archive, Path(staging), max_unpacked_bytes=max_unpacked_bytes)
            if manifest.name != name:
                raise Conflict(f"the archive holds a manifest for another model than {name!r}")
            return registry.add_version(staging)


@router.get("/models/{name}/versions", dependencies=[Authorized], summary="List a model's versions")
async def list_versions(name: str, registry: RegistryDep) -> list[dict[str, Any]]:
    """Versions with lineage, metrics and artifacts per target."""
    return registry.versions(name)


@router.post(
    "/releases",
    dependencies=[Admin],
    status_code=201,
    summary="Release a version",
    responses={**_CONFLICT, **_JSON_BODY},
)
async def create_release(
    request: Annotated[ReleaseRequest, Body()], registry: RegistryDep, rollouts: RolloutsDep
) -> dict[str, Any]:
    """Sign the version into the TUF repository and send the retained MQTT notice (admin key)."""
    # Off the event loop: signing and making the patches take seconds for a large model.
    if request.staged:
        return await run_in_threadpool(rollouts.start, request.model, request.version, channel=request.channel)
    return await run_in_threadpool(
        registry.release, request.model, request.version, channel=request.channel, rollout=request.rollout
    )


@router.patch(
    "/releases/{model}/{version}",
    dependencies=[Admin],
    summary="Pause, resume, abort or widen",
    responses={**_CONFLICT, **_JSON_BODY},
)
async def change_release(
    model: Annotated[str, PathParam(min_length=1, max_length=_MAX_NAME)],
    version: Annotated[int, PathParam(ge=0, le=_MAX_VERSION)],
    change: Annotated[ReleaseChange, Body()],
    registry: RegistryDep,
) -> dict[str, Any]:
    """Change the signed release state or rollout (admin key); aborting recalls, as the recall route does."""
    return await run_in_threadpool(
        registry.update_release, model, version, state=change.state, rollout=change.rollout, reason=change.reason
    )


@router.post(
    "/releases/{model}/{version}/recall",
    dependencies=[Admin],
    summary="Recall a release: its devices go back to the previous good release",
    responses={**_CONFLICT, **_JSON_BODY},
)
async def recall_release(
    model: Annotated[str, PathParam(min_length=1, max_length=_MAX_NAME)],
    version: Annotated[int, PathParam(ge=0, le=_MAX_VERSION)],
    request: Annotated[RecallRequest, Body()],
    registry: RegistryDep,
) -> dict[str, Any]:
    """Abort the release and sign where its devices go back to, with the reason (admin key); 409 if aborted already."""
    return await run_in_threadpool(registry.recall, model, version, reason=request.reason)


@router.get("/releases", dependencies=[Authorized], summary="List releases")
async def list_releases(registry: RegistryDep, model: str | None = None) -> list[dict[str, Any]]:
    """Every release, newest first."""
    return registry.releases(model)


@router.get("/fleet", dependencies=[Authorized], summary="Every device's last report")
async def fleet(
    registry: RegistryDep,
    stale_after_s: Annotated[float, Query(gt=0, description="Silent this long (and not offline): stale.")] = (
        STALE_AFTER_S
    ),
) -> list[dict[str, Any]]:
    """Device id, model, target (artifact kind), running version, status, stale, last step and refusal, last seen."""
    return registry.fleet(stale_after_s=stale_after_s)


@router.get("/telemetry", dependencies=[Authorized], summary="What the fleet served, per version")
async def telemetry(
    registry: RegistryDep,
    model: Annotated[str | None, Query(min_length=1, max_length=_MAX_NAME)] = None,
    per_device: Annotated[bool, Query(description="One entry per device and version.")] = False,
) -> list[dict[str, Any]]:
    """Per model and version: devices, calls, error and fallback rates, mean confidence, p50/p99 latency (ms)."""
    return registry.telemetry(model, per_device=per_device)


@router.get("/rollouts/{model}", dependencies=[Authorized], summary="A model's staged rollout")
async def rollout_status(
    model: Annotated[str, PathParam(min_length=1, max_length=_MAX_NAME)], rollouts: RolloutsDep
) -> dict[str, Any]:
    """The newest rollout: release, stage and percent, devices per version, live checks, last decision, history."""
    return await run_in_threadpool(rollouts.status, model)
