"""``fedge broker init``: write a CA, certificates, accounts, the ACL, mosquitto.conf and a fragment per account."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sdk.broker.acl import RELEASE_ACCOUNT, WORKER_ACCOUNT, acl_file, check_device_id
from sdk.broker.certificates import DEFAULT_HOSTS, new_authority
from sdk.broker.layout import PASSWORD_ENV, BrokerDir
from sdk.broker.mosquitto_conf import mosquitto_conf
from sdk.broker.passwords import new_password, password_file
from sdk.broker.secret_files import write_secret

__all__ = ["init_broker"]

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
    for account, role in roles.items():
        write_secret(layout.client_secret(account), f"{PASSWORD_ENV}={passwords[account]}\n".encode())
        if client_certs:
            authority.issue(account, layout.client_cert(account), layout.client_key(account), server=False)
        layout.client_config(account).write_text(
            _fragment(layout, account, role, host=hosts[0] if hosts else "127.0.0.1", port=port, cert=client_certs)
        )
    layout.config_file.write_text(
        mosquitto_conf(layout, port=port, bind=bind, plain_port=plain_port, client_certs=client_certs)
    )
    return layout


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
