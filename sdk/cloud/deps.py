"""FastAPI dependencies: the service state, the model a route names, and API-key authentication.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency
in its thread pool, a thread hop per dependency per request on the hot path.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from sdk.cloud.config import CloudConfig
from sdk.cloud.inference import InferenceService
from sdk.cloud.metrics import ServiceMetrics
from sdk.cloud.registry import Registry
from sdk.cloud.rollout_store import RolloutStore
from sdk.errors import NotFound, Unauthorized, UnknownModel

__all__ = [
    "API_KEY_HEADER",
    "Admin",
    "AppState",
    "Authorized",
    "RegistryDep",
    "RolloutsDep",
    "ServiceFor",
    "State",
    "api_key_accepted",
    "get_state",
    "service_for",
]

#: The header that carries the API key, on every route that wants one.
API_KEY_HEADER = "X-API-Key"

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="One of the configured API keys.")


@dataclass(frozen=True)
class AppState:
    """What every request handler may use."""

    services: Mapping[str, InferenceService]
    config: CloudConfig
    metrics: ServiceMetrics
    registry: Registry | None = None
    rollouts: RolloutStore | None = None


async def get_state(request: Request) -> AppState:
    """The state :func:`sdk.cloud.app.create_app` attached to the app."""
    return request.app.state.fedge


State = Annotated[AppState, Depends(get_state)]


def api_key_accepted(config: CloudConfig, key: str | None) -> bool:
    """Whether ``key`` opens the routes guarded by ``api_keys`` (any key does when none is configured)."""
    keys = config.api_keys
    # compare_digest against every key: the time taken does not say which key nearly matched
    return not keys or any(hmac.compare_digest((key or "").encode(), k.encode()) for k in keys)


async def require_api_key(state: State, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Let the request through when no keys are configured or it carries one of them."""
    if not api_key_accepted(state.config, key):
        raise Unauthorized("missing or invalid X-API-Key header")


Authorized = Depends(require_api_key)


async def require_admin_key(state: State, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Let the request through only with one of the admin keys (no admin keys: nobody)."""
    keys = state.config.admin_keys
    if not keys or not any(hmac.compare_digest((key or "").encode(), k.encode()) for k in keys):
        raise Unauthorized("this route needs an admin X-API-Key")


Admin = Depends(require_admin_key)


async def get_registry(state: State) -> Registry:
    """The registry, when this service runs one."""
    if state.registry is None:
        raise NotFound("this service runs no registry")
    return state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


async def get_rollouts(state: State) -> RolloutStore:
    """The staged rollouts of the registry, when this service runs one."""
    if state.rollouts is None:
        raise NotFound("this service runs no registry")
    return state.rollouts


RolloutsDep = Annotated[RolloutStore, Depends(get_rollouts)]


async def service_for(name: str, state: State) -> InferenceService:
    """The service of the model named in the path."""
    service = state.services.get(name)
    if service is None:
        raise UnknownModel(f"no model named {name!r} is served here (see GET /v1/models)")
    return service


ServiceFor = Annotated[InferenceService, Depends(service_for)]
