"""``fedge demo``: the whole path on embedded defaults, from training to answers on the device."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from sdk import tracing
from sdk.cli.console import console, progress
from sdk.cli.demo_results import Call, CascadeRun, FederationRun, RoundFigures

__all__ = ["register"]


#: The device account of the fallback stage, and the one the calibration driver asks the cloud under.
DEVICE, CALIBRATOR = "demo-device", "demo-calibrate"
#: The artifact the fallback stage's device runs, and calibrates.
DEVICE_ARTIFACT = "onnx-int8"
#: Every span the demo's processes wrote, one JSON object per line; the report links it.
TRACE_FILE = "trace.jsonl"
#: What each process writes its spans to (``FEDGE_TELEMETRY__TRACE_FILE``) before the demo gathers them.
TRACE_SUFFIX = ".trace.jsonl"
TRACE_ENV = "FEDGE_TELEMETRY__TRACE_FILE"


def demo(
    workdir: Annotated[Path, typer.Option(help="Where checkpoints and model directories go.")] = Path(".fedge-demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the reference model.")] = 15,
    cloud_epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the cloud tier.")] = 10,
    sparsity: Annotated[float, typer.Option(help="Fraction of weights pruned before export.")] = 0.5,
    factory_samples: Annotated[
        int, typer.Option(help="Training images the first release sees; the fleet holds the rest.")
    ] = 200,
    target_accuracy: Annotated[
        float, typer.Option(help="End-to-end accuracy the device's threshold is calibrated to reach (95 % bound).")
    ] = 0.96,
    cloud: Annotated[bool, typer.Option("--cloud/--no-cloud", help="Run the cloud fallback stage.")] = True,
    federation: Annotated[bool, typer.Option("--federation/--no-federation", help="Run the federation stage.")] = True,
    ota: Annotated[bool, typer.Option("--ota/--no-ota", help="Run the over-the-air release stage.")] = True,
    report: Annotated[Path, typer.Option(help="Folder of the report: index.html and its plots.")] = Path("demo-report"),
) -> None:
    """Train, export, run on the device, fall back to the cloud, federate, then run the closed loop on four devices."""
    from federation.export import ExportConfig, export_model
    from federation.export.cloud_tier import export_cloud_tier, train_cloud_tier
    from federation.task import DigitsCNN, evaluate, load_split, set_seed, train
    from sdk.cli.demo_report import write_report
    from sdk.cli.demo_results import ArtifactRun
    from sdk.edge import EdgeConfig, EdgeRuntime

    started = time.perf_counter()
    split = load_split(0)
    set_seed(0)
    model = DigitsCNN()
    cloud_dir = workdir / "models" / "digits-cloud-v1"
    with progress() as bar:
        # The first release is trained on a small "factory" set; the federation later learns from the fleet.
        task = bar.add_task(f"1/6 training the first release on {factory_samples} factory images", total=epochs)
        x_factory, y_factory = split.x_train[:factory_samples], split.y_train[:factory_samples]
        train(model, x_factory, y_factory, epochs=epochs, lr=3e-3, on_epoch=lambda *_: bar.advance(task))
        _, torch_acc = evaluate(model, split.x_test, split.y_test)
        step = bar.add_task("2/6 export", total=None)
        model_dir = workdir / "models" / "digits-v1"
        config = ExportConfig(version=1, sparsity=sparsity, overwrite=True)
        manifest = export_model(
            model, model_dir, split, config, on_step=lambda m: bar.update(step, description=f"2/6 {m}")
        )
        bar.update(step, description="2/6 export", total=1, completed=1)
        if cloud:  # the cascade's second tier: what the fallback stage's workers serve
            tier = f"2/6 the cloud tier: a larger CNN, {cloud_epochs} epochs on every training image, fp32 ONNX"
            step = bar.add_task(tier, total=cloud_epochs + 1)
            cloud_model = train_cloud_tier(split, epochs=cloud_epochs, on_epoch=lambda *_: bar.advance(step))
            export_cloud_tier(cloud_model, cloud_dir, split, overwrite=True)
            bar.advance(step)
        kinds = list(manifest.artifacts)
        run = bar.add_task("3/6 edge runtime over the test split", total=len(kinds) * len(split.y_test))
        first_release = []
        for kind in kinds:
            with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=(kind,), num_threads=1)) as rt:
                latencies, correct = [], 0
                for x, y in zip(split.x_test, split.y_test, strict=True):
                    t0 = time.perf_counter()
                    result = rt.predict(x)
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    correct += int(result.label == y)
                    bar.advance(run)
                art = rt.artifact
                first_release.append(
                    ArtifactRun(
                        kind=kind,
                        precision=art.precision,
                        size=art.size,
                        accuracy=correct / len(split.y_test),
                        latencies_ms=tuple(latencies),
                        engine=rt.backend.devices[0],
                    )
                )

    table = Table(title=f"digits on the edge runtime ({len(split.y_test)} test images, one thread)")
    for col in ("artifact", "precision", "size (KiB)", "accuracy", "p50 ms", "p99 ms", "engine"):
        table.add_column(col, justify="right" if col not in ("artifact", "engine", "precision") else "left")
    for a in first_release:
        p50, p99 = np.percentile(a.latencies_ms, [50, 99])
        table.add_row(
            a.kind, a.precision, f"{a.size / 1024:.1f}", f"{a.accuracy:.4f}", f"{p50:.3f}", f"{p99:.3f}", a.engine
        )
    console.print(table)
    console.print(
        f"torch fp32 before pruning: {torch_acc:.4f}; pruned to {manifest.sparsity:.0%} sparsity; "
        f"model directory: {model_dir}"
    )
    cascade = (
        cloud_stage(model_dir, cloud_dir, split, workdir / "cloud", target_accuracy=target_accuracy) if cloud else None
    )
    federated, loop = None, None
    if federation or ota:
        federated, loop = _closed_loop(model, model_dir, split, workdir, epochs, federation=federation, ota=ota)
    trace = gather_traces(workdir)
    index = write_report(
        report,
        first_release=tuple(first_release),
        cascade=cascade,
        federation=federated,
        loop=loop,
        trace_file=trace,
        wall_s=time.perf_counter() - started,
    )
    console.print(f"the demo's report: {index.resolve()}", highlight=False)


def gather_traces(workdir: Path) -> Path | None:
    """Join the span files every demo process wrote under ``workdir`` into one ``trace.jsonl``; None when none."""
    parts = sorted(p for p in workdir.rglob(f"*{TRACE_SUFFIX}") if p.is_file())
    if not parts:
        return None
    trace = workdir / TRACE_FILE
    spans = 0
    with trace.open("w", encoding="utf-8") as out:
        for part in parts:
            for line in part.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out.write(line + "\n")
                    spans += 1
    console.print(f"{spans} spans from {len(parts)} processes (one trace per fallback): {trace.resolve()}")
    return trace


def _closed_loop(model, model_dir: Path, split, workdir: Path, epochs: int, *, federation: bool, ota: bool):
    """The federation stage, then (with ``ota``) the OTA stage around it; return what each returned, or None."""
    from federation.export import save_checkpoint
    from federation.task import evaluate

    checkpoint = workdir / "checkpoints" / "digits-v1.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, checkpoint, arch="digits-cnn")
    _, val_accuracy = evaluate(model, split.x_val, split.y_val)
    centralised = None
    if federation:
        with progress() as bar:
            bar.add_task("5/6 a centralised baseline: the same network on every training image", total=None)
            centralised = centralised_accuracy(split, epochs)
    if not ota:  # the federation alone: its accepted rounds become versions on disk
        return federation_stage(model_dir, workdir / "versions", checkpoint, val_accuracy, centralised), None
    from sdk.cli.demo_fleet import badly_trained, ota_stage

    federated = None

    def release_candidate(url: str, key: str) -> int | None:
        nonlocal federated
        if not federation:
            return None
        registry = (url, key)
        federated = federation_stage(
            model_dir, workdir / "versions", checkpoint, val_accuracy, centralised, registry=registry
        )
        return federated.newest

    def bad(version: int) -> Path:
        with progress() as bar:
            bar.add_task("6/6 a bad version: one epoch on 40 images, exported for every device", total=None)
            return badly_trained(split, workdir / "models" / "digits-bad", version)

    loop = ota_stage(model_dir, release_candidate, bad, workdir / "ota", split.x_test)
    return federated, loop


def centralised_accuracy(split, epochs: int) -> float:
    """Validation accuracy of the release's network trained on every training image in one place: the bar to meet."""
    from federation.task import DigitsCNN, evaluate, set_seed, train

    set_seed(0)
    model = DigitsCNN()
    train(model, split.x_train, split.y_train, epochs=epochs, lr=3e-3)
    return evaluate(model, split.x_val, split.y_val)[1]


