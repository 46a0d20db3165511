"""Edge benchmarks: SDK overhead over raw ONNX Runtime, int8 against fp32, LiteRT against ONNX Runtime, tracing's cost.

``python -m bench.edge [--quick] [--json] [--cache-dir DIR | --no-cache]``

Every latency is the median of single calls on one thread, with the compared
functions called in a new random order every round, so that drift of a shared machine,
and what one call leaves behind for the next, fall on all of them alike; the headline
figures are ratios of medians measured in the same run. The SDK's overhead is reported
twice: on MobileNetV2, where the model's work dominates, and on the small digits model,
where the SDK's fixed cost per call shows. Both are measured once more with tracing on
(``*_tracing``: a span per call, exported to a JSON-lines file), against the bare session in
that same phase; the headline figures are measured with tracing off, the default. Progress goes
to stderr; with ``--json`` stdout holds exactly one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.harness import Progress, command_line, interleaved_medians, ratio
from bench.mobilenet import MobileNetSpec, add_cache_arguments, cached_model_dir, chosen_cache_root
from sdk import tracing
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.errors import ConfigError
from sdk.manifest import Manifest, load_manifest

__all__ = ["FULL", "QUICK", "Settings", "main", "raw_session", "run"]

#: Upper bounds the headline figures should stay within.
TARGETS: dict[str, float] = {
    "sdk_overhead_ratio": 1.10,
    "sdk_overhead_ratio_digits": 1.30,
    "int8_latency_ratio": 0.55,
    "int8_size_ratio": 0.30,
}
SEED = 0
TRACING_FIGURES = (
    "sdk_overhead_ratio_tracing",
    "sdk_overhead_ratio_digits_tracing",
    "sdk_overhead_us_tracing",
    "tracing_latency_us",
    "tracing_spans_written",
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How hard the benchmark works."""

    quick: bool
    mobilenet_rounds: int
    digits_rounds: int
    warmup: int
    mobilenet_calibration: int
    digits_epochs: int
    digits_calibration: int


QUICK = Settings(
    quick=True,
    mobilenet_rounds=60,
    digits_rounds=2000,
    warmup=5,
    mobilenet_calibration=16,
    digits_epochs=8,
    digits_calibration=128,
)
FULL = Settings(
    quick=False,
    mobilenet_rounds=400,
    digits_rounds=20000,
    warmup=20,
    mobilenet_calibration=64,
    digits_epochs=20,
    digits_calibration=512,
)


def raw_session(
    path: Path,
    num_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    allow_spinning: bool = False,
) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A bare ``InferenceSession.run`` on ``providers`` with the session options the SDK's ORT backend uses."""
    import onnxruntime as ort

    from sdk.backends.ort import session_options

    options = session_options(num_threads, allow_spinning=allow_spinning)
    session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=list(providers))
    outputs = [session.get_outputs()[0].name]
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(outputs, {input_name: x})


def open_runtime(model_dir: Path, kind: str, stack: contextlib.ExitStack) -> EdgeRuntime:
    """An ``EdgeRuntime`` on one CPU thread serving only the artifact ``kind``, closed with ``stack``."""
    config = EdgeConfig(num_threads=1, artifacts=(kind,), providers=("cpu",))
    return stack.enter_context(EdgeRuntime.from_model_dir(model_dir, config))


def check_same_outputs(sdk_out: np.ndarray, raw_out: np.ndarray, what: str) -> None:
    """Fail loudly when the SDK and the bare session disagree: the comparison would be meaningless."""
    if not np.allclose(sdk_out, raw_out, atol=1e-5, rtol=1e-5):
        raise AssertionError(f"{what}: EdgeRuntime.predict and the bare session return different outputs")


