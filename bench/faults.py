"""Faults under load: a worker SIGKILLed, the broker restarted, poisoned requests; counts, not ratios.

``python -m bench.faults [--quick] [--json]``

Everything is real: a private Mosquitto, ``fedge cloud worker`` processes serving a
trivial model in one shared-subscription group, and devices' CloudClients (default
breaker) calling steadily from threads. There is no raw baseline to divide by: the
figures are counts of calls and a time window.

- worker SIGKILL: two workers, one SIGKILLed halfway; calls sent, answered, lost, and
  answered by the survivor after the kill.
- broker restart: Mosquitto stopped and started again (30 ms down);
  ``broker_restart_failure_window_s`` is the time from the first to the last failed call.
- poison: K requests of each poisoned kind to the live workers, then every worker must
  still answer (``workers_still_serving`` of ``workers``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.harness import Progress, command_line, figures_table, start, wait_until
from bench.trivial import FEATURES, NAME, build_trivial_model_dir
from sdk import topics, wire
from sdk.edge.cloud_client import CloudClient
from sdk.errors import CloudError
from sdk.mosquitto import Mosquitto, free_port
from sdk.mqtt import MqttSettings, connect, make_client, publish_properties

__all__ = ["main", "run"]

TARGETS = {"broker_restart_failure_window_s": 1.0}
CALL_TIMEOUT_S = 1.0


class Devices:
    """``n`` devices calling the cloud steadily from threads; each call's outcome, source and time is kept."""

    def __init__(self, settings: MqttSettings, n: int, tag: str) -> None:
        self.clients = [CloudClient(settings, device_id=f"{tag}-{i}").start(wait=True) for i in range(n)]
        self.calls: list[tuple[float, bool, str]] = []  # (when, answered, source)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(c,), daemon=True) for c in self.clients]
        self._x = np.linspace(-1, 1, FEATURES, dtype=np.float32)[None]

    def _call(self, client: CloudClient) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                source = client.infer(NAME, self._x, timeout_s=CALL_TIMEOUT_S).source
                ok = True
            except CloudError:
                source, ok = "", False
            with self._lock:
                self.calls.append((started, ok, source))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))  # about 50 calls/s per device

    def run_for(self, seconds: float, midway: Callable[[], None]) -> float:
        """Call for ``seconds`` and run ``midway`` halfway; return when ``midway`` started (monotonic)."""
        for t in self._threads:
            t.start()
        time.sleep(seconds / 2)
        at = time.monotonic()
        midway()
        time.sleep(seconds / 2)
        self._stop.set()
        for t in self._threads:
            t.join(CALL_TIMEOUT_S * 5)
        return at

    def close(self) -> None:
        """Disconnect every device."""
        for client in self.clients:
            client.close()