def federation_stage(
    release_dir: Path,
    versions_dir: Path,
    checkpoint: Path,
    release_accuracy: float,
    centralised: float | None = None,
    *,
    registry: tuple[str, str] | None = None,
) -> FederationRun:
    """Fine-tune the release across clients with SecAgg+ and DP; return each round's figures and the newest version.

    With ``registry`` (its URL and admin key), the release pipeline signs each version that beat the release and
    starts its staged rollout (``fedge federate --release``); the newest released one is the run's ``newest``.
    ``centralised`` is the validation accuracy of the same network trained in one place, reported beside.
    """
    import os
    import shutil

    from federation.runner import SuperLink, run_app
    from federation.settings import FederationSettings
    from sdk.cli.federate import print_report

    shutil.rmtree(versions_dir, ignore_errors=True)
    versions_dir.mkdir(parents=True)
    shutil.copytree(release_dir, versions_dir / release_dir.name)  # the current release: candidates number after it
    settings = FederationSettings(
        num_clients=5,
        clients_per_round=5,
        num_server_rounds=5,
        privacy="secagg+dp",
        noise_multiplier=0.01,
        clipping_norm=1.0,
        local_epochs=2,
        lr=0.002,
        versions_dir=str(versions_dir.resolve()),
        init_checkpoint=str(checkpoint.resolve()),
        baseline_accuracy=release_accuracy,
        export_tflite=True,  # the Raspberry Pi devices of the OTA stage run LiteRT
        registry_url=registry[0] if registry else "",
        release=registry is not None,
    )
    saved_key = os.environ.get("FEDGE_ADMIN_KEY")
    if registry is not None:
        os.environ["FEDGE_ADMIN_KEY"] = registry[1]  # read by the ServerApp, a process the SuperLink starts
    title = "5/6 federation: 5 clients, SecAgg+ and DP, 5 rounds (Flower simulation)"
    if registry is not None:
        title += "; each accepted round released staged"
    try:
        with progress() as bar:
            task = bar.add_task(title, total=5)

            def on_line(line: str) -> None:
                if "[ROUND " in line:
                    bar.update(task, completed=int(line.split("[ROUND ", 1)[1].split("]", 1)[0]) - 1)

            with SuperLink(simulation=True) as link:
                report = run_app(link.home, settings, num_supernodes=5, timeout_s=900, on_line=on_line)
            bar.update(task, completed=5)
    finally:
        if saved_key is None:
            os.environ.pop("FEDGE_ADMIN_KEY", None)
        else:
            os.environ["FEDGE_ADMIN_KEY"] = saved_key
    print_report(report)
    console.print(
        f"candidate versions in {versions_dir}: "
        + (", ".join(f"v{c['version']} (round {c['round']})" for c in report["candidates"]) or "none")
        + f"; epsilon spent {report['epsilon']:.4g} at delta 1e-05 (5 clients cannot buy privacy: see the README)"
    )
    run = _federation_run(report, release_accuracy, centralised, released_only=registry is not None)
    if run.newest is None:
        console.print(f"no round beat the release (validation accuracy {release_accuracy:.4f}): nothing to roll out")
    return run


