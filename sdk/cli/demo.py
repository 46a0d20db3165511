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

from sdk.cli.console import console, progress

__all__ = ["register"]


def demo(
    workdir: Annotated[Path, typer.Option(help="Where checkpoints and model directories go.")] = Path(".fedge-demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the reference model.")] = 15,
    sparsity: Annotated[float, typer.Option(help="Fraction of weights pruned before export.")] = 0.5,
    factory_samples: Annotated[
        int, typer.Option(help="Training images the first release sees; the fleet holds the rest.")
    ] = 200,
    threshold: Annotated[float, typer.Option(help="Edge-first confidence threshold for the fallback stage.")] = 0.95,
    cloud: Annotated[bool, typer.Option("--cloud/--no-cloud", help="Run the cloud fallback stage.")] = True,
    federation: Annotated[bool, typer.Option("--federation/--no-federation", help="Run the federation stage.")] = True,
    ota: Annotated[bool, typer.Option("--ota/--no-ota", help="Run the over-the-air release stage.")] = True,
) -> None:
    """Train, export, run on the device, fall back to the cloud, federate, then run the closed loop on four devices."""
    from federation.export import ExportConfig, export_model
    from federation.task import DigitsCNN, evaluate, load_split, set_seed, train
    from sdk.edge import EdgeConfig, EdgeRuntime

    split = load_split(0)
    set_seed(0)
    model = DigitsCNN()
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
        kinds = list(manifest.artifacts)
        run = bar.add_task("3/6 edge runtime over the test split", total=len(kinds) * len(split.y_test))
        rows = []
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
                rows.append(
                    (kind, art.precision, art.size, correct / len(split.y_test), latencies, rt.backend.devices[0])
                )

    table = Table(title=f"digits on the edge runtime ({len(split.y_test)} test images, one thread)")
    for col in ("artifact", "precision", "size (KiB)", "accuracy", "p50 ms", "p99 ms", "engine"):
        table.add_column(col, justify="right" if col not in ("artifact", "engine", "precision") else "left")
    for kind, precision, size, acc, lat, engine in rows:
        p50, p99 = np.percentile(lat, [50, 99])
        table.add_row(kind, precision, f"{size / 1024:.1f}", f"{acc:.4f}", f"{p50:.3f}", f"{p99:.3f}", engine)
    console.print(table)
    console.print(
        f"torch fp32 before pruning: {torch_acc:.4f}; pruned to {manifest.sparsity:.0%} sparsity; "
        f"model directory: {model_dir}"
    )
    if cloud:
        cloud_stage(model_dir, split.x_test, split.y_test, threshold, workdir / "broker")
    candidate = None
    if federation:
        from federation.export import save_checkpoint

        checkpoint = workdir / "checkpoints" / "digits-v1.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, checkpoint, arch="digits-cnn")
        _, val_accuracy = evaluate(model, split.x_val, split.y_val)
        candidate = federation_stage(model_dir, workdir / "versions", checkpoint, val_accuracy)
    if ota and candidate is not None:
        from sdk.cli.demo_fleet import badly_trained, ota_stage
        from sdk.manifest import load_manifest

        with progress() as bar:
            bar.add_task("6/6 a bad version: one epoch on 40 images, exported for every device", total=None)
            bad = badly_trained(split, workdir / "models" / "digits-bad", load_manifest(candidate).version + 1)
        ota_stage(model_dir, candidate, bad, workdir / "ota", split.x_test)


def federation_stage(release_dir: Path, versions_dir: Path, checkpoint: Path, release_accuracy: float) -> Path | None:
    """Fine-tune the release across clients with SecAgg+ and DP; versions that beat it are kept; return the newest."""
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
    )
    with progress() as bar:
        task = bar.add_task("5/6 federation: 5 clients, SecAgg+ and DP, 5 rounds (Flower simulation)", total=5)

        def on_line(line: str) -> None:
            if "[ROUND " in line:
                bar.update(task, completed=int(line.split("[ROUND ", 1)[1].split("]", 1)[0]) - 1)

        with SuperLink(simulation=True) as link:
            report = run_app(link.home, settings, num_supernodes=5, timeout_s=900, on_line=on_line)
        bar.update(task, completed=5)
    print_report(report)
    console.print(
        f"candidate versions in {versions_dir}: "
        + (", ".join(f"v{c['version']} (round {c['round']})" for c in report["candidates"]) or "none")
        + f"; epsilon spent {report['epsilon']:.4g} at delta 1e-05 (5 clients cannot buy privacy: see the README)"
    )
    if not report["candidates"]:
        console.print(f"no round beat the release (validation accuracy {release_accuracy:.4f}): nothing to roll out")
        return None
    newest = max(report["candidates"], key=lambda c: c["version"])["version"]
    return versions_dir / f"digits-v{newest}"