class Workers:
    """``fedge cloud worker`` processes on one broker, each with its health port."""

    def __init__(self, model_dir: Path, address: str, stack: contextlib.ExitStack) -> None:
        self.model_dir, self.address, self.stack = model_dir, address, stack
        self.procs: dict[str, Any] = {}

    def start(self, worker_id: str) -> None:
        """Start one and wait until it serves."""
        port = free_port()
        proc = start(
            "-m", "sdk.cli", "cloud", "worker", "-m", str(self.model_dir), "--broker", self.address,
            "--id", worker_id, "--metrics-port", str(port),
        )  # fmt: skip
        self.stack.callback(proc.wait, 10)
        self.stack.callback(proc.kill)
        self.procs[worker_id] = proc
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2), worker_id)

    def kill(self, worker_id: str) -> None:
        """SIGKILL one."""
        proc = self.procs.pop(worker_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def by_hand(header: dict[str, Any], body: bytes = b"") -> bytes:
    """A payload with a header no encoder writes."""
    raw = json.dumps(header).encode()
    return struct.pack("<3sBI", wire.MAGIC, wire.VERSION, len(raw)) + raw + body


def poisons(reply_topic: str) -> dict[str, tuple[bytes, str, bytes]]:
    """Each poisoned kind: (payload, ResponseTopic, CorrelationData)."""
    good = wire.encode(wire.request(NAME, np.zeros((1, FEATURES), np.float32)))
    huge = {
        "kind": "request",
        "id": "p",
        "model": NAME,
        "tensors": [{"name": "x", "dtype": "float32", "shape": [0, 2**62]}],
    }
    return {
        "zero_by_huge_shape": (by_hand(huge), reply_topic, b"p"),
        "wildcard_response_topic": (good, "fedge/v1/devices/x/#", b"p"),
        "non_utf8_correlation": (good, reply_topic, b"\xff\xfe\x00\x80"),
        "truncated_payload": (good[:-7], reply_topic, b"p"),
        "wrong_kind": (wire.encode(wire.error_reply("p", "internal", "?")), reply_topic, b"p"),
        "random_bytes": (os.urandom(256), reply_topic, b"p"),
    }


def send_poison(settings: MqttSettings, per_kind: int) -> int:
    """Publish ``per_kind`` requests of each poisoned kind at QoS 1; return how many went out."""
    client = make_client(settings, "bench-poisoner")
    connect(client, settings)
    sent = 0
    try:
        for payload, reply_topic, correlation in poisons(topics.device_replies("bench-poisoner")).values():
            props = publish_properties(response_topic=reply_topic, correlation=correlation)
            for _ in range(per_kind):
                client.publish(topics.infer(NAME), payload, qos=1, properties=props).wait_for_publish(10)
                sent += 1
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


def serving_workers(settings: MqttSettings, workers: int) -> int:
    """How many distinct workers answer 8 calls per worker from a fresh device."""
    x = np.zeros((1, FEATURES), np.float32)
    sources: set[str] = set()
    with CloudClient(settings, device_id="bench-prober") as client:
        for _ in range(8 * workers):
            with contextlib.suppress(CloudError):
                sources.add(client.infer(NAME, x, timeout_s=5.0).source)
    return len(sources)


def _answered(settings: MqttSettings) -> None:
    if not serving_workers(settings, 1):
        raise CloudError("no worker answered")


def run(devices: int, seconds: float, per_kind: int, step: Progress) -> dict[str, Any]:
    """Run the three faults; return the report."""
    started = time.perf_counter()
    report: dict[str, Any] = {"devices": devices, "seconds_per_phase": seconds, "call_timeout_s": CALL_TIMEOUT_S}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-faults-"))
        broker = stack.enter_context(Mosquitto())
        settings = MqttSettings.from_address(broker.address)
        model_dir = build_trivial_model_dir(Path(tmp) / "trivial")
        workers = Workers(model_dir, broker.address, stack)
        step("starting two worker processes")
        workers.start("w1")
        workers.start("w2")

        step(f"worker SIGKILL: {devices} devices for {seconds} s, w1 killed halfway")
        load = Devices(settings, devices, "kill")
        killed_at = load.run_for(seconds, lambda: workers.kill("w1"))
        load.close()
        calls = load.calls
        report["sigkill_calls"] = len(calls)
        report["sigkill_answered"] = sum(ok for _, ok, _ in calls)
        report["sigkill_lost"] = sum(not ok for _, ok, _ in calls)
        report["sigkill_answered_by_survivor_after_kill"] = sum(
            ok and source == "cloud:w2" for when, ok, source in calls if when >= killed_at
        )
        report["sigkill_calls_after_kill"] = sum(when >= killed_at for when, _, _ in calls)

        workers.start("w3")
        step(f"broker restart: {devices} devices for {seconds} s, Mosquitto down 30 ms halfway")
        load = Devices(settings, devices, "restart")
        load.run_for(seconds, lambda: broker.restart(down_for=0.03))
        load.close()
        failed = sorted(when for when, ok, _ in load.calls if not ok)
        report["restart_calls"] = len(load.calls)
        report["restart_failed_calls"] = len(failed)
        report["broker_restart_failure_window_s"] = round(failed[-1] - failed[0], 3) if failed else 0.0

        step(f"poison: {per_kind} of each kind, then every worker must answer")
        wait_until(lambda: _answered(settings), "an answer after the restart")
        report["poisoned_sent"] = send_poison(settings, per_kind)
        report["workers"] = len(workers.procs)
        report["workers_still_serving"] = serving_workers(settings, len(workers.procs))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["meets_targets"] = {
        "broker_restart_failure_window_s": report["broker_restart_failure_window_s"]
        <= TARGETS["broker_restart_failure_window_s"],
        "workers_still_serving": report["workers_still_serving"] == report["workers"],
    }
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = (
        "sigkill_calls", "sigkill_answered", "sigkill_lost", "sigkill_calls_after_kill",
        "sigkill_answered_by_survivor_after_kill", "restart_calls", "restart_failed_calls",
        "broker_restart_failure_window_s", "poisoned_sent", "workers", "workers_still_serving",
    )  # fmt: skip
    targets = {"broker_restart_failure_window_s": "<= 1.0", "workers_still_serving": "= workers"}
    title = f"faults under load, {report['devices']} devices, {report['seconds_per_phase']} s per phase"
    console.print(figures_table(title, report, keys, targets))


main = command_line(
    "python -m bench.faults",
    __doc__,
    quick_help="4 devices, 3 s phases, 5 poisons of each kind (instead of 20, 10 s, 50)",
    run=lambda args, step: run(4 if args.quick else 20, 3.0 if args.quick else 10.0, 5 if args.quick else 50, step),
    render=render,
)


if __name__ == "__main__":
    sys.exit(main())
