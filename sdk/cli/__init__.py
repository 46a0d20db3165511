"""The ``fedge`` console script: one typer app, a module per command group.

Commands import what they need when they run, so ``fedge --help`` stays fast and a
device with only the edge extra can run ``fedge predict`` and ``fedge info``.
"""

from __future__ import annotations

import os
import sys

# LiteRT and litert-torch log through absl in C++; keep the console for our own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer

from sdk.cli import broker, calibrate, cloud, demo, device, federate, models, registry
from sdk.cli.console import err_console
from sdk.errors import FedgeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="fedge",
    help="Edge-to-cloud federated inference: export, run and serve quantized models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models.register(app)
demo.register(app)
calibrate.register(app)
cloud.register(app)
federate.register(app)
registry.register(app)
device.register(app)
broker.register(app)


def main() -> None:
    """Run the CLI; a FedgeError becomes one red line and exit status 2."""
    try:
        app()
    except FedgeError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(2)
