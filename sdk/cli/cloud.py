"""``fedge cloud worker`` and ``fedge cloud serve``: the cloud side of the fallback path.

API keys are read from the config file (``[cloud] api_keys``) or the environment
(``FEDGE_CLOUD__API_KEYS``), never from the command line, where ``ps`` would show them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from sdk import tracing
from sdk.cli.console import console

__all__ = ["register"]

cloud_app = typer.Typer(help="Run the cloud side: MQTT inference workers and the HTTP endpoint.", no_args_is_help=True)

ModelDirsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--model-dir",
        "-m",
        help="Model directory to serve: the cloud tier (e.g. models/digits-cloud; repeat for several models).",
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="fedge.toml with \\[cloud] and \\[mqtt] tables.")
]
BatchOpt = Annotated[int | None, typer.Option("--max-batch-size", help="Largest batch the model runs.")]
DelayOpt = Annotated[
    float | None, typer.Option("--max-queue-delay-ms", help="Wait this long to fill a batch (0: run when free).")
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="ONNX Runtime threads per batch (0: one per core; default 1).")
]
SpinOpt = Annotated[
    bool | None,
    typer.Option("--spin/--no-spin", help="Let idle engine threads spin-wait for the next batch (default: no)."),
]


def _cloud_config(config: Path | None, model_dirs: list[Path] | None, *, need_models: bool = True, **overrides: object):
    from sdk.cloud.config import CloudConfig

    loaded = CloudConfig.load(config)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if model_dirs:
        changes["model_dirs"] = tuple(model_dirs)
    loaded = replace(loaded, **changes)
    if need_models and not loaded.model_dirs:
        raise typer.BadParameter("give at least one --model-dir (or [cloud] model_dirs)", param_hint="--model-dir")
    return loaded


def _load_services(cloud):
    from sdk.cloud.inference import load_services

    return load_services(
        cloud.model_dirs,
        cloud.batcher(),
        providers=cloud.providers,
        intra_op_threads=cloud.intra_op_threads,
        allow_spinning=cloud.allow_spinning,
    )


def _engine(services) -> str:
    """The engine settings as the loaded sessions report them, e.g. ``1 thread(s), no spinning``."""
    built = {(s.model.backend.num_threads, s.model.backend.allow_spinning) for s in services.values()}
    return "; ".join(f"{n} thread(s), {'spinning' if spin else 'no spinning'}" for n, spin in sorted(built))


def _stop_on_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@cloud_app.command()
def worker(
    model_dir: ModelDirsOpt = None,
    broker: Annotated[str | None, typer.Option(help="Broker HOST:PORT (default: \\[mqtt] host and port).")] = None,
    group: Annotated[str | None, typer.Option(help="Shared-subscription group of the workers.")] = None,
    worker_id: Annotated[str | None, typer.Option("--id", help="MQTT client id of this worker.")] = None,
    max_batch_size: BatchOpt = None,
    max_queue_delay_ms: DelayOpt = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /healthz and /metrics on this port (0: off; default \\[cloud] key).")
    ] = None,
    session_expiry_s: Annotated[
        int | None, typer.Option(help="Keep a persistent MQTT session this long (0: clean sessions).")
    ] = None,
    unavailable_exit_s: Annotated[
        float | None, typer.Option(help="Exit non-zero after this long without serving.")
    ] = None,
    threads: ThreadsOpt = None,
    spin: SpinOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Answer inference requests from the broker's shared subscription until stopped."""
    from sdk.cloud.status_server import StatusServer
    from sdk.cloud.worker import InferenceWorker
    from sdk.errors import CloudUnavailable
    from sdk.mqtt import MqttSettings, parse_address

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cloud = _cloud_config(
        config,
        model_dir,
        group=group,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        worker_metrics_port=metrics_port,
        worker_session_expiry_s=session_expiry_s,
        worker_unavailable_exit_s=unavailable_exit_s,
        intra_op_threads=threads,
        allow_spinning=spin,
    )
    settings = MqttSettings.load(config)
    if broker:
        host, port = parse_address(broker)
        settings = replace(settings, host=host, port=port)
    traces = tracing.TracingSettings.load(config)
    services = _load_services(cloud)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(tracing.configured(traces, service_name="fedge-worker"))
            expiry = cloud.worker_session_expiry_s
            running = InferenceWorker(
                services, settings, group=cloud.group, worker_id=worker_id, session_expiry_s=expiry
            )
            if cloud.worker_metrics_port:
                status = StatusServer(
                    lambda: running.serving, running.metrics, host=cloud.host, port=cloud.worker_metrics_port
                )
                stack.enter_context(status)
            stack.enter_context(running)
            names = ", ".join(f"{s.name} v{s.manifest.version}" for s in services.values())
            where = f"{settings.host}:{settings.port} ({running.subscription})"
            console.print(f"{running.worker_id} serving {names} on {where}; engine: {_engine(services)}")
            running.watch(_stop_on_signal(), cloud.worker_unavailable_exit_s)
    except CloudUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=1) from None
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
    repository: Annotated[Path | None, typer.Option(help="Signed release repository to serve under /tuf.")] = None,
    keys: Annotated[Path | None, typer.Option(help="Online signing keys (fedge keys init --online-dir).")] = None,
    registry_url: Annotated[str | None, typer.Option(help="Registry database URL (sqlite:///registry.db).")] = None,
    store: Annotated[Path | None, typer.Option(help="Where registered versions are kept.")] = None,
    broker: Annotated[str | None, typer.Option(help="Broker HOST:PORT for release notices and fleet status.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the HTTP endpoint: predict, models, health, metrics, and with a registry, releases (docs at /docs)."""
    import uvicorn

    from sdk.cloud.app import create_app
    from sdk.cloud.server import ensure_open_files, uvicorn_options

    cloud = _cloud_config(
        config,
        model_dir,
        need_models=False,
        host=host,
        port=port,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        repository_dir=repository,
        keys_dir=keys,
        registry_url=registry_url,
        store_dir=store,
    )
    if not cloud.model_dirs and not cloud.registry_url:
        raise typer.BadParameter("give --model-dir to serve models, or --registry-url to run the registry")
    ensure_open_files(cloud)
    policies = _rollout_policies(cloud)  # a bad policy file stops the start here, naming its key
    traces = tracing.TracingSettings.load(config)
    services = _load_services(cloud)
    with contextlib.ExitStack() as stack:
        stack.enter_context(tracing.configured(traces, service_name="fedge-cloud"))
        stack.callback(lambda: [s.close() for s in services.values()])
        registry = rollouts = None
        if cloud.registry_url:
            registry, rollouts = _open_registry(cloud, broker, config, stack, policies)
        auth = f"{len(cloud.api_keys)} API key(s)" if cloud.api_keys else "no API keys: /v1 is open"
        what = ", ".join(services) or "no models"
        dashboard = "; fleet dashboard at /dashboard" if registry is not None else ""
        console.print(f"serving {what} on http://{cloud.host}:{cloud.port} ({auth}); docs at /docs{dashboard}")
        app = create_app(services, cloud, repository_dir=cloud.repository_dir, registry=registry, rollouts=rollouts)
        uvicorn.run(app, host=cloud.host, port=cloud.port, log_level="warning", **uvicorn_options(cloud))


def _rollout_policies(cloud):
    from sdk.cloud.rollout_policy import RolloutPolicies

    return RolloutPolicies.load(cloud.rollout_policy) if cloud.rollout_policy else RolloutPolicies()


def _open_registry(cloud, broker: str | None, config: Path | None, stack: contextlib.ExitStack, policies):
    from sdk.cloud.registry import Registry
    from sdk.cloud.releases import ReleaseService
    from sdk.cloud.repository import ReleaseRepository
    from sdk.cloud.rollout_store import RolloutStore
    from sdk.cloud.rollouts import RolloutDriver
    from sdk.cloud.signing import KeySet
    from sdk.mqtt import MqttSettings, parse_address

    if cloud.repository_dir is None or cloud.keys_dir is None or cloud.store_dir is None:
        raise typer.BadParameter("a registry needs --repository, --keys and --store")
    repository = ReleaseRepository(cloud.repository_dir, KeySet.online_only(cloud.keys_dir))
    registry = Registry(cloud.registry_url, cloud.store_dir, repository)
    stack.callback(registry.close)
    settings = None
    if broker:
        host, port = parse_address(broker)
        settings = replace(MqttSettings.load(config), host=host, port=port)
    stack.enter_context(ReleaseService(registry, settings))
    rollouts = RolloutStore(registry, policies)
    stack.enter_context(RolloutDriver(rollouts, tick_s=cloud.rollout_tick_s))
    return registry, rollouts


def register(app: typer.Typer) -> None:
    """Add the ``cloud`` command group to ``app``."""
    app.add_typer(cloud_app, name="cloud")
