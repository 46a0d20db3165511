"""Cloud fallback round trip: ``EdgeRuntime.predict`` in cloud-only mode against a raw paho MQTT v5 echo.

``python -m bench.fallback [--quick] [--json]``

Both paths run through the same private Mosquitto (``set_tcp_nodelay true``) with
QoS 1 requests, TCP_NODELAY on every client, and the same payload bytes (the wire-encoded
request of one sample); the echo answers at QoS 1, as a bare paho program does, a worker
at QoS 0, as Fedge's replies travel. The raw path is a bare paho requester and a bare paho echo
process that republishes each payload to its ResponseTopic with its CorrelationData,
both making their MQTT v5 properties with paho's own ``Properties``, as a bare paho
program does; ours is the device's CloudClient and a ``fedge cloud worker`` process with
its batcher and a trivial model. Server sides run in their own processes, as deployed;
calls alternate, so drift of the shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console

from bench.harness import Progress, command_line, figures_table, percentiles_us, ratio, start, wait_until
from bench.trivial import FEATURES, NAME, build_trivial_model_dir
from sdk import wire
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.cloud_client import CloudClient
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings, connect, make_client

__all__ = ["RawEcho", "main", "paho_properties", "run"]

TARGETS = {"rtt_ratio_p50": 1.5, "rtt_ratio_p99": 2.0}


def paho_properties(*, response_topic: str | None = None, correlation: bytes) -> Properties:
    """PUBLISH properties the way a bare paho program makes them (not Fedge's faster :func:`publish_properties`)."""
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


def echo_server(address: str) -> None:
    """Run a bare paho echo until killed: each payload goes back to its ResponseTopic with its CorrelationData."""
    settings = MqttSettings.from_address(address)
    client = make_client(settings, "bench-echo")

    def bounce(c: Any, userdata: Any, msg: Any) -> None:
        props = paho_properties(correlation=msg.properties.CorrelationData)
        c.publish(msg.properties.ResponseTopic, msg.payload, qos=1, properties=props)

    client.on_connect = lambda c, *a: c.subscribe("bench/echo", qos=1)
    client.on_message = bounce
    client.connect(settings.host, settings.port, clean_start=True)
    client.loop_forever()


class RawEcho:
    """A bare paho requester against the echo process: the floor under any MQTT request/response."""

    def __init__(self, settings: MqttSettings) -> None:
        self._got = threading.Event()
        self._requester = make_client(settings, "bench-requester")
        self._requester.on_connect = lambda c, *a: c.subscribe("bench/echo-replies", qos=1)
        self._requester.on_message = lambda *a: self._got.set()
        connect(self._requester, settings)

    def call(self, payload: bytes, timeout_s: float = 5.0) -> None:
        """One request/response round trip."""
        self._got.clear()
        props = paho_properties(response_topic="bench/echo-replies", correlation=b"0123456789abcdef")
        self._requester.publish("bench/echo", payload, qos=1, properties=props)
        if not self._got.wait(timeout_s):
            raise TimeoutError("the raw echo did not answer")

    def close(self) -> None:
        """Disconnect."""
        self._requester.disconnect()
        self._requester.loop_stop()


def run(rounds: int, warmup: int, step: Progress) -> dict[str, Any]:
    """Measure both round trips ``rounds`` times each; return the report."""
    started = time.perf_counter()
    x = np.linspace(-1, 1, FEATURES, dtype=np.float32)
    payload = wire.encode(wire.request(NAME, x[None], deadline_ms=5000.0))
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-fallback-"))
        broker = stack.enter_context(Mosquitto())
        step(f"broker on {broker.address}; building the trivial model")
        model_dir = build_trivial_model_dir(Path(tmp) / "trivial")
        settings = MqttSettings.from_address(broker.address)
        step("starting the echo process and a `fedge cloud worker` process")
        for proc in (
            start("-m", "bench.fallback", "--echo-server", broker.address),
            start("-m", "sdk.cli", "cloud", "worker", "-m", str(model_dir), "--broker", broker.address),
        ):
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
        raw = RawEcho(settings)
        stack.callback(raw.close)
        client = CloudClient(settings, device_id="bench-device").start(wait=True)
        config = EdgeConfig(fallback="cloud-only", model_name=NAME, deadline_ms=5000.0)
        rt = stack.enter_context(EdgeRuntime(None, config, cloud=client))
        wait_until(lambda: raw.call(payload, 0.5), "the echo process")
        wait_until(lambda: rt.predict(x[None]), "the worker process")
        np.testing.assert_array_equal(rt.predict(x[None]).outputs[0], x)
        calls = {"raw": lambda: raw.call(payload), "fedge": lambda: rt.predict(x[None])}
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        step(f"{rounds} round trips each, alternating")
        times: dict[str, list[float]] = {name: [] for name in calls}
        for r in range(rounds):
            order = list(calls) if r % 2 == 0 else list(reversed(calls))
            for name in order:
                t0 = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - t0)
    raw_p50, raw_p99 = percentiles_us(times["raw"], 50, 99)
    ours_p50, ours_p99 = percentiles_us(times["fedge"], 50, 99)
    report = {
        "rtt_ratio_p50": ratio(ours_p50, raw_p50),
        "rtt_ratio_p99": ratio(ours_p99, raw_p99),
        "fedge_p50_us": ours_p50,
        "fedge_p99_us": ours_p99,
        "raw_echo_p50_us": raw_p50,
        "raw_echo_p99_us": raw_p99,
        "payload_bytes": len(payload),
        "rounds": rounds,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    report["meets_targets"] = {k: report[k] <= v for k, v in TARGETS.items()}
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = ("rtt_ratio_p50", "rtt_ratio_p99", "fedge_p50_us", "fedge_p99_us", "raw_echo_p50_us", "raw_echo_p99_us")
    title = f"cloud fallback round trip, {report['payload_bytes']} B payload, {report['rounds']} rounds"
    console.print(figures_table(title, report, keys, {k: f"<= {v}" for k, v in TARGETS.items()}))


def _echo_mode(args: argparse.Namespace) -> bool:
    if args.echo_server:
        echo_server(args.echo_server)
        return True
    return False


main = command_line(
    "python -m bench.fallback",
    __doc__,
    quick_help="500 rounds instead of 5000",
    run=lambda args, step: run(500 if args.quick else 5000, 50 if args.quick else 200, step),
    render=render,
    arguments=lambda parser: parser.add_argument("--echo-server", metavar="HOST:PORT", help=argparse.SUPPRESS),
    before=_echo_mode,
)


if __name__ == "__main__":
    sys.exit(main())
