import threading
import time

import numpy as np
import pytest

from sdk.cloud.batching import BatcherConfig
from sdk.cloud.inference import InferenceService, load_services
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.errors import DeadlineExceeded, InputShapeError, Overloaded


def test_batched_answers_equal_the_fp32_model_run_alone(service, model_dir, digits_split):
    x = digits_split.x_test[:16]
    barrier = threading.Barrier(16)
    results = [None] * 16

    def call(i):
        barrier.wait()
        future, single = service.submit(x[i])
        assert single
        results[i] = future.result(60)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as rt:
        expected = rt.predict(x).outputs
    np.testing.assert_allclose(np.stack(results), expected, rtol=1e-4, atol=1e-4)


def test_bad_shape_is_typed_and_immediate(service):
    with pytest.raises(InputShapeError):
        service.submit(np.zeros((3, 3), np.float32))


def test_full_queue_sheds_at_once_and_late_requests_are_dropped(model_dir, gated):
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=1, max_queue=2)))
    try:
        sample = np.zeros((1, 8, 8), np.float32)
        first, _ = svc.submit(sample)
        assert svc.busy.wait(60)  # the model has taken it and holds it until the gate opens
        queued = [svc.submit(sample, deadline_s=0.05)[0] for _ in range(2)]
        with pytest.raises(Overloaded):
            svc.submit(sample)
        time.sleep(0.1)  # a lower bound: the queued deadlines have passed, however slow the machine
        svc.gate.set()
        first.result(60)
        for future in queued:
            with pytest.raises(DeadlineExceeded):
                future.result(60)
    finally:
        svc.close()


def test_one_service_per_model_name(model_dir):
    with pytest.raises(ValueError, match="two model directories"):
        load_services([model_dir, model_dir])