def _federation_run(
    report: dict, release_accuracy: float, centralised: float | None, *, released_only: bool
) -> FederationRun:
    """The figures of a federation ``report`` (``run_app``'s); ``released_only``: newest counts released versions."""
    candidates = {c["round"]: c for c in report["candidates"]}
    rounds = []
    for r in report["rounds"]:
        candidate = candidates.get(r["round"], {})
        rounds.append(
            RoundFigures(
                round=r["round"],
                val_accuracy=r["val_accuracy"],
                epsilon=r.get("epsilon"),
                version=candidate.get("version"),
                released=bool(candidate.get("release", {}).get("released")),
            )
        )
    newest = [r.version for r in rounds if r.version is not None and (r.released or not released_only)]
    return FederationRun(
        rounds=tuple(rounds),
        release_accuracy=release_accuracy,
        centralised_accuracy=centralised,
        test_accuracy=report["test_accuracy"],
        epsilon=report["epsilon"],
        delta=next((r["delta"] for r in report["rounds"] if "delta" in r), None),
        newest=max(newest, default=None),
    )


def cloud_stage(
    model_dir: Path,
    cloud_dir: Path,
    split,
    workdir: Path,
    *,
    target_accuracy: float = 0.96,
    rows: int | None = None,
) -> CascadeRun:
    """The two-tier cascade on real processes: the device's threshold calibrated against the cloud tier it serves.

    Two workers and the HTTP endpoint serve ``cloud_dir`` behind a private TLS broker; the calibration driver asks
    them for the validation rows; then the device alone, the cloud alone and edge-first on the first ``rows`` test
    rows (default: all), and 20 more calls with the workers stopped. The calibration writes into a copy of
    ``model_dir`` in ``workdir``: the release the later stages ship is unchanged.
    """
    import os
    import secrets
    import shutil
    from dataclasses import replace

    import httpx

    from federation.export.thresholds import ask_served_cloud, calibrate_against_served
    from sdk.broker.acl import WORKER_ACCOUNT
    from sdk.broker.layout import PASSWORD_ENV
    from sdk.cloud.app import create_app
    from sdk.cloud.config import CloudConfig
    from sdk.cloud.inference import load_services
    from sdk.cloud.server import BackgroundServer
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.edge.cloud_client import CloudClient
    from sdk.manifest import load_manifest

    x, y = split.x_test[:rows], split.y_test[:rows]
    cloud_manifest = load_manifest(cloud_dir)
    name = cloud_manifest.name  # the cloud tier is served under the device model's name
    calls: list[Call] = []

    def call(rt: EdgeRuntime, image: np.ndarray, label: int) -> None:
        t0 = time.perf_counter()
        result = rt.predict(image)
        calls.append(Call(result.source, bool(result.label == label), (time.perf_counter() - t0) * 1e3))

    with contextlib.ExitStack() as stack, progress() as bar:
        step = bar.add_task("4/6 cloud: private Mosquitto (TLS, accounts, ACL), two workers, HTTP", total=None)
        broker, layout = _secured_broker(stack, workdir / "broker", [DEVICE, CALIBRATOR])
        command = [sys.executable, "-m", "sdk.cli", "cloud", "worker", "-m", str(cloud_dir), "--broker", broker.address]
        command += ["--config", str(layout.client_config(WORKER_ACCOUNT))]
        env = {**os.environ, PASSWORD_ENV: layout.password(WORKER_ACCOUNT)}
        workers = [
            subprocess.Popen(
                [*command, "--id", f"demo-{i}"],
                env={**env, TRACE_ENV: str(workdir / f"worker-{i}{TRACE_SUFFIX}")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in (1, 2)
        ]
        # This process is the stage's device: its predict spans are the roots of the fallbacks' traces.
        traces = tracing.TracingSettings(trace_file=workdir / f"{DEVICE}{TRACE_SUFFIX}")
        stack.enter_context(tracing.configured(traces, service_name=DEVICE))
        stack.callback(_stop_all, workers)
        key = secrets.token_urlsafe(24)
        services = load_services([cloud_dir], providers=("cpu",))
        stack.callback(lambda: [s.close() for s in services.values()])
        server = stack.enter_context(BackgroundServer(create_app(services, CloudConfig(api_keys=(key,)))))
        client = CloudClient(layout.settings(DEVICE, broker.address), device_id=DEVICE).start(wait=True)
        _wait_for_workers(client, name, x[0])

        bar.update(step, description=f"4/6 calibrating {DEVICE_ARTIFACT} against the served cloud tier")
        device_dir = workdir / "device"
        shutil.rmtree(device_dir, ignore_errors=True)
        shutil.copytree(model_dir, device_dir)
        asker = layout.settings(CALIBRATOR, broker.address)
        chosen, answers = calibrate_against_served(
            device_dir,
            split,
            asker,
            name,
            artifact=DEVICE_ARTIFACT,
            target_accuracy=target_accuracy,
            device_id=CALIBRATOR,
        )
        calibration = chosen.calibration

        bar.update(step, description=f"4/6 the device alone and the cloud alone on {len(y)} test rows")
        config = EdgeConfig(artifacts=(DEVICE_ARTIFACT,), num_threads=1, deadline_ms=250)
        with EdgeRuntime.from_model_dir(device_dir, replace(config, fallback="edge-only")) as alone:
            device_labels = np.concatenate([alone.predict(x[i : i + 64]).labels for i in range(0, len(x), 64)])
        cloud_labels = ask_served_cloud(asker, name, x, device_id=CALIBRATOR).labels

        rt = stack.enter_context(EdgeRuntime.from_model_dir(device_dir, config, cloud=client))
        threshold = rt.confidence_threshold
        bar.update(step, description=f"4/6 edge-first at threshold {threshold:.3f}: one image per call")
        bar.update(step, total=len(y) + 20, completed=0)
        for image, label in zip(x, y, strict=True):
            call(rt, image, label)
            bar.advance(step)
        http = httpx.post(
            f"{server.url}/v1/models/{name}/predict",
            json={"inputs": x[:4].tolist()},
            headers={"X-API-Key": key},
            timeout=10,
        ).json()
        bar.update(step, description="4/6 the cloud is stopped: 20 more calls")
        _stop_all(workers)
        for image, label in zip(x[:20], y[:20], strict=True):
            call(rt, image, label)
            bar.advance(step)

    cascade = calls[: len(y)]
    run = CascadeRun(
        calibration=calibration,
        threshold=threshold,
        cloud_model=f"{answers.model.name} v{answers.model.version}",
        rows=len(y),
        device_accuracy=float(np.mean(device_labels == y)),
        cloud_accuracy=float(np.mean(cloud_labels == y)),
        cascade_accuracy=sum(c.correct for c in cascade) / len(y),
        fallback_rate=sum(c.source == "cloud" for c in cascade) / len(y),
        calls=tuple(calls),
    )
    _print_cascade(run, target_accuracy)
    console.print(
        f"HTTP endpoint {server.url} (API key required) answered labels {http['labels']} "
        f"for the first 4 test images from the cloud tier"
    )
    return run


def _print_cascade(run: CascadeRun, target_accuracy: float) -> None:
    """The fallback stage's tables: answers by source, then device alone, cloud alone and the cascade."""
    table = Table(title=f"edge-first fallback, threshold {run.threshold:.3f}, deadline 250 ms, two cloud workers")
    for col in ("source", "answers", "share", "accuracy", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source in ("edge", "cloud", "edge-degraded"):
        rows = [c for c in run.calls if c.source == source]
        if not rows:
            continue
        p50, p99 = np.percentile([c.ms for c in rows], [50, 99])
        acc = sum(c.correct for c in rows) / len(rows)
        share = f"{len(rows) / len(run.calls):.1%}"
        table.add_row(source, str(len(rows)), share, f"{acc:.4f}", f"{p50:.2f}", f"{p99:.2f}")
    console.print(table)
    tiers = Table(title=f"the two tiers on {run.rows} test rows (cloud tier {run.cloud_model})")
    for col in ("who answers", "accuracy", "from the cloud"):
        tiers.add_column(col, justify="left" if col == "who answers" else "right")
    tiers.add_row(f"the device alone ({DEVICE_ARTIFACT})", f"{run.device_accuracy:.4f}", "0 %")
    tiers.add_row("the cloud alone", f"{run.cloud_accuracy:.4f}", "100 %")
    tiers.add_row("the cascade (edge-first)", f"{run.cascade_accuracy:.4f}", f"{run.fallback_rate:.1%}")
    console.print(tiers)
    c = run.calibration
    verdict = (
        f"reached at {c.threshold:.3f}"
        if c.reached
        else f"not reached (the device keeps threshold {run.threshold:.3f})"
    )
    gain = 100 * (run.cascade_accuracy - run.device_accuracy)
    console.print(
        f"calibration against the served cloud, target {target_accuracy} (95 % Clopper-Pearson bound, "
        f"validation rows): {verdict}; the cascade {gain:+.2f} pt over the device alone, "
        f"{run.fallback_rate:.1%} of its calls answered by the cloud",
        highlight=False,
    )


def _secured_broker(stack: contextlib.ExitStack, directory: Path, devices: list[str]):
    """A fresh ``fedge broker init`` directory for ``devices`` and a Mosquitto running it on loopback."""
    import shutil

    from sdk.broker.provision import init_broker
    from sdk.mosquitto import Mosquitto

    shutil.rmtree(directory, ignore_errors=True)
    layout = init_broker(directory, devices=devices)
    return stack.enter_context(Mosquitto(config_dir=layout.root)), layout


def _wait_for_workers(client, model: str, sample: np.ndarray, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.infer(model, sample, timeout_s=1.0)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _stop_all(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command()(demo)