def cloud_stage(
    model_dir: Path, x: np.ndarray, y: np.ndarray, threshold: float, broker_dir: Path
) -> list[tuple[str, bool, float]]:
    """Two worker processes and the HTTP endpoint behind a private TLS broker; return (source, correct, ms) per call."""
    import os
    import secrets

    import httpx

    from sdk.broker.acl import WORKER_ACCOUNT
    from sdk.broker.layout import PASSWORD_ENV
    from sdk.cloud.app import create_app
    from sdk.cloud.config import CloudConfig
    from sdk.cloud.inference import load_services
    from sdk.cloud.server import BackgroundServer
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.edge.cloud_client import CloudClient

    records: list[tuple[str, bool, float]] = []
    with contextlib.ExitStack() as stack, progress() as bar:
        step = bar.add_task("4/6 cloud: private Mosquitto (TLS, accounts, ACL), two workers, HTTP", total=None)
        broker, layout = _secured_broker(stack, broker_dir, ["demo-device"])
        settings = layout.settings("demo-device", broker.address)
        command = [sys.executable, "-m", "sdk.cli", "cloud", "worker", "-m", str(model_dir), "--broker", broker.address]
        command += ["--config", str(layout.client_config(WORKER_ACCOUNT))]
        env = {**os.environ, PASSWORD_ENV: layout.password(WORKER_ACCOUNT)}
        workers = [
            subprocess.Popen(
                [*command, "--id", f"demo-{i}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for i in (1, 2)
        ]
        stack.callback(_stop_all, workers)
        key = secrets.token_urlsafe(24)
        services = load_services([model_dir], providers=("cpu",))
        stack.callback(lambda: [s.close() for s in services.values()])
        server = stack.enter_context(BackgroundServer(create_app(services, CloudConfig(api_keys=(key,)))))
        client = CloudClient(settings, device_id="demo-device").start(wait=True)
        config = EdgeConfig(num_threads=1, confidence_threshold=threshold, deadline_ms=250)
        rt = stack.enter_context(EdgeRuntime.from_model_dir(model_dir, config, cloud=client))
        _wait_for_workers(client, rt.manifest.name, x[0])
        bar.update(step, description=f"4/6 edge-first at threshold {threshold}: the test split, one image per call")
        bar.update(step, total=len(y) + 20, completed=0)
        for image, label in zip(x, y, strict=True):
            t0 = time.perf_counter()
            result = rt.predict(image)
            records.append((result.source, result.label == label, (time.perf_counter() - t0) * 1e3))
            bar.advance(step)
        http = httpx.post(
            f"{server.url}/v1/models/{rt.manifest.name}/predict",
            json={"inputs": x[:4].tolist()},
            headers={"X-API-Key": key},
            timeout=10,
        ).json()
        bar.update(step, description="4/6 the cloud is stopped: 20 more calls")
        _stop_all(workers)
        for image, label in zip(x[:20], y[:20], strict=True):
            t0 = time.perf_counter()
            result = rt.predict(image)
            records.append((result.source, result.label == label, (time.perf_counter() - t0) * 1e3))
            bar.advance(step)

    table = Table(title=f"edge-first fallback, threshold {threshold}, deadline 250 ms, two cloud workers")
    for col in ("source", "answers", "share", "accuracy", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source in ("edge", "cloud", "edge-degraded"):
        rows = [r for r in records if r[0] == source]
        if not rows:
            continue
        lat = [r[2] for r in rows]
        p50, p99 = np.percentile(lat, [50, 99])
        acc = sum(r[1] for r in rows) / len(rows)
        share = f"{len(rows) / len(records):.1%}"
        table.add_row(source, str(len(rows)), share, f"{acc:.4f}", f"{p50:.2f}", f"{p99:.2f}")
    console.print(table)
    console.print(
        f"HTTP endpoint {server.url} (API key required) answered labels {http['labels']} "
        f"for the first 4 test images; fallback rate with the cloud up: "
        f"{sum(r[0] == 'cloud' for r in records[: len(y)]) / len(y):.1%}"
    )
    return records


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
