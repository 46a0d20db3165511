"""The release pipeline: the policy's decisions, then `release = true` runs against a real registry and fleet.

The registry is the real app on a real SQLite file and a signed repository behind uvicorn; the fleet
view is fed by a real device's status over a real Mosquitto; the federation runs are Flower simulations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from waiting import poll

from federation.release_pipeline import ReleasePolicy, release_accuracies
from federation.settings import FederationSettings
from sdk.errors import ConfigError, ReleaseRefused
from sdk.manifest import ARTIFACT_KINDS

ADMIN = "release-admin-0123456789"
READER = "release-reader-0123456789"
SPLIT = {"seed": 0, "samples": 270}
#: What every released version's lineage must say.
LINEAGE_KEYS = (
    "parent_version",
    "run_id",
    "round",
    "strategy",
    "privacy",
    "epsilon",
    "delta",
    "clients",
    "metrics",
    "calibration",
    "validation_split",
)


# -- the decision, without I/O -------------------------------------------------------------------


def test_the_kinds_are_the_configured_ones_and_every_one_the_fleet_runs_in_a_stable_order():
    policy = ReleasePolicy(targets=("onnx-int8",))
    assert policy.kinds([]) == ("onnx-int8",)
    assert policy.kinds(["tflite", "onnx-int8", "tflite"]) == ("onnx-int8", "tflite")
    assert policy.kinds(["onnx-fp16", "tflite", "onnx-fp32"]) == ("onnx-fp32", "onnx-int8", "tflite", "onnx-fp16")


def test_a_candidate_with_every_kind_within_the_allowed_drop_is_accepted():
    policy = ReleasePolicy(targets=("onnx-int8", "tflite"), max_drop=0.02)
    candidate = {"onnx-fp32": 0.95, "onnx-int8": 0.94, "tflite": 0.93}
    decision = policy.decide(["tflite"], candidate, {"onnx-int8": 0.95, "tflite": 0.95})
    assert decision.accepted, decision.reason
    assert decision.kinds == ("onnx-int8", "tflite")
    checked = [(c.kind, c.accepted) for c in decision.checks]
    assert checked == [("onnx-int8", True), ("tflite", True), ("onnx-fp32", True)]
    assert "no release measured" in decision.checks[2].reason  # the release named no fp32 accuracy
    decision.raise_if_refused()
    assert decision.as_record()["reason"] == "accepted"


@pytest.mark.parametrize(
    ("fleet", "candidate", "release", "refused", "words"),
    [
        pytest.param(["tflite"], {"onnx-int8": 0.9}, {}, ["tflite"], "the fleet runs it", id="fleet-kind-missing"),
        pytest.param([], {"tflite": 0.9}, {}, ["onnx-int8"], "release-targets names it", id="configured-kind-missing"),
        pytest.param(
            [], {"onnx-int8": 0.90, "tflite": 0.95}, {"onnx-int8": 0.95}, ["onnx-int8"], "below", id="int8-below"
        ),
        pytest.param(
            [],
            {"onnx-int8": 0.95, "tflite": 0.95, "onnx-fp32": 0.80},
            {"onnx-fp32": 0.96},
            ["onnx-fp32"],
            "below the release's 0.9600",
            id="an-extra-kind-below-counts-too",
        ),
    ],
)
def test_a_candidate_missing_a_kind_or_below_the_release_is_refused_with_its_reason(
    fleet, candidate, release, refused, words
):
    policy = ReleasePolicy(targets=("onnx-int8", "tflite"), max_drop=0.02)
    decision = policy.decide(fleet, candidate, release)
    assert not decision.accepted
    assert [c.kind for c in decision.checks if not c.accepted] == refused
    assert words in decision.reason
    with pytest.raises(ReleaseRefused, match=refused[0]):
        decision.raise_if_refused()


def test_the_allowed_drop_is_inclusive():
    policy = ReleasePolicy(targets=("onnx-int8",), max_drop=0.05)
    assert policy.decide([], {"onnx-int8": 0.90}, {"onnx-int8": 0.95}).accepted
    assert not policy.decide([], {"onnx-int8": 0.8999}, {"onnx-int8": 0.95}).accepted


def test_release_accuracies_count_only_the_same_split_and_fall_back_to_the_models():
    lineage = {"validation_split": SPLIT, "metrics": {"val_accuracy": 0.9, "artifact_accuracy": {"tflite": 0.85}}}
    assert release_accuracies(lineage, SPLIT) == {"onnx-fp32": 0.9, "onnx-int8": 0.9, "tflite": 0.85}
    assert release_accuracies(lineage, {**SPLIT, "seed": 1}) == {}
    assert release_accuracies(None, SPLIT) == {}
    assert release_accuracies({"validation_split": SPLIT, "metrics": {}}, SPLIT) == {}


@pytest.mark.parametrize(
    ("values", "key"),
    [
        pytest.param({"release": True}, "run-config.release", id="release-without-registry"),
        pytest.param({"release-targets": "onnx-int8,tflite-int4"}, "run-config.release-targets", id="unknown-kind"),
        pytest.param({"release-targets": " , "}, "run-config.release-targets", id="no-kind"),
    ],
)
def test_release_settings_are_checked_before_any_node_is_contacted(values, key):
    with pytest.raises(ConfigError) as info:
        FederationSettings.from_run_config(values)
    assert info.value.key == key


def test_release_settings_parse_from_flowers_strings():
    settings = FederationSettings.from_run_config(
        {"release": "true", "versions-dir": "/tmp/v", "registry-url": "http://r:8000", "release-targets": "tflite"}
    )
    assert (settings.release, settings.release_kinds) == (True, ("tflite",))
    assert FederationSettings().release_kinds == ARTIFACT_KINDS  # both shipped examples' artifact kinds


def test_the_cli_refuses_release_without_a_registry_before_starting_flower():
    proc = subprocess.run(
        [sys.executable, "-m", "sdk.cli", "federate", "--release"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "--registry-url" in proc.stderr + proc.stdout


def test_the_cli_report_shows_each_kind_against_the_release_and_the_verdict():
    from sdk.cli.console import console
    from sdk.cli.federate import print_releases

    policy = ReleasePolicy(targets=("onnx-int8", "tflite"))
    refused = policy.decide(["tflite"], {"onnx-int8": 0.91}, {"onnx-int8": 0.93}).as_record()
    with console.capture() as captured:
        print_releases([{"version": 4, "parent_version": 3, "released": False, **refused}])
    text = " ".join(captured.get().replace("│", " ").split())  # cells, and lines the console wrapped at its width
    assert "v4 v3 onnx-int8 0.9100 0.9300 refused" in text
    assert "tflite - - refused" in text
    assert "v4 not released: onnx-int8: accuracy 0.9100 is below the release's 0.9300" in text
    assert "tflite: no artifact of this kind, and the fleet runs it" in text


# -- for real: a registry, a fleet, Flower ---------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, model_dir, module_broker):
    """A registry service with digits v1 released, whose fleet view hears devices over MQTT; its client."""
    from bench.versions import make_version
    from sdk.cloud.app import create_app
    from sdk.cloud.config import CloudConfig
    from sdk.cloud.registry import Registry
    from sdk.cloud.releases import ReleaseService
    from sdk.cloud.repository import ReleaseRepository
    from sdk.cloud.server import BackgroundServer
    from sdk.cloud.signing import init_keys
    from sdk.mqtt import MqttSettings
    from sdk.registry_client import RegistryClient

    root = tmp_path_factory.mktemp("release-cloud")
    repo = ReleaseRepository.create(root / "repository", init_keys(root / "keys" / "online", root / "keys" / "root"))
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "store", repo)
    settings = MqttSettings.from_address(module_broker.address)
    config = CloudConfig(api_keys=(READER,), admin_keys=(ADMIN,))
    app = create_app({}, config, repository_dir=repo.directory, registry=registry)
    with ReleaseService(registry, settings), BackgroundServer(app) as server:
        client = RegistryClient(server.url, ADMIN, read_key=READER)
        client.upload(make_version(model_dir, root / "v1", 1))
        client.release("digits", 1)
        yield SimpleNamespace(client=client, repo=repo, mqtt=settings, url=server.url)
    registry.close()


def federate(link, cloud, versions: Path, **values) -> dict:
    from federation.runner import run_app

    common = {"num-clients": 2, "clients-per-round": 2, "num-server-rounds": 1, "release": True}
    common |= {"versions-dir": str(versions), "registry-url": cloud.url}
    settings = FederationSettings.from_run_config({**common, **values})
    return run_app(link.home, settings, num_supernodes=settings.num_clients, timeout_s=600)


@pytest.fixture(scope="module")
def first_release(admin_link, cloud, tmp_path_factory):
    """A federation run with ``release = true`` and nothing else: its report."""
    return federate(admin_link, cloud, tmp_path_factory.mktemp("first-release"))


def repo_index(repo) -> list[dict]:
    """The release index the newest signed targets metadata points at."""
    from tuf.api.metadata import Metadata

    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    digest = Metadata.from_file(str(newest)).signed.targets["digits/index.json"].hashes["sha256"]
    return json.loads((repo.targets_dir / "digits" / f"{digest}.index.json").read_text())["releases"]


def lineage_of(client, version: int) -> dict:
    return next(v for v in client.versions("digits") if v["version"] == version)["lineage"]


@pytest.mark.slow
def test_release_alone_gives_a_signed_release_of_every_kind_with_its_whole_lineage(first_release, cloud):
    from sdk.manifest import load_manifest

    report = first_release
    (candidate,) = report["candidates"]
    outcome = candidate["release"]
    assert outcome["released"], outcome
    assert report["refusals"] == []
    assert (candidate["version"], outcome["parent_version"]) == (2, 1)
    assert [r["version"] for r in cloud.client.releases("digits")] == [2, 1]
    rollout = cloud.client.rollout_status("digits")
    assert (rollout["version"], rollout["baseline"], rollout["stage"]) == (2, 1, 0)  # staged: at its first stage

    (signed,) = [r for r in repo_index(cloud.repo) if r["version"] == 2]
    assert signed["targets"] == sorted(ARTIFACT_KINDS)  # int8 LiteRT included, with no flag for it
    assert signed["state"] == "active"
    manifest = load_manifest(candidate["directory"])
    assert (manifest.artifacts["tflite"].precision, manifest.artifacts["onnx-int8"].precision) == ("int8", "int8")

    lineage = lineage_of(cloud.client, 2)
    assert [k for k in LINEAGE_KEYS if k not in lineage] == []
    assert (lineage["parent_version"], lineage["run_id"], lineage["round"]) == (1, str(report["run_id"]), 1)
    assert (lineage["strategy"], lineage["privacy"], lineage["clients"]) == ("fedavg", "none", 2)
    assert (lineage["epsilon"], lineage["delta"]) == (None, None)  # no DP in this run: none spent, and it says so
    assert set(lineage["metrics"]["artifact_accuracy"]) == set(ARTIFACT_KINDS)
    assert lineage["calibration"]["samples"] > 0
    assert lineage["release"]["accepted"] is True


@pytest.mark.slow
def test_a_candidate_whose_artifacts_fall_below_the_release_is_refused_and_nothing_is_released(
    first_release, admin_link, cloud, tmp_path
):
    # The same training passes the gate (within max-accuracy-drop of the release), but pruning 95 % of its weights
    # with no fine-tuning (and the export's own check switched off) ruins its artifacts.
    released = cloud.client.releases("digits")
    export = tmp_path / "export.toml"
    export.write_text("[export]\nsparsity = 0.95\nfinetune_epochs = 0\nmax_accuracy_drop_pt = 100.0\n")
    report = federate(
        admin_link,
        cloud,
        tmp_path / "versions",
        **{"export-config": str(export), "max-accuracy-drop": 0.05, "release-targets": "onnx-fp32,onnx-int8"},
    )
    (refusal,) = report["refusals"]
    assert refusal["error"] == "ReleaseRefused", refusal
    assert "below the release's" in refusal["reason"]
    (candidate,) = report["candidates"]
    outcome = candidate["release"]
    assert (outcome["released"], outcome["parent_version"]) == (False, first_release["candidates"][0]["version"])
    below = [c for c in outcome["checks"] if not c["accepted"]]
    assert below
    assert all(c["accuracy"] < c["release_accuracy"] - 0.05 for c in below)
    assert cloud.client.releases("digits") == released  # registered, never released
    assert lineage_of(cloud.client, candidate["version"])["release"]["reason"] == outcome["reason"]


@pytest.mark.slow
def test_a_release_missing_a_kind_the_fleet_runs_is_refused(cloud, tmp_path, digits_model, digits_split, monkeypatch):
    import federation.release_pipeline as release_pipeline
    from federation.release_pipeline import ReleasePipeline
    from federation.versions import VersionStore, split_key
    from sdk.edge.install import ModelStore
    from sdk.edge.status import DeviceLink
    from sdk.edge.updater import ModelUpdater, UpdateConfig

    # A device running LiteRT reports its status, as every device does, over MQTT.
    config = UpdateConfig(model="digits", device_id="pi-lite", repository_url=f"{cloud.url}/tuf", target="tflite")
    with DeviceLink(cloud.mqtt, "pi-lite", "digits") as link:
        updater = ModelUpdater(ModelStore(tmp_path / "pi-lite"), config, cloud.repo.root_bytes(1), reporter=link.report)
        updater.check()

        def fleet_runs_tflite():
            return any(d["device_id"] == "pi-lite" and d["target"] == "tflite" for d in cloud.client.fleet())

        poll(fleet_runs_tflite, "the fleet view shows the device's target")

    # Fault injection: this server cannot convert to LiteRT (litert-torch is installed here, as it may not be).
    monkeypatch.setattr(release_pipeline, "tflite_available", lambda: False)
    released = cloud.client.releases("digits")
    store = VersionStore(tmp_path / "versions", "digits", registry=cloud.client)
    pipeline = ReleasePipeline(store, digits_split, policy=ReleasePolicy(targets=("onnx-fp32", "onnx-int8")))
    lineage = {"source": "test", "validation_split": split_key(0, len(digits_split.y_val)), "metrics": {}}
    outcome = pipeline.release(digits_model, lineage)

    assert not outcome.released
    assert outcome.decision.kinds == ("onnx-fp32", "onnx-int8", "tflite")
    assert [c.kind for c in outcome.decision.checks if not c.accepted] == ["tflite"]
    with pytest.raises(ReleaseRefused, match="tflite: no artifact of this kind, and the fleet runs it"):
        outcome.raise_if_refused()
    assert cloud.client.releases("digits") == released
    lineage = lineage_of(cloud.client, outcome.version)
    assert (lineage["release"]["accepted"], lineage["fleet_targets"]) == (False, ["tflite"])


@pytest.mark.slow
def test_a_release_calibrates_every_artifacts_threshold_against_the_cloud(
    cloud, tmp_path, digits_model, digits_split, cloud_model_dir
):
    from federation.release_pipeline import ReleasePipeline
    from federation.settings import FederationSettings
    from federation.versions import VersionStore, split_key
    from sdk.manifest import ModelRef, load_manifest

    store = VersionStore(tmp_path / "versions", "digits", registry=cloud.client)
    settings = FederationSettings(
        release_targets="onnx-int8", threshold_target=0.9, threshold_cloud_model_dir=str(cloud_model_dir)
    )
    pipeline = ReleasePipeline.from_settings(settings, store, digits_split)
    lineage = {"source": "test", "validation_split": split_key(0, len(digits_split.y_val)), "metrics": {}}
    outcome = pipeline.release(digits_model, lineage)

    manifest = load_manifest(outcome.stored.directory)
    cloud_manifest = load_manifest(cloud_model_dir)
    assert manifest.cloud_model == ModelRef(cloud_manifest.name, cloud_manifest.version)
    recorded = lineage_of(cloud.client, outcome.version)["thresholds"]
    assert recorded["cloud_model"] == {"name": cloud_manifest.name, "version": cloud_manifest.version}
    assert set(recorded["artifacts"]) == set(manifest.artifacts)
    for kind, chosen in recorded["artifacts"].items():
        assert chosen["reached"]
        assert chosen["accuracy_lower"] >= 0.9
        assert manifest.artifacts[kind].confidence_threshold == chosen["threshold"]
        assert 0.0 < chosen["threshold"] < 1.0
