"""A worker's health and metrics port, and `fedge cloud worker` exiting non-zero when it cannot serve."""

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from waiting import PATIENCE_S, poll

from sdk.cloud.status_server import StatusServer
from sdk.cloud.worker import InferenceWorker
from sdk.edge.cloud_client import CloudClient
from sdk.mosquitto import free_port
from sdk.mqtt import MqttSettings

ROOT = Path(__file__).resolve().parents[2]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=PATIENCE_S) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_health_follows_the_broker_and_metrics_count_answers(broker, service):
    settings = MqttSettings.from_address(broker.address)
    worker = InferenceWorker({service.name: service}, settings)
    with StatusServer(lambda: worker.serving, worker.metrics) as status:
        assert get(status.port, "/healthz")[0] == 503  # not started yet
        with worker, CloudClient(settings, device_id="ops") as client:
            assert get(status.port, "/healthz")[0] == 200
            client.infer(service.name, np.zeros((1, 8, 8), np.float32), timeout_s=PATIENCE_S)
            code, text = get(status.port, "/metrics")
            assert code == 200
            assert f'fedge_requests_total{{model="{service.name}",outcome="ok",transport="mqtt"}} 1' in text
            assert "fedge_worker_dropped_total" in text
            broker.stop()
            poll(lambda: get(status.port, "/healthz")[0] == 503, "503 while the broker is down")
            broker.start()
            poll(lambda: get(status.port, "/healthz")[0] == 200, "200 once the worker subscribed again")
        assert get(status.port, "/nothing")[0] == 404


def test_fedge_cloud_worker_exits_non_zero_when_it_cannot_serve(broker, model_dir):
    port = free_port()
    command = [sys.executable, "-m", "sdk.cli", "cloud", "worker", "-m", str(model_dir), "--broker", broker.address]
    command += ["--metrics-port", str(port), "--unavailable-exit-s", "1"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: get(port, "/healthz")[0] == 200, "the worker process serving")
        broker.stop()
        assert proc.wait(PATIENCE_S) == 1
    finally:
        proc.kill()
        proc.wait()
