"""``fedge cloud worker`` and ``fedge cloud serve``: the cloud side of the fallback path.

API keys are read from the config file (``[cloud] api_keys``) or the environment
(``FEDGE_CLOUD__API_KEYS``), never from the command line, where ``ps`` would show them.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from sdk.cli.console import console

__all__ = ["register"]

cloud_app = typer.Typer(help="Run the cloud side: MQTT inference workers and the HTTP endpoint.", no_args_is_help=True)

ModelDirsOpt = Annotated[
    list[Path] | None,
    typer.Option("--model-dir", "-m", help="Model directory to serve (repeat for several models)."),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="fedge.toml with \\[cloud] and \\[mqtt] tables.")
]
BatchOpt = Annotated[int | None, typer.Option("--max-batch-size", help="Largest batch the model runs.")]
DelayOpt = Annotated[
    float | None, typer.Option("--max-queue-delay-ms", help="Wait this long to fill a batch (0: run when free).")
]


def _cloud_config(config: Path | None, model_dirs: list[Path] | None, **overrides: object):
    from sdk.cloud.config import CloudConfig

    loaded = CloudConfig.load(config)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if model_dirs:
        changes["model_dirs"] = tuple(model_dirs)
    loaded = replace(loaded, **changes)
    if not loaded.model_dirs:
        raise typer.BadParameter("give at least one --model-dir (or [cloud] model_dirs)", param_hint="--model-dir")
    return loaded


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@cloud_app.command()
def worker(
    model_dir: ModelDirsOpt = None,
    broker: Annotated[str | None, typer.Option(help="Broker HOST:PORT (default: \\[mqtt] host and port).")] = None,
    group: Annotated[str | None, typer.Option(help="Shared-subscription group of the workers.")] = None,
    worker_id: Annotated[str | None, typer.Option("--id", help="MQTT client id of this worker.")] = None,
    max_batch_size: BatchOpt = None,
    max_queue_delay_ms: DelayOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Answer inference requests from the broker's shared subscription until stopped."""
    from sdk.cloud.inference import load_services
    from sdk.cloud.worker import InferenceWorker
    from sdk.mqtt import MqttSettings, parse_address

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cloud = _cloud_config(
        config, model_dir, group=group, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms
    )
    settings = MqttSettings.load(config)
    if broker:
        host, port = parse_address(broker)
        settings = replace(settings, host=host, port=port)
    services = load_services(cloud.model_dirs, cloud.batcher(), providers=cloud.providers)
    try:
        with InferenceWorker(services, settings, group=cloud.group, worker_id=worker_id) as running:
            names = ", ".join(f"{s.name} v{s.manifest.version}" for s in services.values())
            where = f"{settings.host}:{settings.port} ({running.subscription})"
            console.print(f"{running.worker_id} serving {names} on {where}")
            _wait_for_signal()
    finally:
        for service in services.values():
            service.close()


@cloud_app.command()
def serve(
    model_dir: ModelDirsOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    max_batch_size: BatchOpt = None,
    max_queue_delay_ms: DelayOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the HTTP endpoint (predict, models, health, metrics, OpenAPI docs at /docs)."""
    import uvicorn

    from sdk.cloud.app import create_app
    from sdk.cloud.inference import load_services

    cloud = _cloud_config(
        config, model_dir, host=host, port=port, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms
    )
    services = load_services(cloud.model_dirs, cloud.batcher(), providers=cloud.providers)
    auth = f"{len(cloud.api_keys)} API key(s)" if cloud.api_keys else "no API keys: /v1 is open"
    console.print(f"serving {', '.join(services)} on http://{cloud.host}:{cloud.port} ({auth}); docs at /docs")
    try:
        uvicorn.run(create_app(services, cloud), host=cloud.host, port=cloud.port, log_level="warning")
    finally:
        for service in services.values():
            service.close()


def register(app: typer.Typer) -> None:
    """Add the ``cloud`` command group to ``app``."""
    app.add_typer(cloud_app, name="cloud")
