"""A device's privacy policy against releases from a real signed repository over HTTP.

A release whose signed lineage spent more epsilon than the device allows, says nothing about its
privacy, or came from too few clients is refused after its signed manifest and before its
artifact; the device says why, keeps serving what it had, and does not fetch that release again
until its policy changes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess

import numpy as np
import pytest
from device_program import edge_run_command
from peers import publish
from waiting import PATIENCE_S, poll

from bench.ota import CountingFetcher
from sdk import topics
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.edge import EdgeRuntime
from sdk.edge.updater import open_installed
from sdk.manifest import load_manifest
from sdk.mqtt import MqttSettings
from sdk.notices import notice_payload

SAMPLE = np.zeros((1, 8, 8), np.float32)


def trained(versions, version: int, **lineage):
    """Model version ``version`` whose manifest's lineage says it was trained with ``lineage``."""
    folder = versions(version)
    manifest = load_manifest(folder)
    dataclasses.replace(manifest, lineage={**manifest.lineage, **lineage}).write(folder)
    return folder


def private(epsilon: float | None, clients: int = 10) -> dict:
    mode = "none" if epsilon is None else "central-dp"
    return {"privacy": mode, "epsilon": epsilon, "delta": 1e-5 if epsilon else None, "clients": clients}


def serving_v1(device, repo, versions, **update):
    """A device with policy ``update`` that installed v1 (epsilon 0.5, 10 clients) and serves it; its fetcher."""
    repo.release(trained(versions, 1, **private(0.5)))
    fetcher = CountingFetcher()
    updater = device(update=update, fetcher=fetcher)
    assert updater.check().outcome == "installed"
    updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    return updater, fetcher


def assert_refused_still_on_v1(updater, outcome, version: int, *words: str):
    assert outcome.outcome == "rejected", outcome
    assert outcome.release == version
    assert outcome.detail.startswith(f"PolicyRefused: digits v{version} "), outcome.detail
    assert all(w in outcome.detail for w in words), outcome.detail
    event = updater.events[-1]
    assert (event["step"], event["target_version"], event["reason"]) == ("rejected", version, outcome.detail)
    assert updater.installed_version == 1
    assert updater.runtime.manifest.version == 1
    assert updater.runtime.predict(SAMPLE).model_version == 1
    assert updater.memory.refused[version]["reason"] == outcome.detail


def test_a_release_over_max_epsilon_is_refused_before_its_artifact_and_a_private_enough_one_installs(
    device, repo, versions
):
    updater, fetcher = serving_v1(device, repo, versions, max_epsilon=1.0)
    repo.release(trained(versions, 2, **private(3.0)))
    assert_refused_still_on_v1(updater, updater.check(), 2, "spent epsilon 3 at delta 1e-05", "max_epsilon 1")
    names = [url.rsplit("/", 1)[1] for url in fetcher.urls if "/targets/digits/2/" in url]
    assert [n.split(".", 1)[1] for n in names] == ["manifest.json"]  # the signed manifest only: no artifact, no probe

    before = len(fetcher.urls)
    assert updater.check().outcome == "up-to-date"  # remembered: not fetched again
    assert not any("/targets/digits/2/" in url for url in fetcher.urls[before:])

    repo.release(trained(versions, 3, **private(0.5)))
    outcome = updater.check()
    assert (outcome.outcome, outcome.version) == ("installed", 3)
    assert updater.runtime.predict(SAMPLE).model_version == 3


def test_a_release_not_trained_privately_is_refused_when_max_epsilon_is_set_and_taken_without(device, repo, versions):
    updater, _ = serving_v1(device, repo, versions, max_epsilon=8.0)
    repo.release(trained(versions, 2, **private(None)))
    assert_refused_still_on_v1(updater, updater.check(), 2, "not trained with differential privacy")
    unbounded = device("pi-2")  # the same release, to a device without a policy
    assert unbounded.check().version == 2


def test_a_release_from_fewer_clients_than_min_clients_is_refused(device, repo, versions):
    updater, _ = serving_v1(device, repo, versions, min_clients=8)
    repo.release(trained(versions, 2, **private(0.5, clients=3)))
    assert_refused_still_on_v1(updater, updater.check(), 2, "3 clients per round", "min_clients 8")
    repo.release(trained(versions, 3, **private(0.5, clients=8)))
    assert updater.check().version == 3


def test_a_changed_policy_looks_again_at_what_the_old_one_refused(device, repo, versions):
    updater, _ = serving_v1(device, repo, versions, max_epsilon=1.0)
    repo.release(trained(versions, 2, **private(3.0)))
    assert updater.check().outcome == "rejected"
    same = device(update={"max_epsilon": 1.0})  # a restart with the same policy: still refused, not fetched
    assert same.store.root == updater.store.root
    assert same.check().outcome == "up-to-date"
    looser = device(update={"max_epsilon": 4.0})  # the operator raised the limit and restarted the device
    outcome = looser.check()
    assert (outcome.outcome, outcome.version) == ("installed", 2)
    assert looser.memory.refused == {}


@pytest.mark.device_subprocess
def test_edge_run_takes_its_policy_from_the_environment_and_the_fleet_view_shows_the_refusal(
    tmp_path, broker, server, repo, versions, digits_split
):
    settings = MqttSettings.from_address(broker.address)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    repo.release(trained(versions, 1, **private(0.5)))
    command = edge_run_command(
        tmp_path,
        device_id="pi-private",
        broker=broker.address,
        repository_url=f"{server.url}/tuf",
        root=repo.root_bytes(1),
        samples=digits_split.x_test[:3],
        state_dir=tmp_path / "state",
        update="health_window_s = 0.2\nmin_check_interval_s = 0\nmin_clients = 5",
    )
    env = {**os.environ, "FEDGE_UPDATE__MAX_EPSILON": "1.0"}  # as a unit's EnvironmentFile would set it
    out = tmp_path / "device.out"
    with ReleaseService(registry, settings), open(out, "w") as sink:
        proc = subprocess.Popen([*command, "--interval", "0.1"], stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:

            def answers(version: int) -> int:
                assert proc.poll() is None, out.read_text()
                return out.read_text().count(f"from edge, v{version}")

            poll(lambda: answers(1), "v1 installed and serving")
            repo.release(trained(versions, 2, **private(3.0)))
            publish(settings, topics.release("digits"), [notice_payload("digits", 2)], retain=True)
            (row,) = poll(lambda: [d for d in registry.fleet() if d["last_refusal"]], "the refusal in the fleet view")
            served = answers(1)
            poll(lambda: answers(1) >= served + 3, "answers from v1 after the refusal")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(PATIENCE_S) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            registry.close()
    assert row["device_id"] == "pi-private"
    # running_version stays empty here: these versions are released through the repository, not the registry,
    # and the fleet view takes a running version only from a registry release. The device served v1 throughout.
    assert row["last_refusal"].startswith("PolicyRefused: digits v2 spent epsilon 3"), row
    assert "max_epsilon 1" in row["last_refusal"]
    log = out.read_text()
    assert "from edge, v2" not in log
    assert "Traceback" not in log
