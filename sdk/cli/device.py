"""``fedge edge run``: the device program. Local inference, cloud fallback, OTA updates, status reports.

Everything comes from one TOML file: ``[edge]`` (runtime and fallback), ``[mqtt]`` (the
broker for cloud fallback, notices and status) and ``[update]`` (model, device id, target,
repository URL). The device starts on its installed model (or, with none yet, asks the
cloud), checks for a release at start, on every MQTT notice and every ``check_interval_s``,
and answers the samples it is fed until SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from sdk.cli.console import console
from sdk.cli.federate import edge_app

__all__ = ["register", "run"]


def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="fedge.toml with [edge], [mqtt], [update].")],
    state_dir: Annotated[Path, typer.Option(help="Where installed versions and TUF metadata live.")],
    root_metadata: Annotated[Path, typer.Option(help="The repository's root.json this device was provisioned with.")],
    samples: Annotated[Path | None, typer.Option(help=".npy of inputs standing in for the sensor.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between two samples.")] = 1.0,
    count: Annotated[int, typer.Option(help="Stop after this many samples (0: run until stopped).")] = 0,
) -> None:
    """Serve predictions on this device and keep its model current, until stopped."""
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.edge.cloud_client import CloudClient
    from sdk.edge.install import ModelStore
    from sdk.edge.status import DeviceLink
    from sdk.edge.updater import ModelUpdater, UpdateConfig, open_installed
    from sdk.errors import CloudError
    from sdk.mqtt import MqttSettings

    edge = EdgeConfig.load(config)
    mqtt = MqttSettings.load(config)
    update = UpdateConfig.load(config)
    store = ModelStore(state_dir)
    cloud = CloudClient(mqtt, device_id=update.device_id).start()
    runtime = EdgeRuntime(open_installed(store, edge), edge, cloud=cloud)
    updater = ModelUpdater(store, update, root_metadata.read_bytes(), runtime=runtime, edge_config=edge)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with runtime, DeviceLink(mqtt, update.device_id, update.model, on_notice=updater.check) as link:
        updater.reporter = link.report

        # At start a device that was offline catches up; then each outcome says when to look again
        # (the interval with jitter, or a backoff after a failure).
        first = updater.check()

        def schedule() -> None:
            wait = first.retry_after_s
            while not stop.wait(wait):
                wait = updater.check().retry_after_s

        threading.Thread(target=schedule, name="fedge-update-schedule", daemon=True).start()
        inputs = np.load(samples, allow_pickle=False) if samples else None
        served = 0
        while not stop.is_set() and (count == 0 or served < count):
            if inputs is not None:
                try:
                    result = runtime.predict(inputs[served % len(inputs)])
                    console.print(
                        f"{update.device_id}: label {result.label} ({result.confidence:.2f}) from {result.source}, "
                        f"v{result.model_version}, {result.latency_ms:.2f} ms"
                    )
                except CloudError as exc:  # no local model yet and no cloud: say so and go on
                    console.print(f"{update.device_id}: no answer ({type(exc).__name__}: {exc})")
                served += 1
            stop.wait(interval)


def register(app: typer.Typer) -> None:
    """Add ``edge run`` to the ``edge`` group (``app`` gets the group from :mod:`sdk.cli.federate`)."""
    edge_app.command()(run)
