"""The registry resource: upload versions, release them, steer releases, and see the fleet."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sdk.cloud.deps import Admin, Authorized, RegistryDep
from sdk.cloud.registry import STALE_AFTER_S
from sdk.cloud.routes.models import GUARDED, SLOW_BODY, read_body
from sdk.cloud.schemas import ErrorBody
from sdk.errors import Conflict, WireFormatError
from sdk.manifest import load_manifest

__all__ = ["router"]

_ANSWERS = {
    **GUARDED,
    404: {"model": ErrorBody, "description": "No such model, version or release, or this service runs no registry."},
    422: {"model": ErrorBody, "description": "A path, query or body field is invalid, or the model is unusable."},
}
_CONFLICT = {409: {"model": ErrorBody, "description": "The operation contradicts the registry's state."}}
_JSON_BODY = {400: {"model": ErrorBody, "description": "The body is not JSON."}, **SLOW_BODY}
_UPLOAD = {
    400: {"model": ErrorBody, "description": "Not a tar archive, or a member that is not a plain top-level file."},
    413: {"model": ErrorBody, "description": "Archive over 512 MiB."},
}

router = APIRouter(prefix="/v1/registry", tags=["registry"], responses=_ANSWERS)
_BINARY = {"type": "string", "format": "binary"}
# What the registry's columns hold (a 32-bit INTEGER and a VARCHAR(64) on PostgreSQL): a larger value is refused
# with 422 here instead of failing in the database.
_MAX_VERSION, _MAX_NAME = 2**31 - 1, 64
Version = Annotated[int, Field(ge=0, le=_MAX_VERSION)]
ModelName = Annotated[str, Field(min_length=1, max_length=_MAX_NAME)]


class ReleaseRequest(BaseModel):
    """Release a registered version to a channel and a share of the fleet."""

    model: ModelName
    version: Version
    channel: str = Field("stable", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    rollout: int = Field(100, ge=0, le=100, description="Percent of devices (by a stable hash of their id).")


class ReleaseChange(BaseModel):
    """Pause, resume or abort a release, or change its rollout."""

    state: Literal["active", "paused", "aborted"] | None = None
    rollout: int | None = Field(None, ge=0, le=100)


def _extract(archive: bytes, into: Path) -> Path:
    """Unpack a model directory archive, refusing anything but plain files at its top level."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                if not member.isfile() or "/" in name or name.startswith(".") or not name:
                    raise WireFormatError(f"archive member {member.name!r}: only plain top-level files are allowed")
                data = tar.extractfile(member)
                assert data is not None
                (into / name).write_bytes(data.read())
    except tarfile.TarError as exc:
        raise WireFormatError(f"not a tar archive: {exc}") from None
    return into


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
async def upload_version(name: str, request: Request, registry: RegistryDep) -> dict[str, Any]:
    """Verify every file against the manifest and register the version (admin key)."""
    body = await read_body(request, 512 * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="fedge-upload-") as tmp:
        directory = _extract(body, Path(tmp))
        if load_manifest(directory).name != name:
            raise Conflict(f"the archive holds a manifest for another model than {name!r}")
        return registry.add_version(directory)


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
async def create_release(request: Annotated[ReleaseRequest, Body()], registry: RegistryDep) -> dict[str, Any]:
    """Sign the version into the TUF repository and send the retained MQTT notice (admin key)."""
    # Off the event loop: signing and making the patches take seconds for a large model.
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
    """Change the signed release state or rollout (admin key)."""
    return registry.update_release(model, version, state=change.state, rollout=change.rollout)


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
    """Device id, model, running version, status (online/offline), stale, last step, last refusal, last seen (UTC)."""
    return registry.fleet(stale_after_s=stale_after_s)
