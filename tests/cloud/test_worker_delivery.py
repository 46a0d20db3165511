"""At-least-once answers on a real Mosquitto: request ids de-duplicated, and what a SIGKILLed worker's requests become.

The SIGKILL tests run two real ``fedge cloud worker`` processes in one group: worker A
holds its requests in a batch (a 10 s queue delay, the batcher's longest) while B
answers at once; Mosquitto hands requests to A and B in turn.
"""

import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from peers import RawRequester, subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics, wire
from sdk.cloud.batching import BatcherConfig
from sdk.cloud.inference import InferenceService
from sdk.cloud.worker import InferenceWorker
from sdk.mosquitto import free_port
from sdk.mqtt import MqttSettings

ROOT = Path(__file__).resolve().parents[2]
X = np.zeros((1, 8, 8), np.float32)
DUPLICATES = "fedge_worker_duplicate_requests_total"


def test_a_repeated_request_id_is_answered_once_and_a_late_repeat_gets_the_same_reply(broker, model_dir, gated):
    settings = MqttSettings.from_address(broker.address)
    svc = gated(InferenceService.from_model_dir(model_dir, BatcherConfig(max_batch_size=1)))
    replies: list[tuple[bytes, bytes]] = []
    got = threading.Condition()

    def collect(client, userdata, msg):
        with got:
            replies.append((msg.properties.CorrelationData, msg.payload))
            got.notify_all()

    reply_topic = topics.device_replies("repeater")
    listener = subscribed_client(settings, reply_topic, collect)
    raw = RawRequester(settings)
    try:
        with InferenceWorker({svc.name: svc}, settings) as worker:
            request = wire.encode(wire.request(svc.name, X, id="once"))
            raw.send(topics.infer(svc.name), request, b"once", response_topic=reply_topic)
            assert svc.busy.wait(PATIENCE_S)  # the first one is in the batch
            raw.send(topics.infer(svc.name), request, b"once", response_topic=reply_topic)  # the device's retry
            poll(lambda: worker.metrics.value(DUPLICATES, state="in_flight") == 1, "the repeat seen as in flight")
            svc.gate.set()
            with got:
                assert got.wait_for(lambda: len(replies) == 1, PATIENCE_S)
            raw.send(topics.infer(svc.name), request, b"once", response_topic=reply_topic)  # a late repeat
            with got:
                assert got.wait_for(lambda: len(replies) == 2, PATIENCE_S)
            assert worker.metrics.value(DUPLICATES, state="answered") == 1
            assert worker.answered == 1  # the model ran once
    finally:
        raw.close()
        listener.disconnect()
        listener.loop_stop()
        svc.close()
    assert replies[0] == replies[1]
    assert wire.decode(replies[0][1]).kind == "reply"


def start_worker(broker, model_dir, processes, worker_id: str, *extra: str) -> int:
    """Start a ``fedge cloud worker`` process (kept in ``processes``) and return its health port once it serves."""
    port = free_port()
    command = [sys.executable, "-m", "sdk.cli", "cloud", "worker", "-m", str(model_dir), "--broker", broker.address]
    command += ["--id", worker_id, "--metrics-port", str(port), *extra]
    log = Path(broker.log_file).with_name(f"{worker_id}-{len(processes)}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    processes.append(proc)

    def serving() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"worker {worker_id} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        return healthy(port)

    poll(serving, f"worker {worker_id} serving")
    return port


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=PATIENCE_S) as answer:
            return answer.status == 200
    except OSError:
        return False


def queued(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=PATIENCE_S) as answer:
        lines = answer.read().decode().splitlines()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in lines if line.startswith("fedge_queue_depth{"))


HOLD = ("--max-queue-delay-ms", "10000", "--max-batch-size", "64")


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def kill_a_worker_holding_three(broker, model_dir, processes, raw, *session: str) -> tuple[list[bytes], list[bytes]]:
    """Start A (holding) and B (answering), send six requests, SIGKILL A; return the keys B answered and A held."""
    a_port = start_worker(broker, model_dir, processes, "wa", *HOLD, *session)
    start_worker(broker, model_dir, processes, "wb", *session)
    a = processes[-2]
    payload = wire.encode(wire.request("digits", X))
    keys = [raw.send(topics.infer("digits"), payload) for _ in range(6)]
    poll(lambda: queued(a_port) == 3, "A holding three requests in its batch")
    a.send_signal(signal.SIGKILL)
    a.wait()
    poll(lambda: sum(k in raw.replies for k in keys) == 3, "B answering its three")
    answered = [k for k in keys if k in raw.replies]
    assert {raw.replies[k].source for k in answered} == {"cloud:wb"}
    return answered, [k for k in keys if k not in raw.replies]


def test_clean_sessions_mosquitto_drops_the_killed_workers_requests_and_a_retry_reaches_the_survivor(
    broker, model_dir, processes
):
    raw = RawRequester(MqttSettings.from_address(broker.address))
    try:
        _, held = kill_a_worker_holding_three(broker, model_dir, processes, raw)
        for key in held:  # the device's one retry, same request id
            raw.send(topics.infer("digits"), wire.encode(wire.request("digits", X)), key)
        assert {raw.wait(k).source for k in held} == {"cloud:wb"}
    finally:
        raw.close()


def test_persistent_sessions_a_restarted_worker_answers_what_it_held_when_killed(broker, model_dir, processes):
    raw = RawRequester(MqttSettings.from_address(broker.address))
    try:
        session = ("--session-expiry-s", "60")
        _, held = kill_a_worker_holding_three(broker, model_dir, processes, raw, *session)
        start_worker(broker, model_dir, processes, "wa", *session)  # what a supervisor does; no retry sent
        assert {raw.wait(k).source for k in held} == {"cloud:wa"}  # acknowledged only after the reply: redelivered
    finally:
        raw.close()
