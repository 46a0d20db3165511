"""The demo's report: each stage's figures as PNGs and one ``index.html`` that shows them above a summary table.

:func:`write_report` takes what the stages returned (:mod:`sdk.cli.demo_results`, ``demo_fleet.LoopRun``) and
writes only into its folder (matplotlib draws on its Agg canvas: no display needed). A stage that did not run
has no plot and no rows.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdk.cli.demo_results import ArtifactRun, CascadeRun, FederationRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sdk.cli.demo_fleet import LoopRun

__all__ = ["write_report"]

#: One row of the summary table: the stage, the figure, its value.
_Row = tuple[str, str, str]


def write_report(
    folder: Path,
    *,
    first_release: Sequence[ArtifactRun] = (),
    cascade: CascadeRun | None = None,
    federation: FederationRun | None = None,
    loop: LoopRun | None = None,
    trace_file: Path | None = None,
    dashboard_url: str | None = None,
    wall_s: float | None = None,
) -> Path:
    """Draw each stage's plots into ``folder`` and write its ``index.html``; return that page's path.

    The PNGs a previous report left in ``folder`` are removed first: the page shows this run only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    figures: list[tuple[str, str]] = []  # (file name, caption)
    if first_release:
        figures.append(_edge_latency(folder, first_release))
    if cascade is not None:
        figures += [_cascade_curve(folder, cascade), _answer_latency(folder, cascade)]
    if federation is not None and federation.rounds:
        figures.append(_federation_accuracy(folder, federation))
        if any(r.epsilon is not None for r in federation.rounds):
            figures.append(_epsilon(folder, federation))
    if loop is not None and loop.devices:
        figures.append(_rollout(folder, loop))
    rows = [
        *_first_release_rows(first_release),
        *_cascade_rows(cascade),
        *_federation_rows(federation),
        *_loop_rows(loop),
    ]
    if wall_s is not None:
        rows.append(("demo", "wall time", f"{wall_s / 60:.1f} min"))
    index = folder / "index.html"
    index.write_text(_page(figures, rows, trace_file, dashboard_url), encoding="utf-8")
    return index


# --- plots -----------------------------------------------------------------------------------------------------


def _new_figure() -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(7, 4), dpi=100, layout="tight")


def _save(fig: Figure, folder: Path, name: str, caption: str) -> tuple[str, str]:
    fig.savefig(folder / name, format="png")
    return name, caption


