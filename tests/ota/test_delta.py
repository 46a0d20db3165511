"""Delta updates: a device holding the release's parent fetches a signed patch, rebuilds and verifies the artifact.

The decision (which parent, patch or full file) and the rebuild are pure and tested as such; the rest runs
on a real signed repository served by uvicorn, through python-tuf, with devices counting what they fetch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import bsdiff4
import numpy as np
import pytest
from tuf.api.metadata import Metadata, TargetFile

from bench.ota import CountingFetcher
from bench.versions import fine_tuned
from sdk.delta import choose_parent, make_patch, patch_target, rebuild
from sdk.edge import EdgeRuntime
from sdk.edge.updater import open_installed
from sdk.errors import PatchUnusable
from sdk.manifest import load_manifest

SAMPLE = np.zeros((1, 8, 8), np.float32)
PATCH = patch_target("digits", "onnx-int8", 1, 2)


@pytest.fixture
def tuned(tmp_path, model_dir):
    """``tuned(2)`` -> version 2 of the model, its int8 weights moved as a short fine-tune moves them."""
    made: dict[tuple[int, int], Path] = {}

    def make(version: int, seed: int = 0) -> Path:
        if (version, seed) not in made:
            made[version, seed] = fine_tuned(model_dir, tmp_path / "tuned" / f"v{version}-{seed}", version, seed=seed)
        return made[version, seed]

    return make


def serving_v1(device, repo, versions):
    """A device on v1 from the repository, serving it, counting the bytes and files it fetches."""
    repo.release(versions(1))
    fetcher = CountingFetcher()
    updater = device(fetcher=fetcher)
    assert updater.check().outcome == "installed"
    updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    fetcher.bytes, fetcher.urls = 0, []
    return updater, fetcher


def newest_targets(repo):
    return Metadata.from_file(
        str(max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0])))
    )


def fetched(fetcher, suffix):
    return [u for u in fetcher.urls if u.endswith(suffix)]


def assert_serves_v2_built_as_signed(updater, outcome, release_dir):
    assert (outcome.outcome, outcome.version) == ("installed", 2), outcome
    assert updater.runtime.predict(SAMPLE).model_version == 2
    artifact = load_manifest(release_dir).artifacts["onnx-int8"]
    data = (updater.store.current() / artifact.file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == artifact.sha256
    assert not list(updater.store.current().glob("*.patch"))


# -- the decision and the rebuild (pure) ------------------------------------------------------------


def test_the_parent_is_the_newest_held_older_version_with_a_patch_smaller_than_the_artifact():
    assert choose_parent(5, [4, 3], {4: 10, 3: 10}, full_size=100) == 4
    assert choose_parent(5, [4, 3], {3: 10}, full_size=100) == 3  # no patch from 4: the one from 3
    assert choose_parent(5, [4, 3], {4: 100, 3: 10}, full_size=100) == 3  # a patch as big as the file is no gain
    assert choose_parent(5, [4], {}, full_size=100) is None  # no patch: the full file
    assert choose_parent(5, [], {4: 10}, full_size=100) is None  # no parent held: the full file
    assert choose_parent(5, [5, 6], {5: 10, 6: 10}, full_size=100) is None  # only older versions are parents


def test_rebuild_returns_only_the_signed_bytes():
    old = os.urandom(20_000)
    new = bytearray(old)
    new[100:110] = b"fine-tuned"
    new = bytes(new)
    patch = bsdiff4.diff(old, new)
    assert rebuild(old, patch, sha256=hashlib.sha256(new).hexdigest(), size=len(new)) == new
    with pytest.raises(PatchUnusable, match="sha256"):  # applied to another base: other bytes
        rebuild(os.urandom(20_000), patch, sha256=hashlib.sha256(new).hexdigest(), size=len(new))
    with pytest.raises(PatchUnusable, match="builds 20000 bytes"):  # the header's size, before any allocation
        rebuild(old, patch, sha256=hashlib.sha256(new).hexdigest(), size=len(new) + 1)
    with pytest.raises(PatchUnusable, match="not a bsdiff4 patch"):
        rebuild(old, b"junk" * 10, sha256="0" * 64, size=len(new))
    with pytest.raises(PatchUnusable, match="does not apply"):
        rebuild(old, patch[:-20], sha256=hashlib.sha256(new).hexdigest(), size=len(new))


def test_a_patch_is_made_only_when_it_saves_enough(tmp_path):
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "patch"
    old.write_bytes(os.urandom(20_000))
    new.write_bytes(old.read_bytes()[:5_000] + b"fine-tuned" + old.read_bytes()[5_010:])
    assert make_patch(old, new, out)
    assert out.stat().st_size < 2_000
    assert bsdiff4.patch(old.read_bytes(), out.read_bytes()) == new.read_bytes()
    new.write_bytes(os.urandom(20_000))  # nothing in common: the patch would be as big as the file
    assert not make_patch(old, new, out)
    assert not out.exists()


# -- the cloud signs patches ----------------------------------------------------------------------------


def test_a_release_signs_a_patch_per_artifact_kind_from_the_newest_release_not_aborted(repo, versions, tuned):
    repo.release(versions(1))
    release = repo.release(tuned(2))
    targets = newest_targets(repo)
    info = targets.signed.targets[PATCH]
    assert info.unrecognized_fields["custom"] == {
        "model": "digits",
        "version": 2,
        "channel": "stable",
        "rollout": 100,
        "kind": "patch",
        "state": "active",
        "artifact": "onnx-int8",
        "parent": 1,
    }
    assert info.length < 0.6 * load_manifest(tuned(2)).artifacts["onnx-int8"].size
    assert (repo.targets_dir / "digits" / "patches" / f"{info.hashes['sha256']}.onnx-int8-v1-to-v2.bsdiff").exists()
    assert {patch_target("digits", k, 1, 2) for k in ("onnx-fp32", "tflite")} <= set(targets.signed.targets)
    assert all("patches" not in path for path in release["files"].values())  # patches are no release files
    assert [r["version"] for r in repo.releases()] == [1, 2]

    repo.update_release("digits", 2, state="aborted")
    repo.release(tuned(3))
    targets = newest_targets(repo)
    assert patch_target("digits", "onnx-int8", 1, 3) in targets.signed.targets  # the aborted v2 is no parent
    assert patch_target("digits", "onnx-int8", 2, 3) not in targets.signed.targets


# -- devices ----------------------------------------------------------------------------------------------


def test_a_device_on_the_parent_fetches_the_patch_not_the_artifact(device, repo, versions, tuned):
    updater, fetcher = serving_v1(device, repo, versions)
    repo.release(tuned(2))
    outcome = updater.check()
    assert_serves_v2_built_as_signed(updater, outcome, tuned(2))
    assert len(fetched(fetcher, ".onnx-int8-v1-to-v2.bsdiff")) == 1
    assert fetched(fetcher, ".model-int8.onnx") == []  # the full artifact never came
    artifact_size = load_manifest(tuned(2)).artifacts["onnx-int8"].size
    assert fetcher.bytes < 0.6 * artifact_size  # everything this update fetched: metadata, manifest, probe, patch
    assert (updater.patches_applied, updater.patch_failures) == (1, 0)
    patched = [e for e in updater.events if e["step"] == "patched"]
    assert [(e["target_version"], e["parent"]) for e in patched] == [(2, 1)]


def test_a_signed_patch_that_does_not_rebuild_the_artifact_falls_back_to_the_full_file(device, repo, versions, tuned):
    updater, fetcher = serving_v1(device, repo, versions)
    repo.release(tuned(2))
    # Bytes changed after signing are refused by TUF before they are used (the next test); the fault here is a
    # patch the repository signed although it was made against another base (another fine-tune of v1), so it
    # passes TUF's length and hash checks and rebuilds bytes that are not v2's signed artifact.
    wrong_base = (tuned(3, seed=7) / "model-int8.onnx").read_bytes()
    patch = bsdiff4.diff(wrong_base, (tuned(2) / "model-int8.onnx").read_bytes())
    md = newest_targets(repo)
    info = TargetFile.from_data(PATCH, patch, ["sha256"])
    info.unrecognized_fields["custom"] = md.signed.targets[PATCH].unrecognized_fields["custom"]
    (repo.targets_dir / "digits" / "patches" / f"{info.hashes['sha256']}.onnx-int8-v1-to-v2.bsdiff").write_bytes(patch)
    md.signed.targets[PATCH] = info
    repo._publish(md)

    outcome = updater.check()
    assert_serves_v2_built_as_signed(updater, outcome, tuned(2))
    assert len(fetched(fetcher, ".onnx-int8-v1-to-v2.bsdiff")) == 1
    assert len(fetched(fetcher, ".model-int8.onnx")) == 1  # then the full file
    assert (updater.patches_applied, updater.patch_failures) == (0, 1)
    (failed,) = [e for e in updater.events if e["step"] == "patch-failed"]
    assert failed["parent"] == 1
    assert failed["reason"].startswith("PatchUnusable")
    assert 2 not in updater.memory.refused


@pytest.mark.parametrize("fault", ["tampered", "missing"])
def test_a_patch_that_fails_to_download_falls_back_to_the_full_file(device, repo, versions, tuned, fault):
    updater, fetcher = serving_v1(device, repo, versions)
    repo.release(tuned(2))
    (stored,) = (repo.targets_dir / "digits" / "patches").glob("*.onnx-int8-v1-to-v2.bsdiff")
    if fault == "tampered":
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))  # TUF refuses it on its signed hash
    else:
        stored.unlink()  # the server answers 404
    outcome = updater.check()
    assert_serves_v2_built_as_signed(updater, outcome, tuned(2))
    assert len(fetched(fetcher, ".model-int8.onnx")) == 1
    assert (updater.patches_applied, updater.patch_failures) == (0, 1)
    (failed,) = [e for e in updater.events if e["step"] == "patch-failed"]
    expected = "UpdateRejected" if fault == "tampered" else "RepositoryUnreachable"
    assert failed["reason"].startswith(expected)


def test_a_device_without_the_parent_fetches_the_full_file(device, repo, versions, tuned):
    repo.release(versions(1))
    repo.release(tuned(2))
    fetcher = CountingFetcher()
    fresh = device("pi-new", fetcher=fetcher)
    outcome = fresh.check()
    assert (outcome.outcome, outcome.version) == ("installed", 2)
    assert len(fetched(fetcher, ".model-int8.onnx")) == 1
    assert [u for u in fetcher.urls if "/patches/" in u] == []
    assert (fresh.patches_applied, fresh.patch_failures) == (0, 0)


def test_a_device_whose_parent_has_no_patch_fetches_the_full_file(device, repo, versions, tuned):
    updater, fetcher = serving_v1(device, repo, versions)
    repo.release(tuned(2), patches=False)
    outcome = updater.check()
    assert_serves_v2_built_as_signed(updater, outcome, tuned(2))
    assert len(fetched(fetcher, ".model-int8.onnx")) == 1
    assert (updater.patches_applied, updater.patch_failures) == (0, 0)
