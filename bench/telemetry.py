"""Telemetry's cost on the predict path: a runtime that counts every call against one that does not.

``python -m bench.telemetry [--quick] [--json]``

Both runtimes serve the trivial model (one Identity node, :mod:`bench.trivial`), so the
SDK's fixed cost per call is all there is and counting shows at its largest; a bare ONNX
Runtime session on the same file is the raw baseline. Every latency is the median of single
calls on one thread, the three called in a new random order every round
(:func:`bench.harness.interleaved_medians`). ``telemetry_overhead_ratio`` divides the
counting runtime's median by the other's; ``record_us`` is the median cost of one
:meth:`~sdk.edge.telemetry.Telemetry.record` call alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.edge import raw_session
from bench.harness import Progress, command_line, figures_table, interleaved_medians, ratio
from bench.trivial import FEATURES, build_trivial_model_dir
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.telemetry import Telemetry

__all__ = ["TARGETS", "main", "run"]

#: Upper bounds the headline figures should stay within.
TARGETS: dict[str, float] = {"telemetry_overhead_ratio": 1.10}  # on a model that costs nothing: the worst case


def run(rounds: int, warmup: int, step: Progress) -> dict[str, Any]:
    """Time predict with and without telemetry, a bare session, and ``Telemetry.record`` alone; report."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_trivial_model_dir(Path(tmp) / "trivial")
        config = EdgeConfig(artifacts=("onnx-fp32",), num_threads=1)
        telemetry, alone = Telemetry(), Telemetry()
        sample = np.random.default_rng(0).random(FEATURES, dtype=np.float32)  # one sample, as a sensor gives
        batch = sample[None]
        with (
            EdgeRuntime.from_model_dir(model_dir, config) as bare,
            EdgeRuntime.from_model_dir(model_dir, config, telemetry=telemetry) as counted,
        ):
            session = raw_session(model_dir / bare.artifact.file)
            step(f"timing {rounds} rounds of predict without and with telemetry, and a bare session")
            us = interleaved_medians(
                {
                    "predict": lambda: bare.predict(sample),
                    "predict_telemetry": lambda: counted.predict(sample),
                    "raw": lambda: session(batch),
                    "record": lambda: alone.record(1, 0.05, confidence_sum=0.9, confident_rows=1),
                },
                rounds,
                warmup,
            )
        (counted_entry,) = telemetry.take()["versions"]
    report: dict[str, Any] = {
        "telemetry_overhead_ratio": ratio(us["predict_telemetry"], us["predict"]),
        "telemetry_overhead_us": round(us["predict_telemetry"] - us["predict"], 2),
        "record_us": round(us["record"], 2),
        "sdk_overhead_ratio_trivial": ratio(us["predict"], us["raw"]),
        "median_us": {k: round(v, 2) for k, v in sorted(us.items())},
        "counted_calls": counted_entry["calls"],
        "rounds": rounds,
    }
    report["meets_targets"] = {k: report[k] <= v for k, v in TARGETS.items()}
    return report


def _run(args: argparse.Namespace, step: Progress) -> dict[str, Any]:
    return run(rounds=2_000 if args.quick else 50_000, warmup=200 if args.quick else 2_000, step=step)


def render(report: dict[str, Any], console: Console) -> None:
    """The figures as a table."""
    keys = ("telemetry_overhead_ratio", "telemetry_overhead_us", "record_us", "sdk_overhead_ratio_trivial")
    targets = {k: f"<= {v}" for k, v in TARGETS.items()}
    console.print(figures_table("Telemetry on the predict path (trivial model)", report, keys, targets))
    console.print(f"medians (us): {report['median_us']}; rounds: {report['rounds']}")


main = command_line("bench.telemetry", __doc__ or "", quick_help="fewer rounds", run=_run, render=render)

if __name__ == "__main__":
    sys.exit(main())
