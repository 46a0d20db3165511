"""``fedge broker init`` and ``add-device``: a CA, certificates, accounts, the ACL, mosquitto.conf, client files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sdk.broker.acl import RELEASE_ACCOUNT, WORKER_ACCOUNT, acl_file, check_device_id
from sdk.broker.certificates import DEFAULT_HOSTS, Authority, load_authority, new_authority
from sdk.broker.layout import PASSWORD_ENV, BrokerDir
from sdk.broker.mosquitto_conf import mosquitto_conf
from sdk.broker.passwords import hash_line, new_password, password_file
from sdk.broker.secret_files import write_secret
from sdk.mqtt import MqttSettings

__all__ = ["add_devices", "init_broker"]

_ROLES = {WORKER_ACCOUNT: "inference workers", RELEASE_ACCOUNT: "the release service"}


def init_broker(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = (),
    devices: Sequence[str] = (),
    port: int = 8883,
    bind: str | None = None,
    plain_port: int | None = None,
    client_certs: bool = False,
) -> BrokerDir:
    """Write a secured broker directory; raise FileExistsError if ``directory`` already holds one.

    Raises:
        ValueError: a device id that is not a safe topic segment, a service account's name, or repeated.
    """
    for device_id in devices:
        check_device_id(device_id)
    if len(set(devices)) != len(devices):
        raise ValueError("a device id is given twice")
    if not 1 <= port <= 65535 or (plain_port is not None and not 1 <= plain_port <= 65535):
        raise ValueError("ports must be within 1..65535")
    layout = BrokerDir(Path(directory))
    if layout.config_file.exists():
        raise FileExistsError(f"{layout.root} already holds a broker configuration")
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.data_dir.mkdir(exist_ok=True)
    layout.clients_dir.mkdir(mode=0o700, exist_ok=True)

    names = list(dict.fromkeys([*hosts, *DEFAULT_HOSTS]))
    authority = new_authority()
    authority.write(layout.ca_cert, layout.ca_key)
    authority.issue(names[0], layout.server_cert, layout.server_key, hosts=names, server=True)

    roles = {**_ROLES, **{device_id: "a device" for device_id in devices}}
    passwords = {account: new_password() for account in roles}
    write_secret(layout.password_file, password_file(passwords).encode())
    layout.acl_file.write_text(acl_file())
    host = hosts[0] if hosts else "127.0.0.1"
    for account, role in roles.items():
        _client_files(layout, account, role, passwords[account], host, port, authority if client_certs else None)
    layout.config_file.write_text(
        mosquitto_conf(layout, port=port, bind=bind, plain_port=plain_port, client_certs=client_certs)
    )
    return layout


def add_devices(directory: str | os.PathLike[str], devices: Sequence[str]) -> BrokerDir:
    """Add device accounts to an existing broker directory (the broker reads them after a SIGHUP).

    Raises:
        ValueError: a device id that is not a safe topic segment, a service account's name, or taken.
        FileNotFoundError: ``directory`` holds no broker configuration.
    """
    layout = BrokerDir(Path(directory))
    if not layout.config_file.exists():
        raise FileNotFoundError(f"{layout.root} holds no broker configuration (fedge broker init)")
    taken = {line.split(":", 1)[0] for line in layout.password_file.read_text().splitlines() if ":" in line}
    for device_id in devices:
        check_device_id(device_id)
        if device_id in taken or list(devices).count(device_id) > 1:
            raise ValueError(f"device id {device_id!r} already has an account")
    template = MqttSettings.load(layout.client_config(WORKER_ACCOUNT), env={})
    authority = None
    if template.cert_file is not None:
        authority = load_authority(layout.ca_cert, layout.ca_key)
    passwords = {device_id: new_password() for device_id in devices}
    with layout.password_file.open("a") as out:
        out.writelines(hash_line(device_id, pw) + "\n" for device_id, pw in passwords.items())
    for device_id, pw in passwords.items():
        _client_files(layout, device_id, "a device", pw, template.host, template.port, authority)
    return layout


def _client_files(
    layout: BrokerDir, account: str, role: str, password: str, host: str, port: int, authority: Authority | None
) -> None:
    """Write the account's secrets file, its [mqtt] fragment and, with an ``authority``, its certificate."""
    write_secret(layout.client_secret(account), f"{PASSWORD_ENV}={password}\n".encode())
    if authority is not None:
        authority.issue(account, layout.client_cert(account), layout.client_key(account), server=False)
    cert = authority is not None
    layout.client_config(account).write_text(_fragment(layout, account, role, host=host, port=port, cert=cert))


def _fragment(layout: BrokerDir, account: str, role: str, *, host: str, port: int, cert: bool) -> str:
    quote = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"# [mqtt] for {account} ({role}): merge into fedge.toml. Hand out ca.crt with it (and fix ca_file's path);",
        f"# the password is not here: set {PASSWORD_ENV} from {layout.client_secret(account).name}.",
        "[mqtt]",
        f"host = {quote(host)}",
        f"port = {port}",
        "tls = true",
        f"ca_file = {quote(str(layout.ca_cert))}",
        f"username = {quote(account)}",
    ]
    if cert:
        lines += [
            f"cert_file = {quote(str(layout.client_cert(account)))}",
            f"key_file = {quote(str(layout.client_key(account)))}",
        ]
    return "\n".join(lines) + "\n"