def build_digits(directory: Path, settings: Settings, step: Progress) -> tuple[Manifest, np.ndarray]:
    """Train the digits CNN and export it (fp32, int8, LiteRT int8); return its manifest and one test sample."""
    from federation.export.pipeline import ExportConfig, export_model
    from federation.task import DigitsCNN, load_split, set_seed, train

    set_seed(SEED)
    split = load_split(seed=SEED)
    model = DigitsCNN()
    step(f"training digits CNN ({settings.digits_epochs} epochs)")
    train(model, split.x_train, split.y_train, epochs=settings.digits_epochs, seed=SEED)
    # The bench reports the int8 accuracy drop; it must not stop at the export's gate.
    config = ExportConfig(
        tflite="int8", overwrite=True, calibration_samples=settings.digits_calibration, max_accuracy_drop_pt=100.0
    )
    manifest = export_model(model, directory, split, config, on_step=step)
    return manifest, np.ascontiguousarray(split.x_test[0])


def measure_mobilenet(model_dir: Path, settings: Settings, step: Progress) -> dict[str, float]:
    """Median latencies of int8 through the SDK, int8 and fp32 through bare sessions, on one 224x224 image."""
    manifest = load_manifest(model_dir)
    x = mobilenet_input(manifest)
    batch = x[None]
    with contextlib.ExitStack() as stack:
        rt = open_runtime(model_dir, "onnx-int8", stack)
        ort_int8 = raw_session(model_dir / manifest.artifacts["onnx-int8"].file)
        ort_fp32 = raw_session(model_dir / manifest.artifacts["onnx-fp32"].file)
        check_same_outputs(rt.predict(x).outputs, ort_int8(batch)[0][0], "MobileNetV2 int8")
        step(f"timing MobileNetV2: {settings.mobilenet_rounds} rounds of SDK int8, ORT int8, ORT fp32")
        return interleaved_medians(
            {
                "sdk_int8": lambda: rt.predict(x),
                "ort_int8": lambda: ort_int8(batch),
                "ort_fp32": lambda: ort_fp32(batch),
            },
            settings.mobilenet_rounds,
            settings.warmup,
        )


def mobilenet_input(manifest: Manifest) -> np.ndarray:
    """The one random MobileNetV2 image every measurement uses."""
    return np.random.default_rng(SEED + 1).standard_normal(manifest.input.sample_shape, dtype=np.float32)


def measure_traced(
    models: Mapping[str, tuple[Path, np.ndarray, int]], settings: Settings, step: Progress, trace_file: Path
) -> dict[str, Any] | None:
    """Median latencies of SDK int8 and a bare int8 session per model (dir, sample, rounds), tracing to ``trace_file``.

    None when the OpenTelemetry SDK is not installed.
    """
    try:
        tracing.configure(tracing.TracingSettings(trace_file=trace_file), service_name="bench-edge")
    except ConfigError as exc:
        step(f"no tracing figures: {exc.problem}")
        return None
    try:
        medians: dict[str, Any] = {}
        for name, (model_dir, x, rounds) in models.items():
            step(f"timing {name} with tracing on: {rounds} rounds of SDK int8, ORT int8")
            medians[name] = sdk_against_raw(model_dir, x, rounds, settings.warmup)
    finally:
        tracing.shutdown()  # exports what is queued, closes the file
    with trace_file.open(encoding="utf-8") as spans:
        medians["spans_written"] = sum(1 for _ in spans)
    return medians


def sdk_against_raw(model_dir: Path, x: np.ndarray, rounds: int, warmup: int) -> dict[str, float]:
    """Median latencies of one sample ``x`` through the SDK's int8 artifact and a bare int8 session."""
    with contextlib.ExitStack() as stack:
        rt = open_runtime(model_dir, "onnx-int8", stack)
        ort_int8 = raw_session(model_dir / load_manifest(model_dir).artifacts["onnx-int8"].file)
        batch = x[None]
        return interleaved_medians(
            {"sdk_int8": lambda: rt.predict(x), "ort_int8": lambda: ort_int8(batch)}, rounds, warmup
        )


