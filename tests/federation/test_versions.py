"""Version numbers: the registry's next number when there is one, after the highest one here when there is not.

The registry is the real app on a real SQLite file behind uvicorn; the federation runs are Flower simulations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.versions import make_version
from federation.runner import SuperLink, run_app
from federation.settings import FederationSettings
from federation.versions import VersionStore, split_key
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.server import BackgroundServer
from sdk.cloud.signing import init_keys
from sdk.manifest import load_manifest
from sdk.registry_client import RegistryClient, call

pytestmark = pytest.mark.slow

ADMIN = "federation-admin-0123456789"
READER = "federation-reader-0123456789"
LINEAGE = {"source": "test", "metrics": {"val_accuracy": 0.9}}


@pytest.fixture
def registry(tmp_path, model_dir):
    """A registry service holding digits v1 and v2 (uploaded as `fedge registry upload` does); its client.

    Reads need an API key and uploads an admin key, as in production.
    """
    keys = init_keys(tmp_path / "keys" / "online", tmp_path / "keys" / "root")
    repo = ReleaseRepository.create(tmp_path / "repository", keys)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    config = CloudConfig(api_keys=(READER,), admin_keys=(ADMIN,))
    app = create_app({}, config, repository_dir=repo.directory, registry=registry)
    with BackgroundServer(app) as server:
        client = RegistryClient(server.url, ADMIN, read_key=READER)
        for version in (1, 2):
            client.upload(make_version(model_dir, tmp_path / "registered" / f"v{version}", version))
        yield client
    registry.close()


def registered(client: RegistryClient) -> list[int]:
    return [v["version"] for v in client.versions("digits")]


def test_without_a_registry_numbers_continue_after_the_highest_version_here(
    tmp_path, model_dir, digits_model, digits_split
):
    versions = tmp_path / "versions"
    make_version(model_dir, versions / "digits-v1", 1)
    (versions / "digits-v6").mkdir()  # a half-written version keeps its number
    store = VersionStore(versions, "digits")
    stored = store.export(digits_model, digits_split, LINEAGE)
    assert stored.version == 7
    assert stored.directory == versions / "digits-v7"
    assert load_manifest(stored.directory).version == 7
    assert stored.registry_error is None
    assert [m.version for m in store.manifests()] == [1, 7]
    assert not [p for p in versions.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_versions_take_the_registrys_next_number_and_register_cleanly(registry, tmp_path, digits_model, digits_split):
    split = split_key(0, len(digits_split.y_val))
    run_1 = VersionStore(tmp_path / "run-1", "digits", registry=registry)
    first = run_1.export(digits_model, digits_split, {**LINEAGE, "validation_split": split})
    assert (first.version, first.registry_error) == (3, None)
    assert run_1.release_accuracy(split) is None  # registered is not released
    call("POST", f"{registry.url}/v1/registry/releases", key=ADMIN, json={"model": "digits", "version": 3})
    assert run_1.release_accuracy(split) == 0.9  # the release's accuracy on this very split is the baseline
    assert run_1.release_accuracy(split_key(1, len(digits_split.y_val))) is None  # another split's is not
    # a second run, with its own empty folder, does not start again at 1
    second = VersionStore(tmp_path / "run-2", "digits", registry=registry).export(digits_model, digits_split, LINEAGE)
    assert (second.version, second.registry_error) == (4, None)
    assert registered(registry) == [1, 2, 3, 4]
    assert [v["lineage"]["source"] for v in registry.versions("digits")[2:]] == ["test", "test"]


def test_a_number_taken_while_exporting_moves_to_the_next(registry, tmp_path, digits_model, digits_split, monkeypatch):
    # Fault injection: the first look at the registry is stale, as if another run registered v1 and v2 between
    # this run's look and its upload; the real registry then refuses v1 with 409.
    real = RegistryClient.latest_version
    looks = iter([0])
    monkeypatch.setattr(RegistryClient, "latest_version", lambda self, model: next(looks, None) or real(self, model))
    stored = VersionStore(tmp_path / "run", "digits", registry=registry).export(digits_model, digits_split, LINEAGE)
    assert stored.version == 3
    assert load_manifest(stored.directory).version == 3
    assert registered(registry) == [1, 2, 3]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["digits-v3"]


def federate(link: SuperLink, versions: Path, registry: RegistryClient, **values) -> dict:
    common = {"num-clients": 2, "clients-per-round": 2, "versions-dir": str(versions), "registry-url": registry.url}
    settings = FederationSettings.from_run_config({**common, **values})
    return run_app(link.home, settings, num_supernodes=settings.num_clients, timeout_s=600)


def test_federation_runs_number_after_the_registry_and_never_keep_a_chance_level_model(admin_link, registry, tmp_path):
    learnt = federate(admin_link, tmp_path / "learnt", registry, **{"num-server-rounds": 1})
    (candidate,) = learnt["candidates"]
    assert (candidate["version"], candidate["registered"]) == (3, True)  # after the registry's v2, not the folder's v1
    assert registered(registry) == [1, 2, 3]
    assert registry.versions("digits")[2]["lineage"]["run_id"] == str(learnt["run_id"])
    assert load_manifest(tmp_path / "learnt" / "digits-v3").version == 3

    # A learning rate that leaves the random initial weights as they were: a chance-level model (0.11), and no
    # release to compare with. Seed 1's random model passes the export's int8 check, so the gate alone stands in
    # its way (before the chance floor this run kept it as a version). The gate refuses it and says why, and
    # neither the folder nor the registry gets a version.
    guessed = federate(admin_link, tmp_path / "guessed", registry, **{"num-server-rounds": 1, "lr": 1e-7, "seed": 1})
    assert guessed["candidates"] == []
    (refusal,) = guessed["refusals"]
    assert (refusal["round"], refusal["accepted"], refusal["error"]) == (1, False, "GateRefused")
    assert "chance level" in refusal["reason"]
    assert refusal["val_accuracy"] <= guessed["gate_floor"] < 0.25
    assert not list((tmp_path / "guessed").glob("digits-v*"))
    assert registered(registry) == [1, 2, 3]
