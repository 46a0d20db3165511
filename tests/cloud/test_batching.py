import threading

import numpy as np
import pytest
from waiting import PATIENCE_S

from sdk.cloud.batching import INLINE_MAX_S, Batcher, BatcherConfig, BatchQueue, Pending
from sdk.errors import DeadlineExceeded, Overloaded


def item(t, n=1, prio=0, deadline=None):
    return Pending(np.zeros((n, 2), np.float32), t, deadline, prio)


def test_size_trigger_closes_batch_before_delay():
    q = BatchQueue(BatcherConfig(max_batch_size=4, max_queue_delay_ms=100))
    for _ in range(4):
        q.push(item(0.0))
    assert len(q.decide(0.0).batch) == 4


def test_delay_trigger_waits_then_closes():
    q = BatchQueue(BatcherConfig(max_batch_size=4, max_queue_delay_ms=10))
    q.push(item(0.0))
    d = q.decide(0.005)
    assert d.batch == []
    assert d.wait_s == pytest.approx(0.005)
    assert len(q.decide(0.010).batch) == 1


def test_higher_priority_first():
    q = BatchQueue(BatcherConfig(max_batch_size=1, max_queue_delay_ms=0))
    low, high = item(0.0, prio=0), item(0.0, prio=1)
    q.push(low)
    q.push(high)
    assert q.decide(0.0).batch == [high]


def test_expired_dropped_before_compute():
    q = BatchQueue(BatcherConfig(max_batch_size=8, max_queue_delay_ms=0))
    old, ok = item(0.0, deadline=1.0), item(0.0)
    q.push(old)
    q.push(ok)
    d = q.decide(2.0)
    assert d.expired == [old]
    assert d.batch == [ok]


def test_full_queue_sheds_at_once():
    q = BatchQueue(BatcherConfig(max_queue=2))
    q.push(item(0.0))
    q.push(item(0.0))
    with pytest.raises(Overloaded):
        q.push(item(0.0))


def test_driver_splits_multi_sample_requests():
    b = Batcher(lambda x: x * 2, BatcherConfig(max_batch_size=8, max_queue_delay_ms=50))
    try:
        f1 = b.submit(np.ones((3, 2), np.float32))
        f2 = b.submit(np.full((2, 2), 5, np.float32))
        assert f1.result(10).shape == (3, 2)
        assert (f1.result() == 2).all()
        assert (f2.result(10) == 10).all()
    finally:
        b.close()


def test_driver_expired_request_fails_with_deadline():
    b = Batcher(lambda x: x, BatcherConfig(max_queue_delay_ms=0))
    try:
        with pytest.raises(DeadlineExceeded):
            b.submit(np.ones((1, 2), np.float32), deadline_s=-1.0).result(10)
    finally:
        b.close()


def test_only_a_lone_request_on_an_idle_queue_without_delay_may_leave_at_once():
    q = BatchQueue(BatcherConfig(max_batch_size=4, max_queue_delay_ms=0))
    assert q.takes_at_once(1, None, now=0.0)
    assert q.takes_at_once(1, 1.0, now=0.5)
    assert not q.takes_at_once(1, 1.0, now=1.0)  # expired: the queue fails it with its deadline
    assert not q.takes_at_once(5, None, now=0.0)  # more samples than a batch holds
    q.push(item(0.0))
    assert not q.takes_at_once(1, None, now=0.0)  # someone waits already: join the batch
    delayed = BatchQueue(BatcherConfig(max_queue_delay_ms=5))
    assert not delayed.takes_at_once(1, None, now=0.0)  # a configured delay asks for fuller batches


class FakeClock:
    """Time that moves only when the fake model says a run took so long."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def answer(b, x):
    """What a worker does: the outputs of a lone run on this thread, else of a submitted request."""
    out = b.run_alone(x)
    return b.submit(x).result(PATIENCE_S) if out is None else out


def test_a_quick_idle_model_answers_a_lone_request_on_the_callers_thread():
    clock, ran_on, sizes = FakeClock(), [], []

    def model(x):
        ran_on.append(threading.current_thread().name)
        return x * 2

    b = Batcher(model, BatcherConfig(), clock=clock, on_batch=sizes.append)
    try:
        assert b.run_alone(np.ones((1, 2), np.float32)) is None  # no run time known yet: submit it
        assert (b.submit(np.ones((1, 2), np.float32)).result(PATIENCE_S) == 2).all()
        assert ran_on == ["fedge-batcher"]
        assert (b.run_alone(np.ones((1, 2), np.float32)) == 2).all()  # the outputs themselves, no future
        b.submit(np.ones((1, 2), np.float32)).result(PATIENCE_S)  # submitted: the batcher's thread
        assert ran_on == ["fedge-batcher", threading.current_thread().name, "fedge-batcher"]
        assert sizes == [1, 1, 1]  # a lone run is counted as a batch of one
        assert b.run_alone(np.ones((1, 2), np.float32), deadline_s=-1.0) is None  # late: the queue fails it
    finally:
        b.close()


def test_a_model_that_fails_on_a_lone_run_raises_to_its_caller_and_the_next_request_is_served():
    clock, fail = FakeClock(), [False]

    def model(x):
        if fail[0]:
            raise RuntimeError("the engine failed")
        return x

    b = Batcher(model, BatcherConfig(), clock=clock)
    try:
        b.submit(np.ones((1, 2), np.float32)).result(PATIENCE_S)  # a quick run: lone runs from now on
        fail[0] = True
        with pytest.raises(RuntimeError, match="the engine failed"):
            b.run_alone(np.ones((1, 2), np.float32))
        fail[0] = False
        assert (b.run_alone(np.ones((1, 2), np.float32)) == 1).all()  # the model was freed
        assert (b.submit(np.ones((1, 2), np.float32)).result(PATIENCE_S) == 1).all()
    finally:
        b.close()


def test_a_slow_model_keeps_lone_requests_on_the_batchers_thread():
    clock, ran_on = FakeClock(), []

    def model(x):
        ran_on.append(threading.current_thread().name)
        clock.now += 10 * INLINE_MAX_S  # each run takes ten times the bound
        return x

    b = Batcher(model, BatcherConfig(), clock=clock)
    try:
        for _ in range(3):
            answer(b, np.ones((1, 2), np.float32))
        assert ran_on == ["fedge-batcher"] * 3
    finally:
        b.close()


def test_requests_that_come_while_a_lone_run_holds_the_model_leave_together_next():
    clock, sizes, started, gate = FakeClock(), [], threading.Event(), threading.Event()
    b = Batcher(lambda x: x, BatcherConfig(), clock=clock, on_batch=sizes.append)
    try:
        b.submit(np.ones((1, 2), np.float32)).result(PATIENCE_S)  # a quick run: lone runs from now on

        def held(x):
            started.set()
            assert gate.wait(PATIENCE_S)
            return x

        b._run = held  # fault injection: hold the model while the caller's thread runs it
        caller = threading.Thread(target=lambda: b.run_alone(np.ones((1, 2), np.float32)))
        caller.start()
        assert started.wait(PATIENCE_S)
        b._run = lambda x: x
        assert b.run_alone(np.ones((1, 2), np.float32)) is None  # the model is busy: submit it
        waiting = [b.submit(np.ones((1, 2), np.float32)) for _ in range(3)]
        assert not any(f.done() for f in waiting)  # none ran beside the held run
        assert b.depth() == 3
        gate.set()
        caller.join(PATIENCE_S)
        for f in waiting:
            f.result(PATIENCE_S)
        assert sizes == [1, 1, 3]
    finally:
        gate.set()
        b.close()
