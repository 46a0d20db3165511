"""Many simulated devices on real MQTT connections against one, then two ``fedge cloud worker`` processes.

``python -m bench.load [--quick] [--json] [--devices N] [--seconds S] [--rate R] [--threads N] [--spin]``

Each device is its own paho client (its own client id, its own reply topic, a QoS 1 request with
ResponseTopic and CorrelationData), all of them on one :class:`sdk.mqtt_loop.SelectorLoop` in this
process. Every target gets two phases: a steady one, where each device sends at ``--rate``
requests per second from a random phase (the figures: error rate, answers/s, p50/p99), and a
saturated one, where each device sends its next request as soon as the last is answered (the
capacity, answers/s). The targets, in order: a bare paho echo process (the raw baseline: the same
devices, payload, broker and QoS, with no model and no worker), one worker, then two workers on
one shared subscription, serving the exported digits model. CPU time of the workers, the broker
and this process comes from ``/proc``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from rich.console import Console

from bench.fallback import RawEcho
from bench.harness import (
    Progress,
    command_line,
    figures_table,
    percentiles_us,
    process_cpu_s,
    ratio,
    start,
    wait_until,
)
from sdk import topics, wire
from sdk.edge.cloud_client import CloudClient
from sdk.errors import CloudError
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings, make_client, publish_properties
from sdk.mqtt_loop import SelectorLoop, raise_fd_limit

__all__ = ["Devices", "main", "run"]

MODEL = "digits"
ECHO_TOPIC = "bench/echo"  # where bench.fallback's echo process listens
DEADLINE_MS = 5000.0
TARGETS = {"error_rate": 0.0}


@dataclass
class Phase:
    """What one phase saw: requests sent, answers (their latencies), error answers by code, and lost requests."""

    name: str
    seconds: float
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    answered_in_window: int = 0
    lost: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The phase's figures."""
        failed = sum(self.errors.values()) + self.lost
        p50, p99 = percentiles_us(self.latencies_s, 50, 99) if self.latencies_s else (0.0, 0.0)
        out: dict[str, Any] = {
            "sent": self.sent,
            "answered": len(self.latencies_s),
            "errors": dict(self.errors),
            "lost": self.lost,
            "error_rate": round(failed / self.sent, 5) if self.sent else 0.0,
            "answers_per_s": round(self.answered_in_window / self.seconds, 1),
            "p50_ms": round(p50 / 1e3, 2),
            "p99_ms": round(p99 / 1e3, 2),
        }
        out |= {f"{who}_cpu_share": round(cpu / self.seconds, 3) for who, cpu in self.cpu_s.items()}
        workers_cpu = self.cpu_s.get("workers")
        if workers_cpu is not None and self.answered_in_window:
            out["worker_cpu_ms_per_answer"] = round(workers_cpu / self.answered_in_window * 1e3, 3)
        return out