def _edge_latency(folder: Path, runs: Sequence[ArtifactRun]) -> tuple[str, str]:
    fig = _new_figure()
    ax = fig.subplots()
    ax.boxplot([r.latencies_ms for r in runs], showfliers=False)
    ax.set_xticks(range(1, len(runs) + 1), [f"{r.kind}\n{r.accuracy:.2%} right" for r in runs])
    ax.set_ylabel("ms per call")
    ax.set_title("the first release on the edge runtime: latency per artifact (one image per call)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "edge-latency.png", "The first release's artifacts on the edge runtime, test split.")


def _cascade_curve(folder: Path, run: CascadeRun) -> tuple[str, str]:
    from federation.export.thresholds import plot_curve

    c = run.calibration
    title = f"against the served cloud ({run.cloud_model}): threshold {c.threshold:.3f}, validation rows"
    plot_curve(folder / "cascade.png", c, title)
    caption = (
        f"The cascade's end-to-end accuracy against its fallback rate; the chosen threshold marked "
        f"(target {c.target_accuracy:.2%}, {'reached' if c.reached else 'not reached'})."
    )
    return "cascade.png", caption


def _answer_latency(folder: Path, run: CascadeRun) -> tuple[str, str]:
    fig = _new_figure()
    ax = fig.subplots()
    ms = [c.ms for c in run.calls]
    bins = np.geomspace(max(min(ms), 1e-3), max(ms) * 1.01, 40)
    for source in ("edge", "cloud", "edge-degraded"):
        these = [c.ms for c in run.calls if c.source == source]
        if these:
            p50 = np.percentile(these, 50)
            ax.hist(these, bins=bins, alpha=0.6, label=f"{source}: {len(these)} answers, p50 {p50:.2f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("ms per call (log scale)")
    ax.set_ylabel("answers")
    ax.set_title(f"edge-first at threshold {run.threshold:.3f}: latency of each answer by who gave it", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    caption = "Latency of the fallback stage's answers: edge, cloud, and degraded (the cloud stopped or late)."
    return _save(fig, folder, "latency.png", caption)


def _federation_accuracy(folder: Path, run: FederationRun) -> tuple[str, str]:
    fig = _new_figure()
    ax = fig.subplots()
    rounds = [r.round for r in run.rounds]
    accuracy = [100 * r.val_accuracy for r in run.rounds]
    ax.plot(rounds, accuracy, marker="o", label="federated global model")
    for r in run.rounds:
        if r.version is not None:
            tag = f"v{r.version}" + (" released" if r.released else "")
            ax.annotate(tag, (r.round, 100 * r.val_accuracy), textcoords="offset points", xytext=(0, 6), fontsize=8)
    ax.axhline(100 * run.release_accuracy, color="grey", linestyle="--", label="first release")
    if run.centralised_accuracy is not None:
        ax.axhline(100 * run.centralised_accuracy, color="green", linestyle=":", label="trained centrally")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("federation (SecAgg+ and DP): accuracy per round", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    caption = "The global model's validation accuracy per round, against the first release and central training."
    return _save(fig, folder, "federation-accuracy.png", caption)


def _epsilon(folder: Path, run: FederationRun) -> tuple[str, str]:
    fig = _new_figure()
    ax = fig.subplots()
    spent = [(r.round, r.epsilon) for r in run.rounds if r.epsilon is not None]
    ax.bar([r for r, _ in spent], [e for _, e in spent], color="tab:orange")
    ax.set_xticks([r for r, _ in spent])
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent so far")
    delta = "" if run.delta is None else f" at δ = {run.delta:g}"
    ax.set_title(f"differential privacy: ε per round{delta}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "epsilon.png", f"The privacy budget spent after each round{delta}.")


def _rollout(folder: Path, loop: LoopRun) -> tuple[str, str]:
    fig = _new_figure()
    fig.set_size_inches(8, 4.5)
    ax = fig.subplots()
    start = loop.started_at
    end = max([loop.finished_at, *(t for d in loop.devices for t in d.swapped_at)]) - start
    offsets = np.linspace(-0.12, 0.12, len(loop.devices))  # devices on the same version stay apart
    for device, offset in zip(loop.devices, offsets, strict=True):
        times = [t - start for t in device.swapped_at]
        if not times:
            continue
        versions = [v + offset for v in device.versions]
        ax.step([*times, end], [*versions, versions[-1]], where="post", label=f"{device.device_id} ({device.target})")
    for at, what in loop.milestones:
        ax.axvline(at - start, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(
            what,
            (at - start, 0.98),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
        )
    versions = sorted({v for d in loop.devices for v in d.versions})
    ax.set_yticks(versions, [f"v{v}" for v in versions])
    ax.set_xlabel("seconds since the stage started")
    ax.set_ylabel("version served")
    ax.set_title("over the air: each device's version through the staged rollouts and the recall", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    caption = "Each device's version over time, as its own log says; dotted lines: releases, stages, the abort."
    return _save(fig, folder, "rollout.png", caption)


# --- the summary table ---------------------------------------------------------------------------------------------


def _first_release_rows(runs: Sequence[ArtifactRun]) -> list[_Row]:
    return [
        (
            "edge runtime",
            f"{r.kind} ({r.precision}, {r.size / 1024:.1f} KiB)",
            f"{r.accuracy:.4f} right, p50 {np.percentile(r.latencies_ms, 50):.3f} ms",
        )
        for r in runs
    ]


def _cascade_rows(run: CascadeRun | None) -> list[_Row]:
    if run is None:
        return []
    c = run.calibration
    reached = "reached" if c.reached else "not reached"
    return [
        ("cascade", f"device alone ({run.rows} test rows)", f"{run.device_accuracy:.4f}"),
        ("cascade", "cloud alone", f"{run.cloud_accuracy:.4f} ({run.cloud_model})"),
        ("cascade", "edge-first", f"{run.cascade_accuracy:.4f}"),
        ("cascade", "fallback rate", f"{run.fallback_rate:.1%}"),
        ("cascade", "threshold", f"{run.threshold:.4f} (target {c.target_accuracy:.2%} {reached}, 95 % bound)"),
    ]


def _federation_rows(run: FederationRun | None) -> list[_Row]:
    if run is None:
        return []
    best = max(run.rounds, key=lambda r: r.val_accuracy, default=None)
    released = [f"v{r.version} (round {r.round})" for r in run.rounds if r.released]
    rows = [
        ("federation", "rounds", str(len(run.rounds))),
        ("federation", "first release (validation)", f"{run.release_accuracy:.4f}"),
    ]
    if run.centralised_accuracy is not None:
        rows.append(("federation", "trained centrally (validation)", f"{run.centralised_accuracy:.4f}"))
    if best is not None:
        rows.append(("federation", "best round (validation)", f"{best.val_accuracy:.4f} (round {best.round})"))
    rows.append(("federation", "final global model (test)", f"{run.test_accuracy:.4f}"))
    if run.epsilon is not None:
        delta = "" if run.delta is None else f" at δ {run.delta:g}"
        rows.append(("federation", "ε spent", f"{run.epsilon:.4g}{delta}"))
    rows.append(("federation", "released", ", ".join(released) or "none"))
    return rows


def _loop_rows(loop: LoopRun | None) -> list[_Row]:
    if loop is None:
        return []
    rows = [("over the air", "first release", f"v{loop.first}")]
    if loop.candidate_rollout:
        rollout = loop.candidate_rollout
        rows.append(("over the air", f"candidate v{loop.candidate}", f"{rollout['state']}: {rollout['reason']}"))
    bad = loop.bad_rollout
    rows.append(("over the air", f"forced v{loop.bad}", f"{bad.get('state', '-')}: {bad.get('reason', '')}"))
    for device in loop.devices:
        installed = " ".join(f"v{v}" for v in device.versions)
        rows.append(("over the air", device.device_id, f"{installed}; {device.answers} answers, {device.errors} lost"))
    return rows


# --- the page ------------------------------------------------------------------------------------------------------


def _page(figures: list[tuple[str, str]], rows: list[_Row], trace_file: Path | None, dashboard_url: str | None) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>fedge demo report</title>',
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
        "figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}</style>",
        "</head><body>",
        "<h1>fedge demo report</h1>",
        "<h2>Summary</h2>",
        '<table id="summary"><tr><th>stage</th><th>figure</th><th>value</th></tr>',
        *(f"<tr><td>{e(stage)}</td><td>{e(what)}</td><td>{e(value)}</td></tr>" for stage, what, value in rows),
        "</table>",
    ]
    # The trace file and the dashboard come from other parts of the demo; listed when given.
    links = []
    if trace_file is not None:
        links.append(f'<li>trace file: <a href="{e(trace_file.resolve().as_uri())}">{e(str(trace_file))}</a></li>')
    if dashboard_url is not None:
        links.append(f'<li>dashboard: <a href="{e(dashboard_url)}">{e(dashboard_url)}</a></li>')
    if links:
        parts += ["<ul>", *links, "</ul>"]
    parts.append("<h2>Plots</h2>")
    for name, caption in figures:
        parts.append(f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
