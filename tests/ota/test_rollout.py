"""Staged rollouts end to end: a real broker, the release service, the rollout driver, uvicorn, SQLite.

Devices are simulated by publishing real status messages on their own status topics, their
telemetry windows made by the device's own :class:`~sdk.edge.telemetry.Telemetry`; each
takes the new version when the release's percent admits it (:func:`sdk.edge.rollout.in_rollout`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from fleet_reports import Fleet
from typer.testing import CliRunner
from waiting import poll

from bench.versions import make_version
from sdk.cli import app
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.rollout_policy import RolloutPolicies, RolloutPolicy
from sdk.cloud.rollout_store import RolloutStore
from sdk.cloud.rollouts import RolloutDriver
from sdk.cloud.server import BackgroundServer
from sdk.edge.rollout import bucket
from sdk.edge.telemetry import Telemetry
from sdk.errors import Conflict
from sdk.manifest import load_manifest
from sdk.mosquitto import free_port
from sdk.mqtt import MqttSettings
from sdk.registry_client import RegistryClient

ADMIN = "rollout-admin-0123456789abcdef"
READER = "rollout-reader-0123456789abcdef"
STAGES = (10, 50, 100)


def device_ids() -> list[str]:
    """Two devices in each stage of STAGES for ``digits``, by their stable bucket."""
    picked: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in range(1000):
        device_id = f"pi-{i}"
        stage = next(s for s, percent in enumerate(STAGES) if bucket(device_id, "digits") < percent)
        if len(picked[stage]) < 2:
            picked[stage].append(device_id)
        if all(len(ids) == 2 for ids in picked.values()):
            return [*picked[0], *picked[1], *picked[2]]
    raise AssertionError("no two devices per stage among 1000 ids")


@pytest.fixture
def cloud(tmp_path, repo, broker, versions):
    """``cloud(policy)``: digits v1 released everywhere and v2 registered, the release service, the driver, the API."""
    running = []

    def start(policy: RolloutPolicy, *, tick_s: float = 0.1) -> SimpleNamespace:
        settings = MqttSettings.from_address(broker.address)
        registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
        for version in (1, 2):
            registry.add_version(versions(version))
        registry.release("digits", 1)
        store = RolloutStore(registry, RolloutPolicies(default=policy))
        service = ReleaseService(registry, settings).start()
        driver = RolloutDriver(store, tick_s=tick_s).start()
        config = CloudConfig(admin_keys=(ADMIN,), api_keys=(READER,))
        server = BackgroundServer(create_app({}, config, registry=registry, rollouts=store)).start()
        running.extend([server, driver, service, registry])
        ids = device_ids()
        fleet = Fleet(settings, ids)
        for device_id in ids:
            fleet.serve(device_id, 1)
        poll(lambda: _devices_on(registry, 1) == len(ids), "every device's baseline on v1")
        client = RegistryClient(server.url, ADMIN, read_key=READER)
        return SimpleNamespace(registry=registry, store=store, driver=driver, server=server, fleet=fleet, client=client)

    yield start
    for part in running:
        getattr(part, "stop", getattr(part, "close", None))()


def _devices_on(registry: Registry, version: int) -> int:
    return next((e["devices"] for e in registry.telemetry("digits") if e["version"] == version), 0)


def _status_cli(url: str, *extra: str):
    result = CliRunner().invoke(
        app,
        ["registry", "rollout", "status", "digits", "--url", url, *extra],
        env={"FEDGE_API_KEY": READER, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_healthy_devices_carry_a_staged_release_through_every_stage(cloud):
    policy = RolloutPolicy(stages=STAGES, soak_s=0.5, min_devices=(2, 4, 6), min_calls=20)
    c = cloud(policy)

    started = c.client.release("digits", 2, staged=True)

    assert (started["rollout"], started["staged"], started["baseline"]) == (10, True, 1)

    def complete():
        c.fleet.follow(c.registry, 2)
        return c.client.rollout_status("digits")["state"] == "complete"

    poll(complete, "the rollout complete")
    status = c.client.rollout_status("digits")
    news = [(h["action"], h["percent"]) for h in status["history"] if h["action"] != "hold"]
    assert news == [("start", 10), ("advance", 50), ("advance", 100), ("complete", 100)]
    # Each stage ended on its own devices: 2, then 4, then all 6 judged.
    ended = [h["reason"] for h in status["history"] if h["action"] in ("advance", "complete")]
    assert [reason.split(" device(s)")[0].rsplit(" ", 1)[-1] for reason in ended] == ["2", "4", "6"]
    assert status["devices"] == {"2": 6}
    assert (status["release"]["rollout"], status["release"]["state"]) == (100, "active")
    assert [c["threshold"] for c in status["checks"] if c["breached"]] == []
    confidence = next(c for c in status["checks"] if c["threshold"] == "max_confidence_drop")
    assert (confidence["devices"], confidence["measured"]) == (6, pytest.approx(0.0, abs=1e-9))
    assert c.driver.failures == 0
    shown = _status_cli(c.server.url)
    assert "digits v2 (after v1): complete, stage 3 of 3" in shown
    assert "last decision: complete: complete at 100 %" in shown


@pytest.mark.parametrize(
    ("served", "reason"),
    [
        pytest.param({"errors": 15}, "max_error_rate: 0.5 > 0.02 on 2 device(s)", id="error-rate"),
        pytest.param({"confidence": 0.5}, "max_confidence_drop: 0.4 > 0.05 on 2 device(s)", id="confidence-drop"),
    ],
)
def test_bad_telemetry_on_the_first_stage_aborts_with_the_reason_recorded_and_shown(cloud, served, reason):
    policy = RolloutPolicy(stages=STAGES, soak_s=3600, min_devices=2, min_calls=20)  # aborting does not wait to soak
    c = cloud(policy)
    c.client.release("digits", 2, staged=True)

    def aborted():
        c.fleet.follow(c.registry, 2, **served)
        return c.client.rollout_status("digits")["state"] == "aborted"

    poll(aborted, "the rollout aborted")
    status = c.client.rollout_status("digits")
    assert status["reason"] == reason
    assert (status["last_decision"]["action"], status["last_decision"]["reason"]) == ("abort", reason)
    assert [(h["action"], h["percent"]) for h in status["history"] if h["action"] != "hold"] == [
        ("start", 10),
        ("abort", 10),
    ]
    assert status["release"] == {**status["release"], "rollout": 10, "state": "aborted"}
    assert status["release"]["recall"] == {"to": 1, "reason": reason}  # the abort is a signed recall to v1
    assert sorted(d for d, v in c.fleet.running.items() if v == 2) == device_ids()[:2]  # only the first stage took it
    table = _status_cli(c.server.url)
    assert reason in " ".join(table.split())
    assert "BREACHED" in table
    assert json.loads(_status_cli(c.server.url, "--json"))["reason"] == reason


def test_a_stage_holds_while_its_devices_have_not_soaked(cloud):
    c = cloud(RolloutPolicy(stages=STAGES, soak_s=3600, min_devices=2, min_calls=20))
    c.client.release("digits", 2, staged=True)
    ticks = c.driver.ticks
    poll(lambda: c.driver.ticks >= ticks + 3, "three ticks")

    waiting = c.client.rollout_status("digits")
    assert waiting["last_decision"]["missing"][1] == "devices: 0 of 2 with >= 20 calls on the new version"

    c.fleet.follow(c.registry, 2)
    poll(lambda: _devices_on(c.registry, 2) == 2, "the first stage's devices on v2")
    ticks = c.driver.ticks
    poll(lambda: c.driver.ticks >= ticks + 3, "three more ticks")

    status = c.client.rollout_status("digits")
    assert (status["state"], status["stage"], status["percent"]) == ("running", 0, 10)
    assert status["last_decision"]["action"] == "hold"
    assert [m.split(":")[0] for m in status["last_decision"]["missing"]] == ["soak"]
    assert [h["action"] for h in status["history"]] == ["start", "hold"]  # a hold is news once
    assert status["devices"] == {"1": 4, "2": 2}
    assert not any(check["breached"] for check in status["checks"])


def test_a_failing_rollout_is_counted_and_neither_stops_another_nor_the_next_tick(
    tmp_path, repo, versions, monkeypatch
):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    for model in ("digits", "letters"):
        for version in (1, 2):
            directory = make_version(versions(version), tmp_path / "models" / f"{model}-{version}", version)
            dataclasses.replace(load_manifest(directory), name=model).write(directory)
            registry.add_version(directory)
    store = RolloutStore(registry, RolloutPolicies(default=RolloutPolicy(stages=(50, 100), soak_s=0, min_calls=1)))
    for model in ("digits", "letters"):
        store.start(model, 2)
        window = Telemetry()
        window.record(2, 1.0, confidence_sum=0.9, confident_rows=1)
        # What the release service records from a device's status message (the MQTT leg is tested above).
        registry.record_status(
            {"model": model, "installed_version": 2, "telemetry": window.take()}, device_id=f"pi-{model}"
        )
    evidence = store.evidence

    def broken(model, version, baseline):
        if model == "digits":
            raise RuntimeError("injected: the database failed reading digits' evidence")
        return evidence(model, version, baseline)

    monkeypatch.setattr(store, "evidence", broken)  # a fault a real SQLite file does not produce on demand
    driver = RolloutDriver(store, tick_s=60)

    assert [(d.action, d.percent) for d in driver.tick()] == [("advance", 100)]  # letters'; digits' step raised
    assert (driver.ticks, driver.failures) == (1, 1)
    monkeypatch.setattr(store, "evidence", evidence)
    assert [(d.action, d.percent) for d in driver.tick()] == [("advance", 100), ("complete", 100)]
    assert [(d.action, d.percent) for d in driver.tick()] == [("complete", 100)]
    assert (driver.ticks, driver.failures) == (3, 1)
    assert [(r["model"], r["rollout"]) for r in registry.releases()] == [("letters", 100), ("digits", 100)]
    registry.close()


def test_a_staged_release_lacking_a_target_artifact_is_refused_and_nothing_is_released(cloud, tmp_path, versions):
    c = cloud(RolloutPolicy(stages=STAGES, targets=("onnx-int8", "tflite")))
    manifest = load_manifest(versions(2))
    partial = make_version(versions(2), tmp_path / "partial", 3)
    artifacts = {k: a for k, a in manifest.artifacts.items() if k != "tflite"}
    dataclasses.replace(load_manifest(partial), artifacts=artifacts).write(partial)
    c.registry.add_version(partial)

    with pytest.raises(Conflict, match="v3 has no tflite artifact"):
        c.client.release("digits", 3, staged=True)
    assert [r["version"] for r in c.registry.releases("digits")] == [1]


def test_a_bad_policy_file_stops_the_service_naming_the_key(tmp_path, repo):
    policy = tmp_path / "policy.toml"
    policy.write_text("[default]\nstages = [5, 25]\n")
    command = [sys.executable, "-m", "sdk.cli", "cloud", "serve", "--port", str(free_port())]
    command += ["--registry-url", f"sqlite:///{tmp_path / 'registry.db'}", "--repository", str(repo.directory)]
    command += ["--keys", str(tmp_path / "keys" / "online"), "--store", str(tmp_path / "store")]
    env = {**os.environ, "FEDGE_CLOUD__ROLLOUT_POLICY": str(policy), "FEDGE_CLOUD__ADMIN_KEYS": ADMIN}

    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ConfigError: default.stages: the last stage must be 100" in " ".join(proc.stderr.split())
    assert not (tmp_path / "registry.db").exists()  # stopped before the registry opened


def test_a_newer_staged_release_supersedes_the_running_rollout(tmp_path, repo, versions):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    for version in (1, 2, 3):
        registry.add_version(versions(version))
    registry.release("digits", 1)
    store = RolloutStore(registry, RolloutPolicies(default=RolloutPolicy(stages=STAGES, soak_s=3600)))
    store.start("digits", 2)

    started = store.start("digits", 3)  # the federation accepted a better round while v2 was still at stage 1

    assert started["baseline"] == 2
    assert [(r.version, r.state) for r in store.running()] == [(3, "running")]
    superseded = store.status("digits", 2)
    assert (superseded["state"], superseded["reason"]) == ("superseded", "superseded by v3")
    assert [h["action"] for h in superseded["history"]] == ["start", "superseded"]
    assert store.status("digits")["version"] == 3
    assert {r["version"]: r["rollout"] for r in registry.releases("digits")} == {1: 100, 2: STAGES[0], 3: STAGES[0]}
    registry.close()