class Devices:
    """``count`` simulated devices on one selector loop: each its own connection, client id and reply topic."""

    def __init__(self, loop: SelectorLoop, settings: MqttSettings, count: int, payload: bytes) -> None:
        self._loop = loop
        self._payload = payload
        self._lock = threading.Lock()
        self._subscribed: set[int] = set()
        self._pending: dict[bytes, tuple[int, float]] = {}
        self._phase: Phase | None = None
        self._open = False
        self._closed_loop = False
        self._topic = ECHO_TOPIC
        self._check: Callable[[bytes], str | None] = lambda payload: None
        self._seq = 0
        self._clients: list[mqtt.Client] = []
        self._replies: list[str] = []
        for i in range(count):
            device_id = f"load-{i}"
            reply_topic = topics.device_replies(device_id)
            client = make_client(settings, device_id)
            client.on_connect = lambda c, *a, t=reply_topic: c.subscribe(t, qos=1)
            client.on_subscribe = lambda *a, i=i: self._mark_subscribed(i)
            client.on_message = self._on_reply
            loop.add(client, settings)
            self._clients.append(client)
            self._replies.append(reply_topic)

    def subscribed(self) -> int:
        """How many devices the broker has confirmed the reply subscription of."""
        with self._lock:
            return len(self._subscribed)

    def steady(self, phase: Phase, topic: str, rate: float, check: Callable[[bytes], str | None]) -> Phase:
        """Each device sends ``rate`` requests/s from a random phase for ``phase.seconds``; then wait for stragglers."""
        period = 1.0 / rate
        self._begin(phase, topic, check, closed_loop=False)
        started = time.monotonic()

        def tick(i: int, k: int, offset: float) -> None:
            if not self._open or self._phase is not phase:  # this phase's schedule ends with it
                return
            self._send(i)
            due = started + offset + (k + 1) * period
            self._loop.call_later(due - time.monotonic(), lambda: tick(i, k + 1, offset))

        rng = random.Random(0)
        for i in range(len(self._clients)):
            offset = rng.uniform(0.0, period)
            self._loop.call_later(offset, lambda i=i, offset=offset: tick(i, 0, offset))
        return self._finish(phase)

    def saturate(self, phase: Phase, topic: str, check: Callable[[bytes], str | None]) -> Phase:
        """Each device sends its next request when the last is answered, for ``phase.seconds``."""
        self._begin(phase, topic, check, closed_loop=True)
        for i in range(len(self._clients)):
            self._loop.call_soon(lambda i=i: self._send(i))
        return self._finish(phase)

    def _begin(self, phase: Phase, topic: str, check: Callable[[bytes], str | None], *, closed_loop: bool) -> None:
        with self._lock:
            self._phase, self._topic, self._check = phase, topic, check
            self._closed_loop, self._open = closed_loop, True

    def _finish(self, phase: Phase) -> Phase:
        time.sleep(phase.seconds)
        with self._lock:
            self._open = False
        deadline = time.monotonic() + DEADLINE_MS / 1000.0 + 2.0
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.05)
        with self._lock:
            phase.lost = len(self._pending)
            self._pending.clear()
            self._phase = None
        return phase

    def _mark_subscribed(self, i: int) -> None:
        with self._lock:
            self._subscribed.add(i)

    def _send(self, i: int) -> None:
        with self._lock:
            if not self._open or self._phase is None:
                return
            self._seq += 1
            correlation = f"{i}:{self._seq}".encode()
            self._pending[correlation] = (i, time.perf_counter())
            self._phase.sent += 1
            topic = self._topic
        props = publish_properties(response_topic=self._replies[i], correlation=correlation)
        self._clients[i].publish(topic, self._payload, qos=1, properties=props)

    def _on_reply(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        correlation = getattr(msg.properties, "CorrelationData", None) or b""
        with self._lock:
            sent = self._pending.pop(correlation, None)
            phase = self._phase
            if sent is None or phase is None:
                return  # a straggler from a finished phase
            problem = self._check(msg.payload)
            if problem is None:
                phase.latencies_s.append(arrived - sent[1])
                if self._open:
                    phase.answered_in_window += 1
            else:
                phase.errors[problem] += 1
            again = self._open and self._closed_loop
        if again:
            self._send(sent[0])


def echo_check(payload: bytes) -> Callable[[bytes], str | None]:
    """The raw baseline's check: the echo returns the request's bytes."""
    return lambda got: None if got == payload else "garbled"


def reply_check(got: bytes) -> str | None:
    """A worker's answer: a reply, or the code of a typed error."""
    try:
        message = wire.decode(got)
    except Exception:  # a garbled answer counts as an error of the run, whatever the decoder raises
        return "undecodable"
    if message.kind == "reply":
        return None
    return message.error_code or message.kind


def wait_for_worker(settings: MqttSettings, worker_id: str, timeout_s: float = 120.0) -> None:
    """Probe until ``worker_id`` has answered a request (the broker then shares requests with it)."""
    x = np.zeros((1, 8, 8), np.float32)
    deadline = time.monotonic() + timeout_s
    with CloudClient(settings, device_id=f"probe-{worker_id}") as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(CloudError):
                if client.infer(MODEL, x, timeout_s=2.0).source == f"cloud:{worker_id}":
                    return
            time.sleep(0.02)
    raise TimeoutError(f"worker {worker_id} did not answer")


@contextlib.contextmanager
def digits_model_dir(model_dir: Path | None, step: Progress) -> Iterator[Path]:
    """``model_dir``, or the digits CNN trained and exported into a temporary directory."""
    if model_dir is not None:
        yield model_dir
        return
    from bench.edge import QUICK, build_digits

    with tempfile.TemporaryDirectory(prefix="fedge-bench-load-") as tmp:
        build_digits(Path(tmp) / "digits", QUICK, step)
        yield Path(tmp) / "digits"


@dataclass(frozen=True)
class Settings:
    """How hard the benchmark works and how the workers run."""

    devices: int
    seconds: float
    saturate_seconds: float
    rate: float
    threads: int
    spin: bool


def run(settings: Settings, step: Progress, model_dir: Path | None = None) -> dict[str, Any]:
    """Run every phase against the echo, one worker and two workers; return the report."""
    began = time.perf_counter()
    fd_limit = raise_fd_limit()  # before the broker starts: it inherits the limit and holds a socket per device
    x = np.zeros((1, 8, 8), np.float32)
    payload = wire.encode(wire.request(MODEL, x, deadline_ms=DEADLINE_MS))
    worker_flags = ["--threads", str(settings.threads), "--spin" if settings.spin else "--no-spin"]
    phases: dict[str, Phase] = {}
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(digits_model_dir(model_dir, step))
        broker = stack.enter_context(Mosquitto())
        mqtt_settings = MqttSettings.from_address(broker.address)
        pids: dict[str, list[int]] = {"broker": [broker.pid or 0], "workers": [], "devices": [os.getpid()]}

        def launch(*args: str) -> subprocess.Popen[bytes]:
            proc = start(*args)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            return proc

        step(f"broker on {broker.address}; {settings.devices} devices connecting (descriptor limit {fd_limit})")
        launch("-m", "bench.fallback", "--echo-server", broker.address)
        loop = stack.enter_context(SelectorLoop())
        devices = Devices(loop, mqtt_settings, settings.devices, payload)
        deadline = time.monotonic() + 120.0
        while devices.subscribed() < settings.devices:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {devices.subscribed()} of {settings.devices} devices subscribed")
            time.sleep(0.05)
        echo_probe = RawEcho(mqtt_settings)
        wait_until(lambda: echo_probe.call(payload, 0.5), "the echo process")
        echo_probe.close()

        def measured(name: str, body: Callable[[Phase], Phase], seconds: float) -> None:
            phase = Phase(name, seconds)
            before = {who: sum(process_cpu_s(p) for p in ps) for who, ps in pids.items() if ps}
            step(f"{name}: {seconds:.0f} s")
            body(phase)
            phase.cpu_s = {who: sum(process_cpu_s(p) for p in pids[who]) - cpu for who, cpu in before.items()}
            phases[name] = phase
            summary = phase.summary()
            step(
                f"{name}: {summary['answers_per_s']} answers/s, p50 {summary['p50_ms']} ms, "
                f"p99 {summary['p99_ms']} ms, error rate {summary['error_rate']}"
            )

        def both(prefix: str, topic: str, check: Callable[[bytes], str | None]) -> None:
            measured(
                f"{prefix}_steady",
                lambda ph: devices.steady(ph, topic, settings.rate, check),
                settings.seconds,
            )
            measured(f"{prefix}_saturated", lambda ph: devices.saturate(ph, topic, check), settings.saturate_seconds)

        infer_topic = topics.infer(MODEL)
        both("echo", ECHO_TOPIC, echo_check(payload))
        for n in (1, 2):
            worker_id = f"load-w{n}"
            step(f"starting worker {worker_id} ({' '.join(worker_flags)})")
            proc = launch(
                "-m", "sdk.cli", "cloud", "worker", "-m", str(directory), "--broker", broker.address,
                "--id", worker_id, *worker_flags,
            )  # fmt: skip
            pids["workers"].append(proc.pid)
            wait_for_worker(mqtt_settings, worker_id)
            both(f"workers{n}", infer_topic, reply_check)
    return report(settings, {name: phase.summary() for name, phase in phases.items()}, began)


def report(settings: Settings, phases: dict[str, dict[str, Any]], began: float) -> dict[str, Any]:
    """The figures, the ratios between phases and the targets."""
    one, two, echo = phases["workers1_steady"], phases["workers2_steady"], phases["echo_steady"]
    cap1, cap2 = phases["workers1_saturated"]["answers_per_s"], phases["workers2_saturated"]["answers_per_s"]
    cap_echo = phases["echo_saturated"]["answers_per_s"]
    out: dict[str, Any] = {
        "devices": settings.devices,
        "seconds": settings.seconds,
        "rate_per_device": settings.rate,
        "offered_rps": round(settings.devices * settings.rate, 1),
        "worker_threads": settings.threads,
        "worker_spinning": settings.spin,
        "error_rate": max(one["error_rate"], two["error_rate"]),
        "throughput_1w_rps": one["answers_per_s"],
        "throughput_2w_rps": two["answers_per_s"],
        "p50_1w_ms": one["p50_ms"],
        "p99_1w_ms": one["p99_ms"],
        "p50_2w_ms": two["p50_ms"],
        "p99_2w_ms": two["p99_ms"],
        "capacity_1w_rps": cap1,
        "capacity_2w_rps": cap2,
        "scaling_2w_over_1w": ratio(cap2, cap1) if cap1 else 0.0,
        "worker_cpu_ms_per_answer_1w": one.get("worker_cpu_ms_per_answer", 0.0),
        "broker_cpu_share": max(one.get("broker_cpu_share", 0.0), two.get("broker_cpu_share", 0.0)),
        "raw_echo_p50_ms": echo["p50_ms"],
        "raw_echo_p99_ms": echo["p99_ms"],
        "raw_echo_capacity_rps": cap_echo,
        "p50_ratio_vs_raw": ratio(one["p50_ms"], echo["p50_ms"]) if echo["p50_ms"] else 0.0,
        "p99_ratio_vs_raw": ratio(one["p99_ms"], echo["p99_ms"]) if echo["p99_ms"] else 0.0,
        "capacity_1w_vs_raw": ratio(cap1, cap_echo) if cap_echo else 0.0,
        "phases": phases,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    out["meets_targets"] = {"error_rate": out["error_rate"] <= TARGETS["error_rate"]}
    return out


KEYS = (
    "error_rate",
    "throughput_1w_rps",
    "throughput_2w_rps",
    "p50_1w_ms",
    "p99_1w_ms",
    "p50_2w_ms",
    "p99_2w_ms",
    "capacity_1w_rps",
    "capacity_2w_rps",
    "scaling_2w_over_1w",
    "worker_cpu_ms_per_answer_1w",
    "broker_cpu_share",
    "raw_echo_p50_ms",
    "raw_echo_p99_ms",
    "raw_echo_capacity_rps",
    "p50_ratio_vs_raw",
    "p99_ratio_vs_raw",
    "capacity_1w_vs_raw",
)


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    title = (
        f"{report['devices']} devices x {report['rate_per_device']} req/s for {report['seconds']:.0f} s "
        f"(workers: {report['worker_threads']} thread(s), spinning {report['worker_spinning']})"
    )
    console.print(figures_table(title, report, KEYS, {"error_rate": "0"}))


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, help="simulated devices (default 1000; --quick 300)")
    parser.add_argument("--seconds", type=float, help="steady phase length (default 60; --quick 10)")
    parser.add_argument("--rate", type=float, help="requests per second per device (default 0.2; --quick 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="the workers' --threads (default 1)")
    parser.add_argument("--spin", action="store_true", help="the workers' --spin (default --no-spin)")
    parser.add_argument("--model-dir", type=Path, help="an exported digits model (default: train and export one)")


def _settings(args: argparse.Namespace) -> Settings:
    quick = args.quick
    seconds = args.seconds or (10.0 if quick else 60.0)
    return Settings(
        devices=args.devices or (300 if quick else 1000),
        seconds=seconds,
        saturate_seconds=min(seconds, 5.0 if quick else 15.0),
        rate=args.rate or (0.5 if quick else 0.2),
        threads=args.threads,
        spin=args.spin,
    )


main = command_line(
    "python -m bench.load",
    __doc__,
    quick_help="300 devices, 10 s steady phases, 5 s saturated ones",
    run=lambda args, step: run(_settings(args), step, args.model_dir),
    render=render,
    arguments=_arguments,
)


if __name__ == "__main__":
    sys.exit(main())
