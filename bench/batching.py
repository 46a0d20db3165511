"""Dynamic batching on a MobileNetV2-sized model: 64 concurrent clients against batch size 1 and the raw model.

``python -m bench.batching [--quick] [--json] [--cache-dir DIR]``

Three phases in one run, on the fp32 artifact the cloud serves (ONNX Runtime, CPU
here, CUDA where present): 64 client threads submit one image each and wait, in a
loop, to an ``InferenceService`` with ``max_batch_size = 1`` and then with dynamic
batching; then the bare ``InferenceSession.run`` runs back-to-back at the mean batch
size the batcher chose. ``throughput_vs_batch1`` and ``throughput_vs_raw_batched``
are ratios of those throughputs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.harness import Progress, command_line, figures_table, percentiles_us, ratio
from sdk.cloud.batching import BatcherConfig
from sdk.cloud.inference import InferenceService

__all__ = ["main", "run", "serve_clients"]

TARGETS = {"throughput_vs_raw_batched": 0.8}
CLIENTS = 64


def serve_clients(service: InferenceService, images: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads call ``service`` in a loop for ``seconds``; return throughput, latencies, batch sizes."""
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
    flat = [x for lat in latencies for x in lat]
    p50, p99 = percentiles_us(flat, 50, 99)
    return {
        "throughput_per_s": round(done_in_window / elapsed, 2),
        "p50_ms": round(p50 / 1e3, 2),
        "p99_ms": round(p99 / 1e3, 2),
        "mean_batch": round(float(np.mean(sizes)), 2) if sizes else 0.0,
        "requests": len(flat),
    }


def raw_throughput(model_path: Path, batch: np.ndarray, seconds: float) -> float:
    """Images per second of a bare ``InferenceSession.run`` on ``batch`` back to back, same session options."""
    from bench.edge import raw_session

    run_raw = raw_session(model_path, num_threads=0)
    run_raw(batch)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run_raw(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - t0)


def run(quick: bool, cache_root: Path | None, step: Progress) -> dict[str, Any]:
    """Build or reuse the MobileNetV2 model directory, run the three phases, and return the report."""
    from bench.mobilenet import MobileNetSpec, cached_model_dir

    spec = MobileNetSpec(calibration_samples=16 if quick else 64)
    seconds = 6.0 if quick else 20.0
    model_dir, cached = cached_model_dir(spec, cache_root, step)
    step(f"MobileNetV2 model dir {'from cache' if cached else 'built'}: {model_dir}")
    images = spec.samples(CLIENTS, stream=4)
    phases: dict[str, dict[str, Any]] = {}
    for name, config in (
        ("batch1", BatcherConfig(max_batch_size=1)),
        ("dynamic", BatcherConfig(max_batch_size=CLIENTS)),
    ):
        service = InferenceService.from_model_dir(model_dir, config, providers=("cuda", "cpu"))
        try:
            step(f"{CLIENTS} clients for {seconds:.0f} s, {name} (max_batch_size {config.max_batch_size})")
            phases[name] = serve_clients(service, images, CLIENTS, seconds)
            device = service.model.backend.devices[0]
        finally:
            service.close()
    chosen = max(1, round(phases["dynamic"]["mean_batch"]))
    step(f"raw InferenceSession.run at batch {chosen} for {seconds / 2:.0f} s")
    raw = raw_throughput(model_dir / "model-fp32.onnx", images[:chosen], seconds / 2)
    report: dict[str, Any] = {
        "throughput_vs_batch1": ratio(phases["dynamic"]["throughput_per_s"], phases["batch1"]["throughput_per_s"]),
        "throughput_vs_raw_batched": ratio(phases["dynamic"]["throughput_per_s"], raw),
        "raw_batched_throughput_per_s": round(raw, 2),
        "raw_batch_size": chosen,
        **{f"{phase}_{k}": v for phase, figures in phases.items() for k, v in figures.items()},
        "clients": CLIENTS,
        "device": device,
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
    quick_help="6 s phases instead of 20 s",
    run=lambda args, step: run(args.quick, args.cache_dir, step),
    render=render,
    arguments=lambda parser: parser.add_argument("--cache-dir", type=Path, help="where MobileNetV2 dirs are kept"),
)

if __name__ == "__main__":
    sys.exit(main())
