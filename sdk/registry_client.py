"""A client of the registry's HTTP API (`fedge cloud serve`), for the `fedge registry` commands and the federation.

Keys come from the caller (the CLI and the federation read ``FEDGE_ADMIN_KEY`` /
``FEDGE_API_KEY`` from the environment) and are sent only as the ``X-API-Key`` header.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

from sdk.errors import Conflict, NotFound, RegistryRefused
from sdk.manifest import MANIFEST_FILE, load_manifest

__all__ = ["RegistryClient", "call"]


def call(method: str, url: str, *, key: str | None, timeout_s: float = 300.0, **kwargs: Any) -> Any:
    """One request to the registry; its JSON answer, or NotFound (404), Conflict (409) or RegistryRefused."""
    import httpx

    headers = {**kwargs.pop("headers", {}), **({"X-API-Key": key} if key else {})}
    try:
        response = httpx.request(method, url, headers=headers, timeout=timeout_s, **kwargs)
    except httpx.HTTPError as exc:
        raise RegistryRefused(f"{url}: {exc}") from None
    if response.is_error:
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = response.text[:300]
        error = {404: NotFound, 409: Conflict}.get(response.status_code, RegistryRefused)
        raise error(f"{response.status_code}: {detail}")
    return response.json()


class RegistryClient:
    """Versions of a registry reached over HTTP at ``url`` (``http://host:8000``)."""

    def __init__(
        self, url: str, key: str | None = None, *, read_key: str | None = None, timeout_s: float = 300.0
    ) -> None:
        """Upload with ``key`` (an admin key); list with ``read_key`` (an API key), else with ``key``."""
        self.url = url.rstrip("/")
        self.key = key
        self.read_key = read_key or key
        self.timeout_s = timeout_s

    @classmethod
    def from_env(cls, url: str) -> RegistryClient:
        """A client with the keys of this environment: ``FEDGE_ADMIN_KEY`` uploads, ``FEDGE_API_KEY`` lists."""
        return cls(url, os.environ.get("FEDGE_ADMIN_KEY"), read_key=os.environ.get("FEDGE_API_KEY"))

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r})"  # never the key

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every registered version of ``model``, oldest first (none for a model the registry does not know)."""
        try:
            url = f"{self.url}/v1/registry/models/{model}/versions"
            return call("GET", url, key=self.read_key, timeout_s=self.timeout_s)
        except NotFound:
            return []

    def latest_version(self, model: str) -> int:
        """The highest version number registered for ``model`` (0 when none)."""
        return max((int(v["version"]) for v in self.versions(model)), default=0)

    def releases(self, model: str) -> list[dict[str, Any]]:
        """Every release of ``model`` (version, channel, rollout, state), newest first."""
        url = f"{self.url}/v1/registry/releases"
        return call("GET", url, key=self.read_key, timeout_s=self.timeout_s, params={"model": model})

    def fleet(self) -> list[dict[str, Any]]:
        """Every device's last report (model, target, running version, status), as the registry's fleet view has it."""
        return call("GET", f"{self.url}/v1/registry/fleet", key=self.read_key, timeout_s=self.timeout_s)

    def upload(self, model_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Register a model directory as the version its manifest names; Conflict when that number is taken."""
        directory = Path(model_dir)
        manifest = load_manifest(directory)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            # The files the manifest lists and nothing else (the registry refuses any other), the manifest first;
            # one missing is left for the registry to name.
            for name in [MANIFEST_FILE, *manifest.listed_files]:
                if (directory / name).is_file():
                    tar.add(directory / name, arcname=name)
        return call(
            "POST",
            f"{self.url}/v1/registry/models/{manifest.name}/versions",
            key=self.key,
            timeout_s=self.timeout_s,
            content=buffer.getvalue(),
            headers={"Content-Type": "application/gzip"},
        )

    def release(self, model: str, version: int, *, channel: str = "stable", staged: bool = False) -> dict[str, Any]:
        """Release ``version`` to the whole channel, or (``staged``) to the first stage of the model's policy."""
        body = {"model": model, "version": version, "channel": channel, "staged": staged}
        return call("POST", f"{self.url}/v1/registry/releases", key=self.key, timeout_s=self.timeout_s, json=body)

    def rollout_status(self, model: str) -> dict[str, Any]:
        """The model's newest staged rollout: stage, devices per version, checks, last decision and reason."""
        return call("GET", f"{self.url}/v1/registry/rollouts/{model}", key=self.read_key, timeout_s=self.timeout_s)
