"""What the secured broker costs a cloud fallback, and what a stock broker (no ``set_tcp_nodelay``) costs.

``python -m bench.broker [--quick] [--json]``

Three private Mosquittos on loopback, each with its own ``fedge cloud worker`` process
serving a trivial model and its own device (``EdgeRuntime`` in cloud-only mode with a
``CloudClient``): the baseline ("plain": no TLS, anonymous, ``set_tcp_nodelay true``),
"tls" (a ``fedge broker init`` directory: TLS, accounts, the ACL) and "stock" (plain, but
without ``set_tcp_nodelay``, as a stock mosquitto.conf runs). Calls alternate between
the three in a balanced order, so drift of the shared machine falls on all alike.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.harness import Progress, balanced_order, command_line, figures_table, percentiles_us, ratio, wait_until
from bench.trivial import FEATURES, NAME, build_trivial_model_dir
from sdk.broker.acl import WORKER_ACCOUNT
from sdk.broker.layout import PASSWORD_ENV
from sdk.broker.provision import init_broker
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.cloud_client import CloudClient
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings

__all__ = ["main", "run"]

BROKERS = ("plain", "tls", "stock")
DEVICE = "bench-device"


def _worker(model_dir: Path, broker: Mosquitto, config: Path | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "sdk.cli", "cloud", "worker", "-m", str(model_dir), "--broker", broker.address]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=sys.stderr, stderr=sys.stderr)


def run(rounds: int, warmup: int, step: Progress) -> dict[str, Any]:
    """Time ``rounds`` fallback round trips through each broker; return the report."""
    started = time.perf_counter()
    x = np.linspace(-1, 1, FEATURES, dtype=np.float32)[None]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-broker-")))
        model_dir = build_trivial_model_dir(tmp / "trivial")
        layout = init_broker(tmp / "broker", devices=(DEVICE,))
        brokers = {
            "plain": Mosquitto(workdir=tmp / "plain"),
            "tls": Mosquitto(workdir=tmp / "tls", config_dir=layout.root),
            "stock": Mosquitto(workdir=tmp / "stock", tcp_nodelay=False),
        }
        runtimes = {}
        for name, broker in brokers.items():
            stack.enter_context(broker)
            secured = name == "tls"
            settings = layout.settings(DEVICE, broker.address) if secured else MqttSettings.from_address(broker.address)
            config = layout.client_config(WORKER_ACCOUNT) if secured else None
            env = {PASSWORD_ENV: layout.password(WORKER_ACCOUNT)} if secured else {}
            step(f"{name} broker on {broker.address}; starting its worker process")
            proc = _worker(model_dir, broker, config, env)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            client = CloudClient(settings, device_id=DEVICE).start(wait=True)
            edge = EdgeConfig(fallback="cloud-only", model_name=NAME, deadline_ms=5000.0)
            runtimes[name] = stack.enter_context(EdgeRuntime(None, edge, cloud=client))
        for name, rt in runtimes.items():
            wait_until(lambda rt=rt: rt.predict(x), f"the {name} worker")
            np.testing.assert_array_equal(rt.predict(x).outputs[0], x[0])
        for _ in range(warmup):
            for rt in runtimes.values():
                rt.predict(x)
        step(f"{rounds} round trips through each broker, alternating")
        times: dict[str, list[float]] = {name: [] for name in BROKERS}
        for r in range(rounds):
            for name in balanced_order(BROKERS, r):
                t0 = time.perf_counter()
                runtimes[name].predict(x)
                times[name].append(time.perf_counter() - t0)
    p = {name: percentiles_us(times[name], 50, 99) for name in BROKERS}
    report: dict[str, Any] = {
        "tls_ratio_p50": ratio(p["tls"][0], p["plain"][0]),
        "tls_ratio_p99": ratio(p["tls"][1], p["plain"][1]),
        "stock_ratio_p50": ratio(p["stock"][0], p["plain"][0]),
        "stock_ratio_p99": ratio(p["stock"][1], p["plain"][1]),
    }
    for name in BROKERS:
        report[f"{name}_p50_us"], report[f"{name}_p99_us"] = p[name]
    report.update(rounds=rounds, wall_s=round(time.perf_counter() - started, 1))
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = [k for k in report if k.endswith(("_ratio_p50", "_ratio_p99", "_us"))]
    title = f"cloud fallback round trip by broker (plain = nodelay, no TLS), {report['rounds']} rounds"
    console.print(figures_table(title, report, keys))


main = command_line(
    "python -m bench.broker",
    __doc__,
    quick_help="200 rounds instead of 2000",
    run=lambda args, step: run(200 if args.quick else 2000, 20 if args.quick else 100, step),
    render=render,
)


if __name__ == "__main__":
    sys.exit(main())
