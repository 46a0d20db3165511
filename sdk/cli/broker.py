"""``fedge broker init``: a secured Mosquitto configuration (TLS, an account per client, an ACL).

Passwords go only into the secrets files (mode 0600); the command prints paths, never passwords.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdk.cli.console import console

__all__ = ["register"]

broker_app = typer.Typer(help="A secured MQTT broker for devices, workers and the release service.")


@broker_app.command("init")
def init(
    directory: Annotated[Path, typer.Option("--dir", help="Write the broker's files here (a new directory).")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Name or address clients use for the broker (repeat); localhost always."),
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Device id to create an account for (repeat).")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TLS listener port.")] = 8883,
    bind: Annotated[str | None, typer.Option(help="Address the TLS listener binds (default: every interface).")] = None,
    plain_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Also listen without TLS on 127.0.0.1 at this port.")
    ] = None,
    client_certs: Annotated[
        bool, typer.Option("--client-certs", help="Issue a client certificate per account and require one.")
    ] = False,
) -> None:
    """Write a CA, the broker's certificate, accounts, an ACL, mosquitto.conf and a [mqtt] fragment per account."""
    from sdk.broker.acl import SERVICE_ACCOUNTS
    from sdk.broker.provision import init_broker

    try:
        layout = init_broker(
            directory,
            hosts=host or (),
            devices=device or (),
            port=port,
            bind=bind,
            plain_port=plain_port,
            client_certs=client_certs,
        )
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dir") from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None
    lines = [
        f"broker configuration: {layout.config_file} (run: mosquitto -c {layout.config_file})",
        f"CA certificate to hand out: {layout.ca_cert}; CA key (keep offline): {layout.ca_key}",
        *(
            f"{account}: {layout.client_config(account)}, password in {layout.client_secret(account)}"
            for account in [*SERVICE_ACCOUNTS, *(device or ())]
        ),
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


@broker_app.command("add-device")
def add_device(
    directory: Annotated[Path, typer.Option("--dir", help="A directory that fedge broker init wrote.")],
    device: Annotated[list[str], typer.Option("--device", help="Device id to create an account for (repeat).")],
) -> None:
    """Add device accounts to a broker directory; then reload the broker (kill -HUP its pid)."""
    from sdk.broker.provision import add_devices

    try:
        layout = add_devices(directory, device)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dir") from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None
    for account in device:
        line = f"{account}: {layout.client_config(account)}, password in {layout.client_secret(account)}"
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"reload the broker to let them in: kill -HUP <pid of mosquitto -c {layout.config_file}>")


def register(app: typer.Typer) -> None:
    """Add the ``broker`` command group to ``app``."""
    app.add_typer(broker_app, name="broker")
