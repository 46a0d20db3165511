"""Updates that fit the device: its own target, the newest release that carries it, and no second try of a bad one.

Real parts: the signed repository behind the real cloud app, model versions from our export pipeline.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sdk.backends.ort import OnnxRuntimeBackend
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.updater import ModelUpdater, UpdateConfig, open_installed
from sdk.manifest import TensorSpec, load_manifest, load_probe

SAMPLE = np.zeros((1, 8, 8), np.float32)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL_KINDS = ("onnx-int8", "onnx-fp32", "tflite")


def serving(updater: ModelUpdater) -> ModelUpdater:
    """Give the updater a runtime that serves what the store holds, as the device program does at start."""
    updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    return updater


def steps_for(updater: ModelUpdater, version: int) -> list[str]:
    return [e["step"] for e in updater.events if version in (e.get("target_version"), e.get("installed_version"))]


def test_a_device_running_tflite_among_three_kinds_installs_and_serves_tflite(device, repo, versions):
    repo.release(versions(1))
    updater = device("pi-lite", update={"target": "tflite"}, edge_config=EdgeConfig(artifacts=ALL_KINDS))
    assert updater.check().outcome == "installed"
    serving(updater)
    assert updater.runtime.artifact.kind == "tflite"
    repo.release(versions(2))
    outcome = updater.check()
    assert (outcome.outcome, outcome.version) == ("installed", 2)
    assert updater.runtime.artifact.kind == "tflite"
    assert updater.runtime.predict(SAMPLE).model_version == 2
    files = {p.name for p in updater.store.current().iterdir()}
    assert files == {"manifest.json", "model.tflite", "probe.npz", "fetched.json"}


@pytest.mark.parametrize("example", ["raspberrypi", "jetson"])
def test_the_example_device_configs_install_updates(example, tmp_path, repo, server, versions):
    path = EXAMPLES / example / "fedge.toml"
    edge = EdgeConfig.load(path, env={})
    update = dataclasses.replace(
        UpdateConfig.load(path, env={}), repository_url=f"{server.url}/tuf", health_window_s=0.2
    )
    from sdk.edge.install import ModelStore

    updater = ModelUpdater(ModelStore(tmp_path / example), update, repo.root_bytes(1), edge_config=edge)
    repo.release(versions(1))
    assert updater.check().outcome == "installed"
    serving(updater)
    assert updater.runtime.artifact.kind == update.target
    repo.release(versions(2))
    assert updater.check().outcome == "installed"
    assert updater.runtime.predict(SAMPLE).model_version == 2


def test_a_newer_release_without_the_device_target_is_skipped_for_an_older_one_with_it(device, repo, versions):
    repo.release(versions(1))
    repo.release(versions(2), kinds=["onnx-int8"])
    index = {r["version"]: r["targets"] for r in repo_index(repo)}
    assert index == {1: sorted(ALL_KINDS), 2: ["onnx-int8"]}
    lite = device("pi-lite", update={"target": "tflite"}, edge_config=EdgeConfig(artifacts=("tflite",)))
    outcome = lite.check()
    assert (outcome.outcome, outcome.version) == ("installed", 1)
    assert lite.check().outcome == "up-to-date"
    assert not [e for e in lite.events if e["step"] == "rejected"]
    assert device("pi-int8").check().version == 2  # a device whose target v2 carries takes it


def repo_index(repo) -> list[dict]:
    """The release index the newest signed targets metadata points at."""
    from tuf.api.metadata import Metadata

    newest = max(repo.metadata_dir.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    digest = Metadata.from_file(str(newest)).signed.targets["digits/index.json"].hashes["sha256"]
    return json.loads((repo.targets_dir / "digits" / f"{digest}.index.json").read_text())["releases"]


def with_wrong_input_spec(model_dir: Path) -> Path:
    """A signed-looking release whose manifest promises flat 64-value samples; the engine takes (1, 8, 8)."""
    manifest = load_manifest(model_dir)
    flat = TensorSpec(name=manifest.input.name, shape=(None, 64), dtype=manifest.input.dtype)
    dataclasses.replace(manifest, inputs=(flat,)).write(model_dir)
    return model_dir


def test_an_engine_whose_input_differs_from_the_manifest_is_refused_before_the_swap_and_not_retried(
    device, repo, versions
):
    repo.release(versions(1))
    updater = device()
    updater.check()
    serving(updater)
    bad = with_wrong_input_spec(versions(2))
    # The old smoke test fed the probe to the engine directly, and it passes that way:
    probe = load_probe(bad, load_manifest(bad))
    with OnnxRuntimeBackend(bad / "model-int8.onnx") as engine:
        assert np.allclose(engine.run(probe["input"]), probe["expected/onnx-int8"], atol=1e-3)
    repo.release(bad)

    outcome = updater.check()
    assert outcome.outcome == "rejected"
    assert "ModelSignatureMismatch" in outcome.detail
    assert outcome.release == 2
    assert "installed" not in steps_for(updater, 2)  # never swapped in
    assert updater.runtime.predict(SAMPLE).model_version == 1
    memory = json.loads((updater.store.root / "update-memory.json").read_text())
    assert list(memory["refused"]) == ["2"]

    downloads = steps_for(updater, 2).count("downloading")
    assert updater.check().outcome == "up-to-date"  # remembered: not fetched again
    assert steps_for(updater, 2).count("downloading") == downloads

    assert updater.forget(2) == [2]  # an operator asks for one more try
    assert updater.check().outcome == "rejected"
    assert steps_for(updater, 2).count("downloading") == downloads + 1

    repo.release(versions(3))
    assert updater.check().version == 3
    assert updater.runtime.predict(SAMPLE).model_version == 3


def test_a_rolled_back_version_is_not_retried_until_a_newer_release(device, repo, versions, monkeypatch):
    import sdk.edge.updater as updater_module
    from sdk.errors import ModelIntegrityError

    repo.release(versions(1))
    updater = device()
    updater.check()
    serving(updater)
    repo.release(versions(2))

    def failing(model):  # fault injection: a real model does not fail its probe only after the swap
        raise ModelIntegrityError("injected: probe mismatch on the live model")

    monkeypatch.setattr(updater_module, "smoke_test", failing)
    assert updater.check().outcome == "rolled-back"
    monkeypatch.undo()  # v2 would pass now: only the memory keeps it out

    assert updater.check().outcome == "up-to-date"
    assert updater.runtime.predict(SAMPLE).model_version == 1
    rebooted = ModelUpdater(updater.store, updater.config, repo.root_bytes(1))  # the memory is on disk
    assert rebooted.check().outcome == "up-to-date"
    assert rebooted.installed_version == 1

    repo.release(versions(3))
    outcome = updater.check()
    assert (outcome.outcome, outcome.version) == ("installed", 3)
    assert updater.runtime.predict(SAMPLE).model_version == 3
