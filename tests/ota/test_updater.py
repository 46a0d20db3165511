"""Over-the-air updates through a real HTTP server and python-tuf: the happy path and every attack.

In each attack the device reports the rejection and keeps serving the model it had.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time

import numpy as np
import pytest
from tuf.api.metadata import Metadata, TargetFile
from waiting import PATIENCE_S, poll

from bench.ota import CountingFetcher
from bench.versions import with_wrong_probe
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.signing import new_signer
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.rollout import bucket, in_rollout
from sdk.edge.updater import open_installed
from sdk.errors import Conflict
from sdk.manifest import PROBE_FILE, read_probe

SAMPLE = np.zeros((1, 8, 8), np.float32)


def installed_then(device, repo, versions):
    """A device that runs v1 from the repository, with a runtime serving it."""
    repo.release(versions(1))
    updater = device()
    assert updater.check().outcome == "installed"
    updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    return updater


def assert_still_on_v1(updater, outcome):
    assert outcome.outcome == "rejected", outcome
    assert updater.installed_version == 1
    assert updater.runtime.manifest.version == 1
    assert updater.runtime.predict(SAMPLE).source == "edge"
    assert updater.events[-1]["step"] == "rejected"


def test_release_installs_swaps_and_reports(device, repo, versions):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2))
    outcome = updater.check()
    assert outcome.outcome == "installed"
    assert outcome.version == 2
    assert updater.runtime.manifest.version == 2
    assert updater.runtime.predict(SAMPLE).model_version == 2
    steps = [e["step"] for e in updater.events if e.get("target_version") == 2 or e.get("installed_version") == 2]
    assert steps == ["downloading", "patched", "smoke-test", "installing", "installed", "healthy"]  # v1's patch
    assert updater.check().outcome == "up-to-date"
    # Only this device's artifact came down, not every artifact of the release; fetched.json says which.
    files = {p.name for p in updater.store.current().iterdir()}
    assert files == {"manifest.json", "model-int8.onnx", "probe.npz", "fetched.json"}
    assert json.loads((updater.store.current() / "fetched.json").read_text()) == {"artifacts": ["onnx-int8"]}


def test_release_details_travel_in_signed_metadata(repo, versions):
    release = repo.release(versions(1), channel="canary", rollout=10)
    targets = Metadata.from_file(str(max(repo.metadata_dir.glob("*.targets.json"))))
    custom = targets.signed.targets["digits/1/manifest.json"].unrecognized_fields["custom"]
    assert custom == {
        "model": "digits",
        "version": 1,
        "channel": "canary",
        "rollout": 10,
        "kind": "manifest",
        "state": "active",
    }
    assert release["files"]["onnx-int8"] == "digits/1/model-int8.onnx"
    with pytest.raises(Conflict):
        repo.release(versions(1))


def test_staged_rollout_admits_devices_by_a_stable_bucket(device, repo, versions):
    repo.release(versions(1), rollout=30)
    ids = [f"pi-{i}" for i in range(40)]
    inside = [d for d in ids if in_rollout(d, "digits", 30)]
    outside = [d for d in ids if d not in inside]
    assert 0 < len(inside) < len(ids)
    assert device(inside[0]).check().outcome == "installed"
    assert device(outside[0]).check().outcome == "up-to-date"
    assert all(bucket(d, "digits") == bucket(d, "digits") for d in ids)
    repo.update_release("digits", 1, rollout=100)  # widening adds the rest
    assert device(outside[0]).check().outcome == "installed"


def test_paused_release_is_not_taken(device, repo, versions):
    repo.release(versions(1))
    repo.update_release("digits", 1, state="paused")
    assert device().check().outcome == "up-to-date"


def test_tampered_artifact_is_refused(device, repo, versions):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2), patches=False)  # no patch: the attack is on the full artifact
    (stored,) = (repo.targets_dir / "digits" / "2").glob("*.model-int8.onnx")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert_still_on_v1(updater, updater.check())


def test_truncated_artifact_is_refused(device, repo, versions):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2), patches=False)  # no patch: the attack is on the full artifact
    (stored,) = (repo.targets_dir / "digits" / "2").glob("*.model-int8.onnx")
    stored.write_bytes(stored.read_bytes()[:1000])
    assert_still_on_v1(updater, updater.check())


def test_oversized_artifact_stops_at_the_signed_length(device, repo, versions):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2), patches=False)  # no patch: the attack is on the full artifact
    (stored,) = (repo.targets_dir / "digits" / "2").glob("*.model-int8.onnx")
    stored.write_bytes(stored.read_bytes() + b"\0" * 5_000_000)
    assert_still_on_v1(updater, updater.check())


def test_metadata_signed_by_an_untrusted_key_is_refused(device, repo, versions):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2))
    attacker = new_signer()
    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    md = Metadata.from_file(str(newest))
    md.signatures.clear()
    md.sign(attacker)
    md.to_file(str(newest))
    assert_still_on_v1(updater, updater.check())


def test_rollback_to_older_metadata_is_refused(device, repo, versions):
    updater = installed_then(device, repo, versions)
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.release(versions(2))
    repo.refresh_timestamp()
    assert updater.check().outcome == "installed"
    repo.release(versions(3))
    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # replay the timestamp of v1 times
    outcome = updater.check()
    assert outcome.outcome == "rejected"
    assert updater.installed_version == 2


def test_indefinite_freeze_is_refused(tmp_path, keys, versions, model_dir):
    from sdk.cloud.app import create_app
    from sdk.cloud.server import BackgroundServer
    from sdk.edge.install import ModelStore
    from sdk.edge.updater import ModelUpdater, UpdateConfig

    repo = ReleaseRepository.create(tmp_path / "short", keys, timestamp_expiry=dt.timedelta(seconds=2))
    repo.release(versions(1))
    time.sleep(2.5)  # a lower bound: nobody re-signed the timestamp, which has expired (a frozen repository)
    with BackgroundServer(create_app({}, repository_dir=repo.directory)) as server:
        events = []
        config = UpdateConfig(model="digits", device_id="pi-1", repository_url=f"{server.url}/tuf")
        updater = ModelUpdater(ModelStore(tmp_path / "dev"), config, repo.root_bytes(1), reporter=events.append)
        outcome = updater.check()
        assert outcome.outcome == "rejected"
        assert "xpired" in outcome.detail
        repo.timestamp_expiry = dt.timedelta(hours=1)
        repo.refresh_timestamp()  # the service's schedule re-signs it with its usual expiry: the device goes on
        assert updater.check().outcome == "installed"


def test_mix_and_match_is_refused(device, repo, versions):
    updater = installed_then(device, repo, versions)
    old_snapshot = max(repo.metadata_dir.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0]))
    old_bytes = old_snapshot.read_bytes()
    repo.release(versions(2))
    new_snapshot = max(repo.metadata_dir.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0]))
    new_snapshot.write_bytes(old_bytes)  # an old snapshot served with the new timestamp and targets
    assert_still_on_v1(updater, updater.check())


def test_endless_metadata_is_cut_off(device, repo, versions):
    updater = installed_then(device, repo, versions)
    (repo.metadata_dir / "timestamp.json").write_bytes(b"{" + b" " * 200_000)
    assert_still_on_v1(updater, updater.check())


def test_malformed_metadata_is_refused(device, repo, versions):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2))
    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    newest.write_text('{"signed": {"_type": "targets"}, "signatures": "nope"}')
    assert_still_on_v1(updater, updater.check())


def test_a_target_path_that_escapes_the_model_directory_is_refused(device, repo, versions, tmp_path):
    updater = installed_then(device, repo, versions)
    repo.release(versions(2))
    # A compromised (or buggy) service signs a manifest whose artifact file climbs out of the directory.
    manifest_target = repo.targets_dir / "digits" / "2"
    (stored,) = manifest_target.glob("*.manifest.json")
    manifest = json.loads(stored.read_text())
    manifest["artifacts"]["onnx-int8"]["file"] = "../../escaped.onnx"
    evil = json.dumps(manifest).encode()
    md = Metadata.from_file(str(max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))))
    info = TargetFile.from_data("digits/2/manifest.json", evil, ["sha256"])
    info.unrecognized_fields["custom"] = md.signed.targets["digits/2/manifest.json"].unrecognized_fields["custom"]
    (manifest_target / f"{info.hashes['sha256']}.manifest.json").write_bytes(evil)
    md.signed.targets[info.path] = info
    repo._publish(md)
    assert_still_on_v1(updater, updater.check())
    assert not (tmp_path / "devices" / "escaped.onnx").exists()
    assert not list(tmp_path.rglob("escaped.onnx"))


def test_root_rotation_needs_the_threshold_of_old_keys(device, repo, versions, keys):
    updater = installed_then(device, repo, versions)
    old = keys.root()
    new = [new_signer(), new_signer()]
    repo.rotate_root(old[:2], new, threshold=2)  # 2 of 3 old keys: the threshold
    repo.release(versions(2))
    assert updater.check().outcome == "installed"

    attacker = [new_signer(), new_signer()]
    repo.rotate_root(new[:1], attacker, threshold=1)  # 1 of the 2 current keys: under the threshold
    repo.release(versions(3))
    outcome = updater.check()
    assert outcome.outcome == "rejected"
    assert updater.installed_version == 2


def test_a_probe_that_fails_is_a_rejected_update(device, repo, versions, tmp_path):
    updater = installed_then(device, repo, versions)
    broken = with_wrong_probe(versions(2))
    repo.release(broken)
    outcome = updater.check()
    assert_still_on_v1(updater, outcome)
    assert "SmokeTestFailed" in updater.events[-1]["reason"]


def test_a_failed_health_check_after_the_swap_rolls_back(device, repo, versions, monkeypatch):
    import sdk.edge.updater as updater_module

    updater = installed_then(device, repo, versions)
    repo.release(versions(2))

    def failing(model):  # fault injection: a real model does not fail its probe only after the swap
        from sdk.errors import ModelIntegrityError

        raise ModelIntegrityError("injected: probe mismatch on the live model")

    monkeypatch.setattr(updater_module, "smoke_test", failing)
    outcome = updater.check()
    assert outcome.outcome == "rolled-back"
    assert updater.installed_version == 1
    assert updater.runtime.manifest.version == 1
    assert updater.runtime.predict(SAMPLE).model_version == 1


def test_an_unreachable_repository_is_not_an_error(tmp_path, repo):
    from sdk.edge.install import ModelStore
    from sdk.edge.updater import ModelUpdater, UpdateConfig
    from sdk.mosquitto import free_port

    config = UpdateConfig(model="digits", device_id="pi-1", repository_url=f"http://127.0.0.1:{free_port()}/tuf")
    updater = ModelUpdater(ModelStore(tmp_path / "d"), config, repo.root_bytes(1))
    assert updater.check().outcome == "unreachable"


def test_edge_config_for_updates_loads_a_partial_directory(device, repo, versions):
    repo.release(versions(1))
    updater = device()
    updater.check()
    with EdgeRuntime.from_model_dir(updater.store.current(), EdgeConfig(artifacts=("onnx-int8",))) as rt:
        assert rt.artifact.kind == "onnx-int8"


def test_errors_in_the_health_window_roll_back(device, repo, versions):
    import threading

    from sdk.errors import BackendError

    updater = installed_then(device, repo, versions)
    repo.release(versions(2))
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            with contextlib.suppress(BackendError):
                updater.runtime.predict(SAMPLE)

    def on_step(event, original=updater.reporter):
        original(event)
        if event["step"] == "installed" and event.get("installed_version") == 2:
            backend = updater.runtime.backend
            probe = read_probe(updater.store.current() / PROBE_FILE)["input"]
            run = backend.run

            def broken(x):  # fault injection: the new engine passes its probe and fails every live call
                if x.shape == probe.shape and np.array_equal(x, probe):
                    return run(x)
                raise BackendError("injected engine failure")

            errors = updater.runtime.local_errors
            backend.run = broken
            # The window opens once live traffic has met the new engine, however slowly the threads run.
            poll(lambda: updater.runtime.local_errors - errors >= 3, "live calls on the new engine")

    updater.reporter = on_step
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        outcome = updater.check()
    finally:
        stop.set()
        worker.join(PATIENCE_S)
    assert outcome.outcome == "rolled-back"
    assert "health window" in outcome.detail
    assert "calls failed" in outcome.detail  # the live error rate decided, not the probe
    assert updater.runtime.manifest.version == 1
    assert updater.runtime.predict(SAMPLE).model_version == 1


def test_a_notice_with_nothing_new_reads_the_timestamp_and_nothing_else(device, repo, versions):
    fetcher = CountingFetcher()
    repo.release(versions(1))
    updater = device(fetcher=fetcher)
    assert updater.check().outcome == "installed"

    fetcher.urls.clear()
    assert updater.check(reason="notice").outcome == "up-to-date"
    fetched = [url.rsplit("/", 1)[-1] for url in fetcher.urls]
    assert "timestamp.json" in fetched
    assert all(name == "timestamp.json" or name.endswith(".root.json") for name in fetched), fetched  # no index

    fetcher.urls.clear()
    assert updater.check().outcome == "up-to-date"  # a scheduled check still reads the signed index
    assert any(url.endswith("index.json") for url in fetcher.urls)

    repo.release(versions(2))
    fetcher.urls.clear()
    outcome = updater.check(reason="notice")  # a new timestamp: the notice's check goes all the way
    assert (outcome.outcome, outcome.version) == ("installed", 2)