def measure_digits(model_dir: Path, sample: np.ndarray, settings: Settings, step: Progress) -> dict[str, float]:
    """Median latencies of one digits sample: SDK int8, SDK LiteRT and a bare int8 session."""
    manifest = load_manifest(model_dir)
    batch = sample[None]
    with contextlib.ExitStack() as stack:
        rt_int8 = open_runtime(model_dir, "onnx-int8", stack)
        rt_tflite = open_runtime(model_dir, "tflite", stack)
        ort_int8 = raw_session(model_dir / manifest.artifacts["onnx-int8"].file)
        check_same_outputs(rt_int8.predict(sample).outputs, ort_int8(batch)[0][0], "digits int8")
        step(f"timing digits: {settings.digits_rounds} rounds of SDK int8, SDK LiteRT, ORT int8")
        return interleaved_medians(
            {
                "sdk_int8": lambda: rt_int8.predict(sample),
                "sdk_tflite": lambda: rt_tflite.predict(sample),
                "ort_int8": lambda: ort_int8(batch),
            },
            settings.digits_rounds,
            settings.warmup,
        )


def sizes(manifest: Manifest) -> dict[str, int]:
    """Bytes of each artifact, by kind."""
    return {kind: a.size for kind, a in sorted(manifest.artifacts.items())}


def run(settings: Settings, cache_root: Path | None, step: Progress) -> dict[str, Any]:
    """Build both models (MobileNetV2 in a worker process, cached), time them, and return the report."""
    import onnxruntime

    from sdk.backends.litert import interpreter_package

    spec = MobileNetSpec(calibration_samples=settings.mobilenet_calibration, seed=SEED)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            # The MobileNetV2 export is slow single-threaded Python: overlap it with the digits training.
            mobilenet: Future[tuple[Path, bool]] = pool.submit(
                cached_model_dir, spec, cache_root or Path(tmp) / "cache", Progress(step.start, "[mobilenet] ")
            )
            digits_dir = Path(tmp) / "digits"
            digits_manifest, sample = build_digits(digits_dir, settings, step)
            mobilenet_dir, was_cached = mobilenet.result()
        step(f"MobileNetV2 model dir {'from cache' if was_cached else 'built'}: {mobilenet_dir}")
        mobilenet_manifest = load_manifest(mobilenet_dir)
        mobile_us = measure_mobilenet(mobilenet_dir, settings, step)
        digits_us = measure_digits(digits_dir, sample, settings, step)
        traced = measure_traced(
            {
                "mobilenet": (mobilenet_dir, mobilenet_input(mobilenet_manifest), settings.mobilenet_rounds),
                "digits": (digits_dir, sample, settings.digits_rounds),
            },
            settings,
            step,
            Path(tmp) / "spans.jsonl",
        )

    mobile_size, digits_size = sizes(mobilenet_manifest), sizes(digits_manifest)
    acc = {kind: round(a.accuracy, 4) for kind, a in sorted(digits_manifest.artifacts.items())}
    report: dict[str, Any] = {
        "sdk_overhead_ratio": ratio(mobile_us["sdk_int8"], mobile_us["ort_int8"]),
        "sdk_overhead_ratio_digits": ratio(digits_us["sdk_int8"], digits_us["ort_int8"]),
        "sdk_overhead_us": round(digits_us["sdk_int8"] - digits_us["ort_int8"], 2),
        "int8_latency_ratio": ratio(mobile_us["ort_int8"], mobile_us["ort_fp32"]),
        "int8_size_ratio": ratio(mobile_size["onnx-int8"], mobile_size["onnx-fp32"]),
        "digits_int8_size_ratio": ratio(digits_size["onnx-int8"], digits_size["onnx-fp32"]),
        "int8_accuracy_drop_pt": round((acc["onnx-fp32"] - acc["onnx-int8"]) * 100, 3),
        "tflite_accuracy_drop_pt": round((acc["onnx-fp32"] - acc["tflite"]) * 100, 3),
        "litert_latency_ratio": ratio(digits_us["sdk_tflite"], digits_us["sdk_int8"]),
        **tracing_figures(traced),
        "quick": settings.quick,
        "repetitions": {"mobilenet": settings.mobilenet_rounds, "digits": settings.digits_rounds},
        "latency_us": {
            "mobilenet": {k: round(v, 2) for k, v in sorted(mobile_us.items())},
            "digits": {k: round(v, 2) for k, v in sorted(digits_us.items())},
        },
        "size_bytes": {"mobilenet": mobile_size, "digits": digits_size},
        "digits_accuracy": acc,
        "mobilenet": {
            "parameters": mobilenet_manifest.lineage.get("parameters"),
            "calibration_samples": spec.calibration_samples,
            "cached": was_cached,
        },
        "environment": {
            "onnxruntime": onnxruntime.__version__,
            "litert": interpreter_package(),
            "cpu_count": os.cpu_count(),
            "threads_per_session": 1,
        },
    }
    report["meets_targets"] = {key: report[key] <= bound for key, bound in TARGETS.items()}
    report["wall_s"] = round(time.time() - step.start, 1)
    return report


