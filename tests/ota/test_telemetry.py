"""Device telemetry end to end: real runtimes and device links, a real broker, the release service and its registry.

Identity comes from the topic only, versions are checked against real releases, and the
fleet view sums the telemetry per version.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from peers import publish
from waiting import poll

from sdk import topics
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.server import BackgroundServer
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.status import DeviceLink
from sdk.edge.telemetry import Telemetry
from sdk.loading import load_model
from sdk.mqtt import MqttSettings

READER = "reader-key-0123456789abcdef"
EDGE = EdgeConfig(artifacts=("onnx-int8",))


@pytest.fixture
def fleet(tmp_path, repo, broker, versions):
    """A release service on a SQLite registry in which digits v1 and v2 are released; yields (service, settings)."""
    settings = MqttSettings.from_address(broker.address)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    for version in (1, 2):
        registry.add_version(versions(version))
        registry.release("digits", version)
    with ReleaseService(registry, settings) as service:
        yield service, settings
    registry.close()


class Device:
    """A real runtime counting into its telemetry, and its real device link (status every 0.2 s)."""

    def __init__(self, settings: MqttSettings, device_id: str, model_dir) -> None:
        self.id = device_id
        self.telemetry = Telemetry()
        self.runtime = EdgeRuntime(load_model(model_dir, EDGE), EDGE, telemetry=self.telemetry)
        self.link = DeviceLink(settings, device_id, "digits", telemetry=self.telemetry, telemetry_interval_s=0.2).start(
            wait=True
        )
        self.installed(self.runtime.manifest.version)

    def installed(self, version: int) -> None:
        """Report what the updater reports after a swap."""
        self.link.report({"device_id": self.id, "model": "digits", "step": "healthy", "installed_version": version})

    def serve(self, n: int) -> None:
        rng = np.random.default_rng(n)
        for _ in range(n):
            self.runtime.predict(rng.random((1, 8, 8), dtype=np.float32))

    def close(self) -> None:
        self.link.stop()
        self.runtime.close()


def by_version(registry: Registry, **kwargs) -> dict:
    return {(e["version"], e.get("device_id")): e for e in registry.telemetry("digits", **kwargs)}


def test_devices_report_what_they_served_and_the_fleet_view_sums_it_per_version(fleet, versions):
    service, settings = fleet
    registry = service.registry
    a, b = Device(settings, "pi-a", versions(1)), Device(settings, "pi-b", versions(1))
    try:
        a.serve(30)
        b.serve(12)
        a.runtime.swap(load_model(versions(2), EDGE))  # calls before and after the swap belong to different versions
        a.installed(2)
        a.serve(7)

        def counted():
            got = by_version(registry)
            return got if {v: e["calls"] for (v, _), e in got.items()} == {1: 42, 2: 7} else None

        # Each window is added once, however often the status carrying it is sent again.
        totals = poll(counted, "every call of both devices in the fleet view")
        v1, v2 = totals[(1, None)], totals[(2, None)]
        assert (v1["devices"], v2["devices"]) == (2, 1)
        for entry in (v1, v2):
            assert entry["errors"] == 0
            assert entry["error_rate"] == 0.0
            assert entry["fallback_rate"] == 0.0  # edge-only: nothing went to the cloud
            assert 0.0 < entry["mean_confidence"] <= 1.0
            assert 0.0 < entry["p50_ms"] <= entry["p99_ms"]
        per_device = by_version(registry, per_device=True)
        assert {k: e["calls"] for k, e in per_device.items()} == {(1, "pi-a"): 30, (1, "pi-b"): 12, (2, "pi-a"): 7}
        poll(lambda: registry.fleet()[0]["telemetry"], "pi-a's telemetry on v2 in the fleet view")
        fleet_view = {d["device_id"]: d for d in registry.fleet()}
        assert fleet_view["pi-a"]["running_version"] == 2
        assert fleet_view["pi-a"]["telemetry"]["calls"] == 7  # the version it runs now
        assert fleet_view["pi-b"]["telemetry"]["calls"] == 12
    finally:
        a.close()
        b.close()
    assert service.dropped_statuses == service.rejected_statuses == 0

    from typer.testing import CliRunner

    from sdk.cli import app

    with BackgroundServer(create_app({}, CloudConfig(api_keys=(READER,)), registry=registry)) as server:
        result = CliRunner().invoke(
            app, ["registry", "telemetry", "digits", "--url", server.url, "--json"], env={"FEDGE_API_KEY": READER}
        )
        table = CliRunner().invoke(
            app, ["registry", "telemetry", "--url", server.url], env={"FEDGE_API_KEY": READER, "COLUMNS": "250"}
        )
    assert result.exit_code == 0, result.output
    assert [(e["version"], e["devices"], e["calls"]) for e in json.loads(result.stdout)] == [(1, 2, 42), (2, 1, 7)]
    assert table.exit_code == 0, table.output
    rows = [line.split("│")[1:-1] for line in table.stdout.splitlines() if line.startswith("│ digits")]
    assert [[cell.strip() for cell in row[:4]] for row in rows] == [
        ["digits", "1", "2", "42"],
        ["digits", "2", "1", "7"],
    ]


def test_a_status_naming_another_device_oversized_or_malformed_changes_nothing(fleet, versions):
    service, settings = fleet
    registry = service.registry
    victim = Device(settings, "pi-victim", versions(1))
    try:
        victim.serve(5)
        poll(lambda: by_version(registry).get((1, None), {}).get("calls") == 5, "the victim's 5 calls")
        before = {d["device_id"]: d for d in registry.fleet()}["pi-victim"]
        forged_window = {"window": "forged-1", "seconds": 1.0, "versions": [{"version": 1, "calls": 1000}]}
        forged = {"device_id": "pi-victim", "model": "digits", "installed_version": 2, "state": "offline"}
        forged |= {"step": "rolled-back", "reason": "forged", "telemetry": forged_window}
        poisons = [
            json.dumps(forged).encode(),  # on the stranger's own topic, naming the victim
            json.dumps({"state": "online", "step": "healthy", "pad": "x" * 20_000}).encode(),  # over 16 KiB
            json.dumps(
                {"telemetry": {**forged_window, "versions": [{"version": 1, "calls": 3, "errors": 9}]}}
            ).encode(),
        ]
        publish(settings, topics.device_status("pi-stranger"), poisons)
        sentinel = {"state": "online", "step": "up-to-date", "model": "digits", "installed_version": 1}
        publish(settings, topics.device_status("pi-sentinel"), [json.dumps(sentinel).encode()])
        poll(lambda: any(d["device_id"] == "pi-sentinel" for d in registry.fleet()), "the sentinel after the poisons")

        after = {d["device_id"]: d for d in registry.fleet()}
        assert "pi-stranger" not in after  # none of its statuses was kept
        for key in ("running_version", "status", "last_step", "last_refusal", "telemetry"):
            assert after["pi-victim"][key] == before[key], key
        assert by_version(registry)[(1, None)]["calls"] == 5
        assert service.dropped_statuses == service.drops["rejected"] == len(poisons)
    finally:
        victim.close()


def test_a_version_without_a_release_is_a_counted_rejection_not_fleet_truth(fleet, versions):
    service, settings = fleet
    registry = service.registry
    device = Device(settings, "pi-liar", versions(1))
    try:
        device.serve(4)
        poll(lambda: by_version(registry).get((1, None), {}).get("calls") == 4, "the device's 4 calls on v1")
        # What a device running an unreleased build would say, on its own topic: a real window of another version.
        claim = {"model": "digits", "step": "healthy", "installed_version": 99}
        claim["telemetry"] = {"window": "liar-1", "seconds": 1.0, "versions": [{"version": 99, "calls": 0}]}
        publish(settings, topics.device_status("pi-liar"), [json.dumps(claim).encode()])
        poll(lambda: service.rejected_statuses == 1, "the rejection counted")

        (entry,) = registry.fleet()
        assert entry["running_version"] == 1  # not the claimed 99
        assert entry["rejected_reports"] == 1
        assert "v99 has no release" in entry["detail"]["last_rejection"]["reason"]
        assert [e["version"] for e in registry.telemetry("digits")] == [1]
        assert service.dropped_statuses == 0
    finally:
        device.close()


def test_a_window_delivered_again_or_late_is_added_once(fleet):
    service, _ = fleet
    registry = service.registry

    def status(window: str, calls: int) -> dict:
        entry = {"version": 1, "calls": calls, "rows": calls, "latency": [[10, calls]]}
        return {
            "model": "digits",
            "installed_version": 1,
            "telemetry": {"window": window, "seconds": 1.0, "versions": [entry]},
        }

    # QoS 1 may deliver a status again after a later one (a resend on reconnect); a real broker does not do that on
    # demand, so the registry is handed them in that order.
    for seq, calls in ((1, 3), (2, 4), (1, 3), (2, 4), (3, 5)):
        registry.record_status(status(f"b00t-{seq}", calls), device_id="pi-dup")
    assert by_version(registry)[(1, None)]["calls"] == 12
    registry.record_status(status("n3wb00t-1", 2), device_id="pi-dup")  # the device restarted: its windows count anew
    assert by_version(registry)[(1, None)]["calls"] == 14
