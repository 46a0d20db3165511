"""EdgeRuntime on real model files from our export pipeline, on both engines."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

from sdk.edge import BatchPrediction, EdgeConfig, EdgeRuntime, Prediction
from sdk.errors import BackendUnavailable, ModelNotFound

KINDS = [pytest.param(("onnx-int8",), id="onnx-int8"), pytest.param(("onnx-fp32",), id="onnx-fp32")]
KINDS.append(pytest.param(("tflite",), id="litert-int8"))


@pytest.mark.parametrize("artifacts", KINDS)
def test_accuracy_on_test_split_matches_manifest(model_dir, digits_split, artifacts):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=artifacts, max_batch_size=512)) as rt:
        result = rt.predict(digits_split.x_test)

        assert isinstance(result, BatchPrediction)
        acc = float((result.labels == digits_split.y_test).mean())
        assert acc == pytest.approx(rt.artifact.accuracy, abs=1e-9)
        assert acc > 0.95
        assert set(result.sources) == {"edge"}


def test_default_prefers_int8_onnx(model_dir):
    with EdgeRuntime.from_model_dir(model_dir) as rt:
        assert rt.artifact.kind == "onnx-int8"
        assert rt.backend.name == "onnxruntime"
        assert rt.backend.devices == ("CPUExecutionProvider",)


def test_single_sample_gives_typed_prediction(model_dir, digits_split):
    with EdgeRuntime.from_model_dir(model_dir) as rt:
        result = rt.predict(digits_split.x_test[0])

        assert isinstance(result, Prediction)
        assert result.outputs.shape == (10,)
        assert result.label == int(np.argmax(result.outputs))
        assert 0.0 < result.confidence <= 1.0
        assert result.source == "edge"
        assert result.model_version == 1
        assert result.latency_ms > 0


def test_batch_rows_equal_single_answers(model_dir, digits_split):
    x = digits_split.x_test[:7]
    with EdgeRuntime.from_model_dir(model_dir) as rt:
        batch = rt.predict(x)
        singles = [rt.predict(row) for row in x]

    assert len(batch) == 7
    for row, single in zip(batch, singles, strict=True):
        assert row.label == single.label
        np.testing.assert_allclose(row.outputs, single.outputs, atol=1e-5)


def test_outputs_equal_raw_onnxruntime(model_dir, digits_split):
    x = digits_split.x_test[:16]
    raw = ort.InferenceSession(str(model_dir / "model-int8.onnx"), providers=["CPUExecutionProvider"])
    expected = raw.run(None, {raw.get_inputs()[0].name: x})[0]

    with EdgeRuntime.from_model_dir(model_dir) as rt:
        np.testing.assert_allclose(rt.predict(x).outputs, expected, atol=1e-6)


@pytest.mark.parametrize("artifacts", KINDS)
def test_concurrent_calls_give_sequential_answers(model_dir, digits_split, artifacts):
    x = digits_split.x_test[:40]
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=artifacts, num_threads=1)) as rt:
        expected = [rt.predict(row).outputs for row in x]
        failures: list[str] = []

        def worker(offset: int) -> None:
            for i in range(len(x)):
                j = (i + offset) % len(x)
                got = rt.predict(x[j] if j % 3 else x[j : j + 1]).outputs
                got = got[0] if got.ndim == 2 else got
                if not np.allclose(got, expected[j], atol=1e-5):
                    failures.append(f"thread {offset} sample {j}")

        threads = [threading.Thread(target=worker, args=(k * 5,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert failures == []


THREADS_SCRIPT = """
import os, sys
import numpy as np
from sdk.edge import EdgeConfig, EdgeRuntime

def threads():
    return len(os.listdir("/proc/self/task"))

model_dir, kind = sys.argv[1:3]
for n in (1, 1, 3):  # the first runtime also starts the engine's process-wide threads
    before = threads()
    rt = EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=(kind,), num_threads=n))
    rt.predict(np.zeros((4, 1, 8, 8), np.float32))
    print(n, rt.num_threads, threads() - before)
    rt.close()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
@pytest.mark.parametrize("artifact", ["onnx-int8", "tflite"])
def test_num_threads_reaches_the_engine(model_dir, artifact):
    # In a fresh process, so that no other test's threads come or go while they are counted.
    proc = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT, str(model_dir), artifact], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    runs = [tuple(int(v) for v in line.split()) for line in proc.stdout.splitlines()]
    asked, reported, started = runs[-1]
    assert reported == asked == 3  # what the engine says it was built with
    assert started == 2  # and the pool it started: the calling thread plus two workers
    assert runs[1] == (1, 1, 0)  # one thread: no pool at all


def test_closed_runtime_refuses_calls(model_dir, digits_split):
    rt = EdgeRuntime.from_model_dir(model_dir)
    rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.predict(digits_split.x_test[0])


def test_unavailable_provider_is_a_typed_error(model_dir):
    with pytest.raises(BackendUnavailable, match=r"\['tensorrt'\] is available"):
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(providers=("tensorrt",), artifacts=("onnx-int8",)))


def test_provider_list_degrades_to_what_is_installed(model_dir):
    config = EdgeConfig(providers=("tensorrt", "cuda", "cpu"))
    with EdgeRuntime.from_model_dir(model_dir, config) as rt:
        assert rt.backend.devices == ("CPUExecutionProvider",)


def test_missing_litert_package_falls_back_or_fails_typed(model_dir, monkeypatch):
    # Fault injection: the LiteRT packages are installed here, so hide them to act out a device without them.
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(__import__("sys").modules, "tflite_runtime.interpreter", None)

    with pytest.raises(BackendUnavailable, match="LiteRT"):
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("tflite",)))
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("tflite", "onnx-int8"))) as rt:
        assert rt.artifact.kind == "onnx-int8"


def test_backend_filter_without_matching_artifact(model_dir):
    with pytest.raises(ModelNotFound, match="none of them allowed"):
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("tflite",), backend="onnxruntime"))


def test_swap_serves_the_new_model_without_failing_calls(model_dir, model_copy, digits_split):
    import json

    from sdk.edge import load_model

    data = json.loads((model_copy / "manifest.json").read_text())
    data["version"] = 2
    (model_copy / "manifest.json").write_text(json.dumps(data))
    x = digits_split.x_test[:8]
    errors: list[BaseException] = []
    stop = threading.Event()

    with EdgeRuntime.from_model_dir(model_dir) as rt:

        def hammer() -> None:
            while not stop.is_set():
                try:
                    rt.predict(x)
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(10):  # back and forth under load: no call may see a closed engine
            rt.swap(load_model(model_copy, rt.config))
            rt.swap(load_model(model_dir, rt.config))
        old = rt.swap(load_model(model_copy, rt.config))
        after = rt.predict(x[0])
        stop.set()
        for t in threads:
            t.join()

    assert errors == []
    assert old.version == 1
    assert after.model_version == 2
