"""Recall: an aborted release sends its devices back to the previous good one, by signed metadata only.

The decision is pure (``choose_release``): a lower version only when the installed release is
aborted and its signed index entry names it. The repository signs that instruction; the registry
keeps it; the device follows it through the same smoke test and health window as any install,
reusing the copy it holds when that copy verifies; a forged instruction changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from tuf.api.metadata import Metadata
from waiting import PATIENCE_S, poll

from bench.ota import CountingFetcher
from sdk.backoff import Backoff
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.server import BackgroundServer
from sdk.edge import EdgeRuntime
from sdk.edge.background import CheckSchedule
from sdk.edge.install import ModelStore
from sdk.edge.status import DeviceLink
from sdk.edge.update_machine import HealthRules, Recall, Release, State, UpdateMachine, choose_release
from sdk.edge.updater import ModelUpdater, UpdateConfig, open_installed
from sdk.errors import Conflict
from sdk.manifest import load_manifest
from sdk.mqtt import MqttSettings

SAMPLE = np.zeros((1, 8, 8), np.float32)
ADMIN = "recall-admin-0123456789abcdef"


# -- the decision, pure ----------------------------------------------------------------------------------------


def entry(version: int, state: str = "active", *, to: int | None = None, targets=("onnx-int8",), **fields) -> Release:
    recall = Recall(to=to, reason="error rate") if state == "aborted" else None
    base = {"channel": "stable", "rollout": 100}
    return Release(version=version, state=state, targets=tuple(targets), recall=recall, **{**base, **fields})


def choose(releases, installed, refused=(), admitted=lambda r: True):
    return choose_release(
        releases, installed=installed, target="onnx-int8", channel="stable", admitted=admitted, refused=refused
    )


def test_an_aborted_installed_release_sends_the_device_to_its_signed_recall_target():
    releases = [entry(1), entry(2), entry(3, "aborted", to=2)]
    choice = choose(releases, installed=3)
    assert (choice.release.version, choice.recalled.version, choice.problem, choice.reason) == (
        2,
        3,
        None,
        "error rate",
    )
    # Every device on the aborted release goes back, whatever its rollout bucket or the target's channel.
    outside = [entry(1, rollout=0, channel="canary"), entry(2, "aborted", to=1, channel="canary")]
    assert choose(outside, installed=2, admitted=lambda r: False).release.version == 1


@pytest.mark.parametrize(
    ("releases", "installed", "refused"),
    [
        pytest.param([entry(1), entry(2)], 2, (), id="both-active"),
        pytest.param([entry(1), entry(2, "paused")], 2, (), id="paused-is-no-recall"),
        pytest.param([entry(1), entry(2, "aborted", to=None)], 2, (), id="aborted-with-nowhere-to-go"),
        pytest.param([entry(1), entry(2, "aborted", to=1)], 3, (), id="installed-not-in-the-index"),
        pytest.param([entry(1), entry(2, "aborted", to=1)], 1, (), id="not-on-the-aborted-release"),
        pytest.param([entry(1), entry(2, "aborted", to=1)], 2, {1}, id="target-refused-before"),
        pytest.param([entry(1, "aborted", to=None), entry(2, "aborted", to=1)], 2, (), id="target-aborted-too"),
        pytest.param([entry(2), entry(3, "aborted", to=4), entry(4)], 3, {4}, id="a-recall-never-goes-up"),
        pytest.param([entry(2, "aborted", to=1)], 2, (), id="target-missing-from-the-index"),
    ],
)
def test_without_a_signed_recall_no_lower_version_is_chosen(releases, installed, refused):
    assert choose(releases, installed, refused) is None


def test_a_newer_release_wins_over_a_recall_and_a_target_without_this_artifact_is_a_problem():
    newer = choose([entry(1), entry(2, "aborted", to=1), entry(3)], installed=2)
    assert (newer.release.version, newer.recalled) == (3, None)
    blocked = choose([entry(1, targets=("tflite",)), entry(2, "aborted", to=1)], installed=2)
    assert (blocked.release.version, blocked.recalled.version) == (1, 2)
    assert blocked.problem == "v1, where the recall of v2 leads, has no onnx-int8 artifact"


def test_the_recall_instruction_is_parsed_from_the_index_and_a_malformed_one_skips_the_entry():
    base = {"version": 2, "channel": "stable", "rollout": 100, "state": "aborted", "targets": ["onnx-int8"]}
    assert Release.from_index({**base, "recall": {"to": 1, "reason": "why"}}).recall == Recall(to=1, reason="why")
    assert Release.from_index({**base, "recall": {"to": None, "reason": ""}}).recall == Recall(to=None)
    for bad in ({"to": "1", "reason": ""}, {"to": True, "reason": ""}, {"reason": ""}, ["to", 1]):
        assert Release.from_index({**base, "recall": bad}) is None


def test_a_committed_recall_says_which_version_it_left_and_why():
    m = UpdateMachine(
        backoff=Backoff(base_s=1, max_s=9, interval_s=9), health=HealthRules(), failures=0, draw=lambda: 0.0
    )
    m.advance(State.CHECKING)
    m.chosen(entry(1), recalled=entry(2, "aborted", to=1))
    for step in (State.VERIFYING, State.STAGED, State.SWAPPING):
        m.advance(step)
    verdict = m.committed()
    assert (verdict.outcome, verdict.version, verdict.recalled) == ("installed", 1, 2)
    assert verdict.detail == "v2 was recalled: error rate"


# -- the signed repository and the registry -----------------------------------------------------------------


def signed_custom(repo, path: str) -> dict:
    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    return Metadata.from_file(str(newest)).signed.targets[path].unrecognized_fields["custom"]


def index_path(repo):
    """The stored file of the release index the newest signed targets metadata names."""
    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    digest = Metadata.from_file(str(newest)).signed.targets["digits/index.json"].hashes["sha256"]
    return repo.targets_dir / "digits" / f"{digest}.index.json"


def signed_index(repo) -> dict[int, dict]:
    return {r["version"]: r for r in json.loads(index_path(repo).read_bytes())["releases"]}


def test_an_abort_signs_the_recall_per_channel_and_later_recalls_follow_it(repo, versions):
    repo.release(versions(1), patches=False)
    repo.release(versions(2), channel="canary", patches=False)
    repo.release(versions(3), patches=False)
    aborted = repo.update_release("digits", 3, state="aborted", reason="error rate 9 %")
    assert aborted["recall"] == {"to": 1, "reason": "error rate 9 %"}  # v2 is another channel's
    for path in ("digits/3/manifest.json", "digits/3/model-int8.onnx", "digits/3/probe.npz"):
        assert signed_custom(repo, path)["recall"] == {"to": 1, "reason": "error rate 9 %"}
    index = signed_index(repo)
    assert index[3]["state"] == "aborted"
    assert index[3]["recall"] == {"to": 1, "reason": "error rate 9 %"}
    assert "recall" not in index[1]
    assert "recall" not in index[2]
    assert repo.update_release("digits", 2, state="aborted")["recall"] == {"to": None, "reason": ""}

    repo.update_release("digits", 1, state="aborted", reason="v1 too")  # v3's devices would land on it
    assert signed_index(repo)[3]["recall"] == {"to": None, "reason": "error rate 9 %"}
    with pytest.raises(Conflict, match="aborted"):
        repo.update_release("digits", 3, state="aborted")
    with pytest.raises(Conflict, match="aborted"):
        repo.update_release("digits", 3, state="active")
    with pytest.raises(ValueError, match="abort"):
        repo.update_release("digits", 1, rollout=50, reason="no abort")
    assert [r.get("recall", {}).get("to") for r in repo.releases()] == [None, None, None]


@pytest.fixture
def registry(tmp_path, repo):
    notices: list[tuple[str, int]] = []
    reg = Registry(
        f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo, notify=lambda *n: notices.append(n)
    )
    reg.notices = notices
    yield reg
    reg.close()


def test_the_registry_records_the_recall_and_an_abort_is_a_recall(registry, versions, tmp_path, repo):
    for v in (1, 2, 3):
        registry.add_version(versions(v))
        registry.release("digits", v)
    recalled = registry.recall("digits", 3, reason="mean confidence fell 12 points")
    assert recalled["state"] == "aborted"
    assert recalled["recall"] == {"to": 2, "reason": "mean confidence fell 12 points"}
    aborted = registry.update_release("digits", 2, state="aborted", reason="install failures")
    assert aborted["recall"] == {"to": 1, "reason": "install failures"}
    assert registry.notices[-2:] == [("digits", 3), ("digits", 2)]
    with pytest.raises(Conflict):
        registry.recall("digits", 3, reason="again")
    listed = {r["version"]: r for r in registry.releases("digits")}
    assert listed[3]["recall"] == {"to": 1, "reason": "mean confidence fell 12 points"}  # moved on with v2's abort
    assert listed[2]["recall"] == {"to": 1, "reason": "install failures"}
    assert "recall" not in listed[1]
    assert signed_index(repo)[3]["recall"] == listed[3]["recall"]
    registry.add_version(versions(4))
    registry.release("digits", 4)
    long = registry.recall("digits", 4, reason="x" * 2000)  # a controller's long reason is cut, never a failed abort
    assert long["recall"] == {"to": 1, "reason": "x" * 500}

    # A database made before recall lacks the columns: they are added, and what it holds stays.
    registry.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("ALTER TABLE releases DROP COLUMN reason")
        db.execute("ALTER TABLE releases DROP COLUMN recall_to")
    reopened = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    try:
        assert [r["version"] for r in reopened.releases("digits")] == [4, 3, 2, 1]
        assert reopened.recall("digits", 1, reason="last one")["recall"] == {"to": None, "reason": "last one"}
    finally:
        reopened.close()


# -- one device against the real repository over HTTP ----------------------------------------------------------


def on(device, repo, versions, *installed: int, **kwargs) -> ModelUpdater:
    """A device that installed each of ``installed`` in turn (released if not yet), with a runtime serving the last."""
    updater = device(**kwargs)
    for v in installed:
        if v not in [r["version"] for r in repo.releases()]:
            repo.release(versions(v))
        assert updater.check().outcome == "installed"
        if updater.runtime is None:
            updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    return updater


def served_version(updater) -> int:
    return updater.runtime.predict(SAMPLE).model_version


def test_a_recall_reuses_the_verified_copy_the_device_holds(device, repo, versions):
    fetcher = CountingFetcher()
    updater = on(device, repo, versions, 1, 2, fetcher=fetcher)
    assert updater.store.previous().name == "v1"
    fetched_before = len(fetcher.urls)
    repo.update_release("digits", 2, state="aborted", reason="error rate 9 %")

    outcome = updater.check()
    assert (outcome.outcome, outcome.version, outcome.release, outcome.recalled) == ("installed", 1, 1, 2)
    assert served_version(updater) == 1
    new_urls = fetcher.urls[fetched_before:]
    assert not [u for u in new_urls if "/targets/digits/1/" in u]  # nothing of v1 came down again
    steps = [e["step"] for e in updater.events if e.get("target_version") == 1 or e.get("installed_version") == 1]
    assert steps[-4:] == ["recalling", "smoke-test", "installed", "recalled"]
    last = updater.events[-1]
    assert (last["installed_version"], last["recalled_version"]) == (1, 2)
    assert last["reason"] == "v2 was recalled: error rate 9 %"
    assert updater.memory.refused[2]["outcome"] == "recalled"
    assert (updater.store.current().name, updater.store.previous().name) == ("v1", "v2")
    assert updater.check().outcome == "up-to-date"
    assert served_version(updater) == 1


def test_a_damaged_held_copy_is_downloaded_again(device, repo, versions):
    updater = on(device, repo, versions, 1, 2)
    held = updater.store.versions / "v1" / "model-int8.onnx"
    data = bytearray(held.read_bytes())
    data[len(data) // 2] ^= 0xFF
    held.write_bytes(bytes(data))
    repo.update_release("digits", 2, state="aborted", reason="bad")

    outcome = updater.check()
    assert (outcome.outcome, outcome.version, outcome.recalled) == ("installed", 1, 2)
    steps = [e["step"] for e in updater.events[-8:]]
    assert steps[steps.index("recalling") :] == [
        "recalling",
        "held-copy-unusable",
        "downloading",
        "smoke-test",
        "installing",
        "installed",
        "recalled",
    ]
    manifest = load_manifest(updater.store.current())
    assert load_manifest(versions(1)).artifacts["onnx-int8"].sha256 == manifest.artifacts["onnx-int8"].sha256
    assert served_version(updater) == 1
    assert not list(updater.store.root.glob(".staging-*"))


def test_a_device_without_the_target_downloads_it(device, repo, versions):
    repo.release(versions(1))
    fetcher = CountingFetcher()
    updater = on(device, repo, versions, 2, fetcher=fetcher)  # a device that came after v2: it never held v1
    assert updater.store.previous() is None
    assert not [u for u in fetcher.urls if "/targets/digits/1/" in u]
    repo.update_release("digits", 2, state="aborted", reason="bad")
    outcome = updater.check()
    assert (outcome.outcome, outcome.version, outcome.recalled) == ("installed", 1, 2)
    assert "downloading" in [e["step"] for e in updater.events[-6:]]
    assert [u for u in fetcher.urls if "/targets/digits/1/" in u and u.endswith(".model-int8.onnx")]
    assert served_version(updater) == 1


def test_a_lower_version_is_never_taken_from_an_index_that_does_not_recall(device, repo, versions):
    updater = on(device, repo, versions, 1, 2)
    for change in ({"rollout": 0}, {"state": "paused"}):
        repo.update_release("digits", 2, **change)
        outcome = updater.check()
        assert (outcome.outcome, outcome.version) == ("up-to-date", 2)
    assert served_version(updater) == 2
    assert updater.memory.refused == {}


def test_a_recall_edited_on_disk_without_re_signing_changes_nothing(device, repo, versions):
    updater = on(device, repo, versions, 1, 2)
    # The index the device would read next, rewritten to recall v2 to v1: its signed hash no longer holds.
    stored = index_path(repo)
    index = json.loads(stored.read_bytes())
    for release in index["releases"]:
        if release["version"] == 2:
            release.update(state="aborted", recall={"to": 1, "reason": "forged"})
    stored.write_text(json.dumps(index))
    outcome = updater.check()
    assert (outcome.outcome, outcome.version) == ("rejected", 2)
    assert "UpdateRejected" in outcome.detail

    # A new targets version (a pause), edited to an abort with a recall before the device reads it: unsigned.
    repo.update_release("digits", 2, state="paused")
    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    md = json.loads(newest.read_bytes())
    custom = md["signed"]["targets"]["digits/2/manifest.json"]["custom"]
    custom.update(state="aborted", recall={"to": 1, "reason": "forged"})
    newest.write_text(json.dumps(md))
    outcome = updater.check()
    assert (outcome.outcome, outcome.version) == ("rejected", 2)
    assert served_version(updater) == 2
    assert sorted(p.name for p in updater.store.versions.iterdir()) == ["v1", "v2"]
    assert updater.store.current().name == "v2"


def with_lineage(versions, version: int, **lineage):
    folder = versions(version)
    manifest = load_manifest(folder)
    dataclasses.replace(manifest, lineage={**manifest.lineage, **lineage}).write(folder)
    return folder


def assert_refused_keeps_serving(updater, outcome, error: str):
    assert (outcome.outcome, outcome.version, outcome.release, outcome.recalled) == ("rejected", 2, 1, 2)
    assert outcome.detail.startswith(f"{error}: digits v"), outcome.detail
    last = updater.events[-1]
    assert (last["step"], last["target_version"], last["recalled_version"]) == ("rejected", 1, 2)
    assert served_version(updater) == 2
    assert updater.store.current().name == "v2"
    assert not list(updater.store.root.glob(".staging-*"))
    assert 1 in updater.memory.refused
    assert 2 not in updater.memory.refused
    assert updater.check().outcome == "up-to-date"  # refused once, reported once, not retried in a loop
    assert served_version(updater) == 2


def test_a_recall_target_without_this_devices_artifact_is_refused_and_it_keeps_serving(device, repo, versions):
    repo.release(versions(1), kinds=["onnx-fp32", "tflite"])
    updater = on(device, repo, versions, 2)
    repo.update_release("digits", 2, state="aborted", reason="bad")
    assert_refused_keeps_serving(updater, updater.check(), "RecallImpossible")
    assert not (updater.store.versions / "v1").exists()


@pytest.mark.parametrize("held", [pytest.param(False, id="downloaded"), pytest.param(True, id="held")])
def test_a_recall_target_the_privacy_policy_refuses_is_refused_and_it_keeps_serving(
    device, repo, versions, held, tmp_path
):
    repo.release(with_lineage(versions, 1, privacy="central-dp", epsilon=8.0, delta=1e-5, clients=10))
    updater = on(device, repo, versions, *([1] if held else []))
    repo.release(with_lineage(versions, 2, privacy="central-dp", epsilon=0.5, delta=1e-5, clients=10))
    assert updater.check().outcome == "installed"
    if updater.runtime is None:
        updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    strict = dataclasses.replace(updater.config, max_epsilon=1.0)  # the device's policy, tightened since v1
    events = updater.events
    updater = ModelUpdater(updater.store, strict, repo.root_bytes(1), runtime=updater.runtime, reporter=events.append)
    updater.events = events
    repo.update_release("digits", 2, state="aborted", reason="bad")
    assert_refused_keeps_serving(updater, updater.check(), "PolicyRefused")
    assert (updater.store.versions / "v1").exists() is held


# -- the fleet, end to end: real broker, real cloud, devices that keep predicting -----------------------------


class Device:
    """A device in this process as `fedge edge run` wires it: a runtime predicting nonstop, checks on notices."""

    def __init__(self, device_id: str, settings: MqttSettings, store_dir, repository_url: str, root: bytes):
        config = UpdateConfig(model="digits", device_id=device_id, repository_url=repository_url, health_window_s=0.2)
        self.updater = ModelUpdater(ModelStore(store_dir), config, root)
        self.link = DeviceLink(
            settings,
            device_id,
            "digits",
            on_notice=lambda: self.updater.check(reason="notice"),
            schedule=CheckSchedule(min_interval_s=0, at_start=True, jitter=0),
            next_check_in=lambda outcome: outcome.retry_after_s,
        )
        self.updater.reporter = self.link.report
        self.served: list[int] = []  # the version that answered each prediction, in order
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._predict, daemon=True)

    def serve(self) -> None:
        """Load what is installed and predict until stopped; the updater swaps models underneath."""
        edge = self.updater.edge_config
        self.updater.runtime = EdgeRuntime(open_installed(self.updater.store, edge), edge)
        self._thread.start()

    def _predict(self) -> None:
        while not self._stop.wait(0.005):
            try:
                result = self.updater.runtime.predict(SAMPLE)
                assert result.source == "edge", result
                self.served.append(result.model_version)
            except BaseException as exc:  # collected: the test fails on it
                self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(PATIENCE_S)
        self.link.stop()
        if self.updater.runtime is not None:
            self.updater.runtime.close()

    def phases(self) -> list[int]:
        """The versions served, each run of one version counted once."""
        return [v for i, v in enumerate(self.served) if i == 0 or self.served[i - 1] != v]


@pytest.fixture
def cloud(tmp_path, repo, broker):
    settings = MqttSettings.from_address(broker.address)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    config = CloudConfig(admin_keys=(ADMIN,))
    with (
        ReleaseService(registry, settings),
        BackgroundServer(create_app({}, config, repository_dir=repo.directory, registry=registry)) as server,
    ):
        yield server, registry, settings
    registry.close()


def fedge_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDGE_ADMIN_KEY": ADMIN}
    proc = subprocess.run(
        [sys.executable, "-m", "sdk.cli", *args], capture_output=True, text=True, timeout=180, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_a_recalled_fleet_goes_back_to_the_good_version_and_keeps_predicting(cloud, repo, versions, tmp_path):
    server, registry, settings = cloud
    url, admin = f"{server.url}/v1/registry", {"X-API-Key": ADMIN}
    for v in (1, 2, 3):
        registry.add_version(versions(v))
    ids = ("pi-a", "pi-b", "pi-c")
    devices = [Device(d, settings, tmp_path / "devices" / d, f"{server.url}/tuf", repo.root_bytes(1)) for d in ids]

    def release(version: int) -> None:
        response = httpx.post(f"{url}/releases", json={"model": "digits", "version": version}, headers=admin)
        assert response.status_code == 201, response.text

    def fleet_on(version: int, *steps: str) -> None:
        def there():
            fleet = {d["device_id"]: d for d in registry.fleet()}
            return all(
                d in fleet and (fleet[d]["running_version"], fleet[d]["last_step"] in steps) == (version, True)
                for d in ids
            )

        poll(there, f"every device on v{version}, last step one of {steps}")

    def served_on(version: int) -> None:  # each device answered on the version it now runs, more than once
        poll(lambda: all(d.served[-3:] == [version] * 3 for d in devices), f"predictions on v{version}")

    release(1)
    for device in devices:
        device.link.start()
    fleet_on(1, "installed", "up-to-date")  # no runtime yet: "installed" (then the retained notice's check)
    for device in devices:
        device.serve()
    served_on(1)
    try:
        release(2)
        fleet_on(2, "healthy")
        served_on(2)

        unauthorized = httpx.post(f"{url}/releases/digits/2/recall", json={"reason": "x"})
        assert unauthorized.status_code == 401
        too_long = httpx.post(f"{url}/releases/digits/2/recall", json={"reason": "x" * 501}, headers=admin)
        assert too_long.status_code == 422
        recalled = httpx.post(f"{url}/releases/digits/2/recall", json={"reason": "error rate 9 %"}, headers=admin)
        assert recalled.status_code == 200, recalled.text
        assert recalled.json()["recall"] == {"to": 1, "reason": "error rate 9 %"}
        again = httpx.post(f"{url}/releases/digits/2/recall", json={"reason": "again"}, headers=admin)
        assert again.status_code == 409
        fleet_on(1, "recalled")
        served_on(1)
        reasons = {d["detail"]["reason"] for d in registry.fleet()}
        assert reasons == {"v2 was recalled: error rate 9 %"}

        release(3)
        fleet_on(3, "healthy")
        served_on(3)
        out = fedge_cli(
            "registry", "recall", "digits", "3", "--reason", "confidence fell", "--url", server.url, "--json"
        )
        assert json.loads(out.stdout)["recall"] == {"to": 1, "reason": "confidence fell"}
        fleet_on(1, "recalled")
        served_on(1)
    finally:
        for device in devices:
            device.stop()
    for device in devices:
        assert device.errors == []
        assert device.phases() == [1, 2, 1, 3, 1]  # predictions never stopped, and never came from v2 or v3 again
        assert set(device.updater.memory.refused) == {2, 3}
    listed = {r["version"]: r for r in httpx.get(f"{url}/releases", headers=admin).json()}
    assert listed[2]["recall"] == {"to": 1, "reason": "error rate 9 %"}
    assert listed[3]["recall"] == {"to": 1, "reason": "confidence fell"}
