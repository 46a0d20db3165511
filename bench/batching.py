"""Dynamic batching on a MobileNetV2-sized model: 64 concurrent clients against batch size 1 and the raw model.

``python -m bench.batching [--quick] [--json] [--cache-dir DIR | --no-cache]``

Three phases of the same duration on the fp32 artifact the cloud serves (ONNX Runtime
with the providers ``("cuda", "cpu")``: CPU here, CUDA where present): 64 client threads
submit one image each and wait, in a loop, to an ``InferenceService`` with
``max_batch_size = 1``, and to one with dynamic batching; and a bare
``InferenceSession.run`` back to back at the mean batch size the batcher chose in a
discarded warm-up phase, on the providers the service's session got and with its thread
settings. The phases alternate (``alternating``) so that drift of the shared machine
falls on all three; ``throughput_vs_batch1`` and ``throughput_vs_raw_batched`` are
ratios of their throughputs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.edge import raw_session
from bench.harness import Progress, alternating, command_line, figures_table, percentiles_us, ratio
from bench.mobilenet import MobileNetSpec, add_cache_arguments, chosen_cache_root, mobilenet_dir
from sdk.cloud.batching import BatcherConfig
from sdk.cloud.inference import InferenceService

__all__ = ["Phase", "main", "raw_throughput", "run", "serve_clients"]

TARGETS = {"throughput_vs_raw_batched": 0.8}
CLIENTS = 64
#: What ``InferenceService.from_model_dir`` is given, as in ``fedge cloud serve``.
PROVIDERS = ("cuda", "cpu")


@dataclass(frozen=True)
class Phase:
    """What one timed phase of clients against a service saw."""

    done: int
    seconds: float
    latencies_s: list[float]
    batch_sizes: list[int]


def serve_clients(service: InferenceService, images: np.ndarray, clients: int, seconds: float) -> Phase:
    """``clients`` threads call ``service`` in a loop for ``seconds``; return what they saw."""
    sizes: list[int] = []
    service.batcher.on_batch = sizes.append
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    start_line = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        image = images[i % len(images)]
        start_line.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            service.submit(image)[0].result(120)
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    done_in_window = sum(len(lat) for lat in latencies)
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join(120)
    service.batcher.on_batch = None
    return Phase(done_in_window, elapsed, [x for lat in latencies for x in lat], sizes)


def raw_throughput(run_raw: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Images per second of ``run_raw(batch)`` called back to back for ``seconds``."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run_raw(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - t0)


def summary(phases: list[Phase]) -> dict[str, Any]:
    """Throughput, latency percentiles and mean batch size over the rounds of one kind of phase."""
    latencies = [x for p in phases for x in p.latencies_s]
    sizes = [s for p in phases for s in p.batch_sizes]
    p50, p99 = percentiles_us(latencies, 50, 99)
    return {
        "throughput_per_s": round(sum(p.done for p in phases) / sum(p.seconds for p in phases), 2),
        "p50_ms": round(p50 / 1e3, 2),
        "p99_ms": round(p99 / 1e3, 2),
        "mean_batch": round(float(np.mean(sizes)), 2) if sizes else 0.0,
        "requests": len(latencies),
    }


def run(quick: bool, cache_root: Path | None, step: Progress) -> dict[str, Any]:
    """Build or reuse the MobileNetV2 model directory (None: a private build), alternate the phases, report."""
    spec = MobileNetSpec(calibration_samples=16 if quick else 64)
    seconds, rounds = (3.0, 2) if quick else (6.0, 4)
    images = spec.samples(CLIENTS, stream=4)
    configs = {"batch1": BatcherConfig(max_batch_size=1), "dynamic": BatcherConfig(max_batch_size=CLIENTS)}
    with contextlib.ExitStack() as stack:
        model_dir, cached = stack.enter_context(mobilenet_dir(spec, cache_root, step))
        step(f"MobileNetV2 model dir {'from cache' if cached else 'built'}: {model_dir}")
        services: dict[str, InferenceService] = {}
        for name, config in configs.items():
            services[name] = InferenceService.from_model_dir(model_dir, config, providers=PROVIDERS)
            stack.callback(services[name].close)
        step(f"warm-up (discarded): {CLIENTS} clients for {seconds:.0f} s, dynamic, to learn its batch size")
        chosen = max(1, round(summary([serve_clients(services["dynamic"], images, CLIENTS, seconds)])["mean_batch"]))
        model = services["dynamic"].model
        providers = model.backend.devices
        threads = model.backend.num_threads  # what the service's session was built with
        run_raw = raw_session(model.directory / model.artifact.file, num_threads=threads, providers=providers)
        run_raw(images[:chosen])

        def clients_phase(name: str) -> Callable[[], Phase]:
            def phase() -> Phase:
                step(f"{CLIENTS} clients for {seconds:.0f} s, {name} (max_batch_size {configs[name].max_batch_size})")
                return serve_clients(services[name], images, CLIENTS, seconds)

            return phase

        def raw_phase() -> float:
            step(f"raw InferenceSession.run at batch {chosen} for {seconds:.0f} s")
            return raw_throughput(run_raw, images[:chosen], seconds)

        results = alternating(
            {"batch1": clients_phase("batch1"), "dynamic": clients_phase("dynamic"), "raw": raw_phase}, rounds
        )
    phases = {name: summary(results[name]) for name in configs}
    raw = statistics.fmean(results["raw"])
    report: dict[str, Any] = {
        "throughput_vs_batch1": ratio(phases["dynamic"]["throughput_per_s"], phases["batch1"]["throughput_per_s"]),
        "throughput_vs_raw_batched": ratio(phases["dynamic"]["throughput_per_s"], raw),
        "raw_batched_throughput_per_s": round(raw, 2),
        "raw_batch_size": chosen,
        **{f"{phase}_{k}": v for phase, figures in phases.items() for k, v in figures.items()},
        "clients": CLIENTS,
        "phase_s": seconds,
        "rounds": rounds,
        "device": providers[0],
        "providers": list(providers),
        "intra_op_threads": threads,
        "cpu_count": os.cpu_count(),
        "quick": quick,
        "wall_s": round(time.time() - step.start, 1),
    }
    report["meets_targets"] = {k: report[k] >= v for k, v in TARGETS.items()}
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    numbers = [k for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    title = f"dynamic batching, MobileNetV2 fp32 on {report['device']}, {report['clients']} clients"
    console.print(figures_table(title, report, numbers, {"throughput_vs_raw_batched": ">= 0.8"}))


main = command_line(
    "python -m bench.batching",
    __doc__,
    quick_help="two rounds of 3 s phases instead of four rounds of 6 s",
    run=lambda args, step: run(args.quick, chosen_cache_root(args), step),
    render=render,
    arguments=add_cache_arguments,
)

if __name__ == "__main__":
    sys.exit(main())
