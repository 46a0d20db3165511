import numpy as np
import pytest

from sdk.cloud.batching import Batcher, BatcherConfig, BatchQueue, Pending
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
