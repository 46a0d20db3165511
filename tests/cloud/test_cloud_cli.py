"""``fedge cloud worker`` and ``fedge cloud serve`` as the separate processes a platform team runs."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from waiting import PATIENCE_S, poll

from sdk.edge.cloud_client import CloudClient
from sdk.errors import CloudError
from sdk.mosquitto import free_port
from sdk.mqtt import MqttSettings

KEY = "cli-key-0123456789abcdef"


class Fedge:
    """``python -m sdk.cli ARGS`` in a child process, its output in a file."""

    def __init__(self, tmp_path, *args, env=None):
        self.log = tmp_path / f"fedge-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sdk.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout=60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(20)


def test_worker_process_answers_and_stops_on_sigterm(broker, model_dir, tmp_path):
    proc = Fedge(tmp_path, "cloud", "worker", "-m", str(model_dir), "--broker", broker.address, "--id", "cli-w1")
    try:
        with CloudClient(MqttSettings.from_address(broker.address), device_id="cli-device") as client:
            reply = _first_answer(client, proc)
        assert reply.source == "cloud:cli-w1"
    finally:
        assert proc.stop() == 0


def test_serve_process_guards_v1_with_keys_from_the_environment(model_dir, tmp_path):
    port = free_port()
    env = {"FEDGE_CLOUD__API_KEYS": KEY}
    proc = Fedge(tmp_path, "cloud", "serve", "-m", str(model_dir), "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.alive(), proc.output
                return False

        poll(healthy, "the server's /healthz", interval_s=0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": KEY}).json()[0]["name"] == "digits"
    finally:
        proc.stop()
    assert KEY not in proc.output


def test_serve_process_passes_its_http_limits_to_uvicorn(model_dir, tmp_path):
    port = free_port()
    env = {"FEDGE_CLOUD__LIMIT_CONCURRENCY": "2", "FEDGE_CLOUD__HEADER_TIMEOUT_S": "600"}
    proc = Fedge(tmp_path, "cloud", "serve", "-m", str(model_dir), "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"

    def health() -> int:
        try:
            return httpx.get(f"{url}/healthz", timeout=PATIENCE_S).status_code
        except httpx.TransportError:
            assert proc.alive(), proc.output
            return 0

    try:
        poll(lambda: health() == 200, "the server's /healthz", interval_s=0.2)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # two open connections: the limit
        try:
            poll(lambda: health() == 503, "503 at the concurrency limit")
        finally:
            for sock in idle:
                sock.close()
        poll(lambda: health() == 200, "served again below the limit")
    finally:
        proc.stop()


def test_short_api_keys_are_refused_at_start_without_echoing_them(model_dir, tmp_path):
    proc = Fedge(tmp_path, "cloud", "serve", "-m", str(model_dir), env={"FEDGE_CLOUD__API_KEYS": "tiny-secret"})
    assert proc.wait() == 2
    assert "cloud.api_keys" in proc.output
    assert "tiny-secret" not in proc.output


def test_a_bad_http_limit_is_refused_at_start_naming_the_key(model_dir, tmp_path):
    proc = Fedge(tmp_path, "cloud", "serve", "-m", str(model_dir), env={"FEDGE_CLOUD__BODY_TIMEOUT_S": "-1"})
    assert proc.wait() == 2
    assert "cloud.body_timeout_s" in proc.output


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_model_dir_is_required(command, tmp_path):
    proc = Fedge(tmp_path, "cloud", command)
    assert proc.wait() == 2
    assert "--model-dir" in proc.output


def _first_answer(client: CloudClient, proc: Fedge):
    def answered():
        try:
            return client.infer("digits", np.zeros((1, 8, 8), np.float32), timeout_s=1)
        except CloudError:
            assert proc.alive(), proc.output
            return None

    return poll(answered, "an answer from the worker process")


def test_worker_flags_reach_the_engine(broker, model_dir, tmp_path):
    args = ("cloud", "worker", "-m", str(model_dir), "--broker", broker.address, "--threads", "2", "--spin")
    proc = Fedge(tmp_path, *args)
    try:
        with CloudClient(MqttSettings.from_address(broker.address), device_id="flags-device") as client:
            _first_answer(client, proc)
    finally:
        assert proc.stop() == 0
    # What the loaded session reports, read back from ONNX Runtime (rich may wrap the line).
    assert re.search(r"engine:\s+2\s+thread\(s\),\s+spinning", proc.output), proc.output
