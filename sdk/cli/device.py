"""``fedge edge run``: the device program. Local inference, cloud fallback, OTA updates, status reports.

Everything comes from one TOML file: ``[edge]`` (runtime and fallback), ``[mqtt]`` (the
broker for cloud fallback, notices and status) and ``[update]`` (model, device id, target,
repository URL). The device starts on its installed model (or, with none yet, asks the
cloud) from its first second, whatever the broker or the repository does: the broker
connection and the update checks run in the background (at start, on MQTT notices no closer
than ``min_check_interval_s``, every ``check_interval_s``, with backoff after a failure), and
nothing they raise ends the program. It answers the samples it is fed until SIGTERM, SIGINT
or ``--count``, then publishes its retained ``offline`` status. Every status carries the
telemetry of the predictions served since the previous one (every ``telemetry_interval_s``).
Every step is logged, one line each, on stderr (the journal under systemd).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from sdk import tracing
from sdk.cli.console import console
from sdk.cli.federate import edge_app

__all__ = ["configure_logging", "register", "run"]

log = logging.getLogger("fedge.edge.device")


def configure_logging(level: str) -> None:
    """One line per event on stderr, at ``level``: what systemd's journal keeps."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="fedge.toml with [edge], [mqtt], [update].")],
    state_dir: Annotated[Path, typer.Option(help="Where installed versions and TUF metadata live.")],
    root_metadata: Annotated[Path, typer.Option(help="The repository's root.json this device was provisioned with.")],
    samples: Annotated[Path | None, typer.Option(help=".npy of inputs standing in for the sensor.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between two samples.")] = 1.0,
    count: Annotated[int, typer.Option(help="Stop after this many samples (0: run until stopped).")] = 0,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: [edge] log_level, INFO).")
    ] = None,
) -> None:
    """Serve predictions on this device and keep its model current, until stopped."""
    from sdk.backoff import Backoff
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.edge.background import CheckSchedule
    from sdk.edge.cloud_client import CloudClient
    from sdk.edge.config import LOG_LEVELS
    from sdk.edge.install import ModelStore
    from sdk.edge.status import DeviceLink
    from sdk.edge.telemetry import Telemetry
    from sdk.edge.updater import ModelUpdater, UpdateConfig, open_installed
    from sdk.errors import FedgeError
    from sdk.mqtt import MqttSettings

    edge = EdgeConfig.load(config)
    if log_level is not None:
        if log_level.upper() not in LOG_LEVELS:
            raise typer.BadParameter(f"expected one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
        edge = dataclasses.replace(edge, log_level=log_level.upper())
    configure_logging(edge.log_level)
    mqtt = MqttSettings.load(config)
    update = UpdateConfig.load(config)
    traces = tracing.TracingSettings.load(config)
    log.info(
        "device %s starts: model %s (%s), broker %s:%s, repository %s",
        update.device_id,
        update.model,
        update.target,
        mqtt.host,
        mqtt.port,
        update.repository_url,
    )
    store = ModelStore(state_dir)
    cloud = CloudClient(mqtt, device_id=update.device_id).start()
    telemetry = Telemetry()
    runtime = EdgeRuntime(open_installed(store, edge), edge, cloud=cloud, telemetry=telemetry)
    updater = ModelUpdater(store, update, root_metadata.read_bytes(), runtime=runtime, edge_config=edge)
    log.info(
        "serving %s", f"v{updater.installed_version}" if updater.installed_version is not None else "through the cloud"
    )
    schedule = CheckSchedule(
        min_interval_s=update.min_check_interval_s,
        every_s=update.check_interval_s,
        at_start=True,  # a device that was offline catches up, in the background, while it serves
        backoff=Backoff(base_s=update.retry_base_s, max_s=update.check_interval_s),  # only after a bug
    )
    link = DeviceLink(
        mqtt,
        update.device_id,
        update.model,
        on_notice=lambda: updater.check(reason="notice" if link.checks.for_poke else "schedule"),
        schedule=schedule,
        next_check_in=lambda outcome: outcome.retry_after_s,  # the updater's one policy: interval or backoff
        telemetry=telemetry,
        telemetry_interval_s=update.telemetry_interval_s,
    )
    updater.reporter = link.report
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    served = 0
    with runtime, link, tracing.configured(traces, service_name="fedge-device"):
        inputs = np.load(samples, allow_pickle=False) if samples else None
        while not stop.is_set() and (count == 0 or served < count):
            if inputs is not None:
                try:
                    result = runtime.predict(inputs[served % len(inputs)])
                    console.print(
                        f"{update.device_id}: label {result.label} ({result.confidence:.2f}) from {result.source}, "
                        f"v{result.model_version}, {result.latency_ms:.2f} ms"
                    )
                except FedgeError as exc:  # no local model and no cloud, or a bad sample: say so and go on
                    console.print(f"{update.device_id}: no answer ({type(exc).__name__}: {exc})")
                served += 1
            stop.wait(interval)
    log.info("stopped after %d samples; status offline", served)


def register(app: typer.Typer) -> None:
    """Add ``edge run`` to the ``edge`` group (``app`` gets the group from :mod:`sdk.cli.federate`)."""
    edge_app.command()(run)
