"""A signed release repository served by the real cloud app, and model versions made by our pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.versions import make_version
from sdk.cloud.app import create_app
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.server import BackgroundServer
from sdk.cloud.signing import init_keys
from sdk.edge.install import ModelStore
from sdk.edge.updater import ModelUpdater, UpdateConfig


@pytest.fixture
def keys(tmp_path):
    return init_keys(tmp_path / "keys" / "online", tmp_path / "keys" / "offline-root")


@pytest.fixture
def repo(tmp_path, keys):
    return ReleaseRepository.create(tmp_path / "repository", keys)


@pytest.fixture
def server(repo):
    with BackgroundServer(create_app({}, repository_dir=repo.directory)) as running:
        yield running


@pytest.fixture
def versions(tmp_path, model_dir):
    """``versions(2)`` -> a model directory of version 2."""
    made: dict[int, Path] = {}

    def make(version: int) -> Path:
        if version not in made:
            made[version] = make_version(model_dir, tmp_path / "builds" / f"v{version}", version)
        return made[version]

    return make


@pytest.fixture
def device(tmp_path, repo, server):
    """``device("pi-1")`` -> an updater for a fresh device with its own store, provisioned with root v1."""
    events: list[dict] = []

    def make(device_id: str = "pi-1", *, update: dict | None = None, **kwargs) -> ModelUpdater:
        """``update`` overrides fields of the ``[update]`` config; the rest goes to ``ModelUpdater``."""
        store = ModelStore(tmp_path / "devices" / device_id)
        fields = {"repository_url": f"{server.url}/tuf", "health_window_s": 0.2, **(update or {})}
        config = UpdateConfig(model="digits", device_id=device_id, **fields)
        updater = ModelUpdater(store, config, repo.root_bytes(1), reporter=events.append, **kwargs)
        updater.events = events
        return updater

    return make