def tracing_figures(traced: Mapping[str, Any] | None) -> dict[str, Any]:
    """The figures of the phase with tracing on (None each without the OpenTelemetry SDK)."""
    if traced is None:
        return dict.fromkeys(TRACING_FIGURES)
    mobile, digits = traced["mobilenet"], traced["digits"]
    return {
        "sdk_overhead_ratio_tracing": ratio(mobile["sdk_int8"], mobile["ort_int8"]),
        "sdk_overhead_ratio_digits_tracing": ratio(digits["sdk_int8"], digits["ort_int8"]),
        "sdk_overhead_us_tracing": round(digits["sdk_int8"] - digits["ort_int8"], 2),
        "tracing_latency_us": {
            k: {p: round(v, 2) for p, v in sorted(traced[k].items())} for k in ("mobilenet", "digits")
        },
        "tracing_spans_written": traced["spans_written"],
    }


def render(report: Mapping[str, Any], console: Console) -> None:
    """Print the report as tables."""
    headline = Table(title=f"Fedge edge benchmark ({'quick' if report['quick'] else 'full'})")
    for column in ("figure", "value", "target"):
        headline.add_column(column, justify="left" if column == "figure" else "right")
    rows = (
        ("sdk_overhead_ratio", "SDK predict / bare ORT run, MobileNetV2 int8"),
        ("sdk_overhead_ratio_digits", "SDK predict / bare ORT run, digits int8 (fixed cost shows)"),
        ("sdk_overhead_us", "SDK fixed cost per call, digits int8 (us)"),
        ("int8_latency_ratio", "int8 / fp32 latency, MobileNetV2"),
        ("int8_size_ratio", "int8 / fp32 file size, MobileNetV2"),
        ("digits_int8_size_ratio", "int8 / fp32 file size, digits"),
        ("int8_accuracy_drop_pt", "int8 accuracy drop, digits (points)"),
        ("tflite_accuracy_drop_pt", "LiteRT int8 accuracy drop, digits (points)"),
        ("litert_latency_ratio", "LiteRT / ORT int8 latency through the SDK, digits"),
        ("sdk_overhead_ratio_tracing", "SDK predict / bare ORT run, MobileNetV2 int8, tracing on"),
        ("sdk_overhead_ratio_digits_tracing", "SDK predict / bare ORT run, digits int8, tracing on"),
        ("sdk_overhead_us_tracing", "SDK fixed cost per call, digits int8, tracing on (us)"),
    )
    for key, label in rows:
        if report[key] is None:
            continue
        target = ""
        if key in TARGETS:
            ok = report["meets_targets"][key]
            target = f"[{'green' if ok else 'red'}]<= {TARGETS[key]:.2f}[/]"
        headline.add_row(label, f"{report[key]:.4g}", target)
    console.print(headline)

    raw = Table(title="median latency per call, one thread (us)")
    for column in ("model", "path", "median us"):
        raw.add_column(column, justify="right" if column == "median us" else "left")
    for model, figures in report["latency_us"].items():
        for path, us in figures.items():
            raw.add_row(model, path, f"{us:,.1f}")
    console.print(raw)
    reps = report["repetitions"]
    console.print(
        f"rounds: MobileNetV2 {reps['mobilenet']}, digits {reps['digits']}; "
        f"MobileNetV2 {report['mobilenet']['parameters']:,} parameters; wall {report['wall_s']} s"
    )


main = command_line(
    "python -m bench.edge",
    __doc__,
    quick_help="fewer rounds, fewer calibration samples, short training",
    run=lambda args, step: run(QUICK if args.quick else FULL, chosen_cache_root(args), step),
    render=render,
    arguments=add_cache_arguments,
)


if __name__ == "__main__":
    sys.exit(main())
