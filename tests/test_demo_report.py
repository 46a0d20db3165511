"""The demo's report writer on small stage results made up here: the PNGs it draws and the page that shows them."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from sdk.cli.demo_fleet import DeviceRun, LoopRun
from sdk.cli.demo_report import write_report
from sdk.cli.demo_results import ArtifactRun, Call, CascadeRun, FederationRun, RoundFigures
from sdk.edge.calibration import calibrate

T0 = 1_700_000_000.0


def _first_release() -> tuple[ArtifactRun, ...]:
    rng = np.random.default_rng(0)
    return tuple(
        ArtifactRun(
            kind=kind,
            precision=precision,
            size=size,
            accuracy=accuracy,
            latencies_ms=tuple(rng.gamma(4.0, 0.05, 50)),
            engine="CPUExecutionProvider",
        )
        for kind, precision, size, accuracy in (
            ("onnx-fp32", "float32", 40_000, 0.9582),
            ("onnx-int8", "int8", 14_000, 0.9554),
        )
    )


def _cascade() -> CascadeRun:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.2, 1.0, 200)
    edge_right = rng.uniform(0, 1, 200) < confidence
    calibration = calibrate(confidence, edge_right, np.ones(200, dtype=bool), 0.9)
    calls = [Call("edge", True, 0.2 + i / 100) for i in range(40)]
    calls += [Call("cloud", i % 10 != 0, 3.0 + i / 10) for i in range(10)]
    calls += [Call("edge-degraded", False, 250.0) for _ in range(3)]
    return CascadeRun(
        calibration=calibration,
        threshold=calibration.threshold,
        cloud_model="digits v1",
        rows=50,
        device_accuracy=0.9123,
        cloud_accuracy=0.9877,
        cascade_accuracy=0.9611,
        fallback_rate=0.2,
        calls=tuple(calls),
    )


def _federation() -> FederationRun:
    rounds = tuple(
        RoundFigures(
            round=n, val_accuracy=0.90 + n / 100, epsilon=40.0 * n, version=n + 1 if n > 1 else None, released=n > 1
        )
        for n in range(1, 5)
    )
    return FederationRun(
        rounds=rounds,
        release_accuracy=0.9111,
        centralised_accuracy=0.9704,
        test_accuracy=0.9555,
        epsilon=160.0,
        delta=1e-5,
        newest=5,
    )


def _loop() -> LoopRun:
    def device(device_id: str, versions: tuple[int, ...]) -> DeviceRun:
        return DeviceRun(
            device_id=device_id,
            example="jetson",
            target="onnx-fp32",
            answers=300,
            errors=0,
            before_install=2,
            sources={"edge": 280, "cloud": 20},
            versions=versions,
            swapped_at=tuple(T0 + 10.0 * i for i in range(len(versions))),
            per_phase=(50, 150, 80, 20),
        )

    return LoopRun(
        first=1,
        candidate=5,
        bad=6,
        candidate_rollout={"version": 5, "state": "complete", "reason": "every stage soaked"},
        bad_rollout={"version": 6, "state": "aborted", "reason": "max_fallback_rate_increase: 1 > 0.2"},
        devices=(device("jetson-lab", (1, 5, 6, 5)), device("jetson-yard", (1, 5))),
        started_at=T0 - 5.0,
        finished_at=T0 + 60.0,
        milestones=((T0, "v1 released"), (T0 + 25.0, "v6 aborted, recalled")),
    )


def test_the_report_shows_every_stage_as_a_png_and_its_figures_in_the_summary_table(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text("{}\n")

    index = write_report(
        tmp_path / "report",
        first_release=_first_release(),
        cascade=_cascade(),
        federation=_federation(),
        loop=_loop(),
        trace_file=trace,
        wall_s=250.0,
    )

    assert index == tmp_path / "report" / "index.html"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert len(pngs) >= 5, pngs
    for name in pngs:
        with Image.open(index.parent / name) as image:
            assert image.format == "PNG"
            assert min(image.size) >= 300, (name, image.size)
    page = index.read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == pngs  # every plot shown, none missing
    summary = page.split('<table id="summary">', 1)[1].split("</table>", 1)[0]
    for figure in ("0.9123", "0.9877", "0.9611", "20.0%", "0.9704", "160", "v1 v5 v6 v5", "aborted", "4.2 min"):
        assert figure in summary, figure
    assert trace.resolve().as_uri() in page


def test_a_stage_that_did_not_run_has_no_plot_and_a_rerun_leaves_no_stale_plot(tmp_path):
    folder = tmp_path / "report"
    write_report(folder, first_release=_first_release(), cascade=_cascade(), federation=_federation(), loop=_loop())

    index = write_report(folder, first_release=_first_release())

    assert [p.name for p in folder.glob("*.png")] == ["edge-latency.png"]
    page = index.read_text()
    assert re.findall(r'<img src="([^"]+)"', page) == ["edge-latency.png"]
    assert "cascade" not in page.split('<table id="summary">', 1)[1]
    assert "trace file" not in page
