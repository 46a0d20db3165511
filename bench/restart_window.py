"""Calls that fail around a short broker restart: steady calls from a few devices, one ``Mosquitto.restart``.

``python -m bench.restart_window [--rounds 3] [--clients 4] [--rate 50] [--json]``
(to measure another tree's ``sdk``, put that tree first on ``PYTHONPATH`` and run this file with ``runpy.run_path``)

``--clients`` ``CloudClient``s call one inference worker (in this process, a trivial model) at
``--rate`` calls/s in all, each call with the device's default 300 ms deadline. After 2 s the broker
restarts (``down_for=0.03``); the calls go on for 6 s more. ``failure_window_s`` is the time
from the restart to the end of the last failed call; ``failed`` counts the failed calls, by kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter

import numpy as np

from bench.trivial import FEATURES, build_trivial_model_dir
from sdk.cloud.inference import InferenceService
from sdk.cloud.worker import InferenceWorker
from sdk.edge.cloud_client import CloudClient
from sdk.errors import CloudError
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings

DEADLINE_S = 0.3
BEFORE_S = 2.0
AFTER_S = 6.0


def kind(exc: CloudError) -> str:
    """A short name for why a call failed."""
    text = str(exc)
    for key in ("circuit open", "not connected", "lost the broker", "network thread", "no answer"):
        if key in text:
            return key
    return type(exc).__name__


def one_round(service: InferenceService, clients_n: int, rate: float) -> dict:
    """One restart under steady calls: failed calls, by kind, and the failure window."""
    with Mosquitto() as broker:
        settings = MqttSettings.from_address(broker.address)
        worker = InferenceWorker({service.name: service}, settings, worker_id="w-restart").start()
        clients = [CloudClient(settings, device_id=f"restart-{i}").start(wait=True) for i in range(clients_n)]
        x = np.zeros((1, FEATURES), np.float32)
        outcomes: list[tuple[float, float, str]] = []  # (started, ended, "ok" or why)
        lock = threading.Lock()
        stop = threading.Event()

        def calls(client: CloudClient) -> None:
            period = clients_n / rate
            next_at = time.monotonic()
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.infer(service.name, x, timeout_s=DEADLINE_S)
                    what = "ok"
                except CloudError as exc:
                    what = kind(exc)
                with lock:
                    outcomes.append((started, time.monotonic(), what))
                next_at += period
                stop.wait(max(0.0, next_at - time.monotonic()))

        threads = [threading.Thread(target=calls, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        time.sleep(BEFORE_S)
        restart_at = time.monotonic()
        broker.restart(down_for=0.03)
        time.sleep(AFTER_S)
        stop.set()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        worker.stop()
    failed = [(s, e, w) for s, e, w in outcomes if w != "ok"]
    window = max((e for _, e, _ in failed), default=restart_at) - restart_at
    return {
        "calls": len(outcomes),
        "failed": len(failed),
        "failed_by_kind": dict(Counter(w for _, _, w in failed)),
        "failure_window_s": round(max(0.0, window), 3),
    }


def main() -> int:
    """Measure ``--rounds`` restarts and print each and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="calls per second, all clients together")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        service = InferenceService.from_model_dir(build_trivial_model_dir(tmp))
        try:
            rounds = []
            for i in range(args.rounds):
                rounds.append(one_round(service, args.clients, args.rate))
                print(f"round {i + 1}: {rounds[-1]}", file=sys.stderr, flush=True)
        finally:
            service.close()
    report = {
        "clients": args.clients,
        "rate": args.rate,
        "rounds": rounds,
        "median_failed": statistics.median(r["failed"] for r in rounds),
        "median_failure_window_s": statistics.median(r["failure_window_s"] for r in rounds),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
