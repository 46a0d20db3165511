"""Session fixtures: a digits model trained once and exported by our own pipeline.

With ``FEDGE_TEST_MODELS`` set (the Python 3.10 edge run, which has no torch) the model and the split come
from that folder, which ``python -m reference_model`` filled in the main venv, and nothing here imports torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import reference_model
from waiting import PATIENCE_S

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PREBUILT = os.environ.get(reference_model.ENV_VAR)


@pytest.fixture(scope="session")
def digits_split():
    if PREBUILT:
        return reference_model.load_split(Path(PREBUILT) / reference_model.SPLIT_FILE)
    from federation.task import load_split

    return load_split(0)


@pytest.fixture(scope="session")
def digits_model(digits_split):
    return reference_model.train(digits_split)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, request) -> Path:
    """The device tier: a small CNN pruned (50%), with fp32 ONNX, int8 ONNX and int8 LiteRT artifacts."""
    out = tmp_path_factory.mktemp("models") / reference_model.MODEL_DIR
    if PREBUILT:
        return reference_model.copy_model(Path(PREBUILT), out)
    model, split = request.getfixturevalue("digits_model"), request.getfixturevalue("digits_split")
    return reference_model.build(model, split, out)


@pytest.fixture(scope="session")
def cloud_model_dir(tmp_path_factory, request) -> Path:
    """The cloud tier: a larger CNN, fp32 ONNX only, served under the device model's name."""
    out = tmp_path_factory.mktemp("models") / reference_model.CLOUD_MODEL_DIR
    if PREBUILT:
        return reference_model.copy_model(Path(PREBUILT), out, reference_model.CLOUD_MODEL_DIR)
    split = request.getfixturevalue("digits_split")
    return reference_model.build_cloud(reference_model.train_cloud(split), split, out)


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the model directory, for tests that damage it."""
    return Path(shutil.copytree(model_dir, tmp_path / "digits-v1"))


@pytest.fixture
def broker():
    """A private Mosquitto on a free loopback port (``set_tcp_nodelay true``); ``broker.restart()`` works."""
    from sdk.mosquitto import Mosquitto

    with Mosquitto() as running:
        yield running


@pytest.fixture(scope="module")
def module_broker():
    """One private Mosquitto shared by a test module."""
    from sdk.mosquitto import Mosquitto

    with Mosquitto() as running:
        yield running


@pytest.fixture(scope="module")
def service(model_dir):
    """The cloud's inference service on the model directory's fp32 artifact."""
    from sdk.cloud.inference import InferenceService

    svc = InferenceService.from_model_dir(model_dir)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def cloud(module_broker, service):
    """A broker with two inference workers sharing one subscription; ``cloud.settings`` reaches it."""
    from types import SimpleNamespace

    from sdk.cloud.worker import InferenceWorker
    from sdk.mqtt import MqttSettings

    settings = MqttSettings.from_address(module_broker.address)
    services = {service.name: service}
    workers = [
        InferenceWorker(services, settings, worker_id=f"w{i}", max_payload_bytes=256 * 1024).start() for i in range(2)
    ]
    yield SimpleNamespace(broker=module_broker, settings=settings, service=service, workers=workers)
    for worker in workers:
        worker.stop()


@pytest.fixture
def gated(monkeypatch):
    """Fault injection: hold a service's batches until the test opens ``svc.gate`` (a real model cannot stall).

    ``svc.busy`` is set while a batch is held or running; ``svc.close()`` opens the gate first.
    """
    import threading

    def apply(svc):
        run, close = svc.batcher._run, svc.close
        svc.busy = threading.Event()
        svc.gate = threading.Event()

        def held(x):
            svc.busy.set()
            try:
                if not svc.gate.wait(PATIENCE_S * 5):
                    raise RuntimeError("the test never opened the gate")
                return run(x)
            finally:
                svc.busy.clear()

        def open_then_close():
            svc.gate.set()
            close()

        monkeypatch.setattr(svc.batcher, "_run", held)
        monkeypatch.setattr(svc, "close", open_then_close)
        return svc

    return apply
