"""Where ``fedge broker init`` puts each file, and how a client reads its account back."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from sdk.mqtt import MqttSettings, parse_address

__all__ = ["PASSWORD_ENV", "BrokerDir"]

#: The variable that carries an account's password (MqttSettings reads ``[mqtt] password`` from it).
PASSWORD_ENV = "FEDGE_MQTT__PASSWORD"


@dataclass(frozen=True)
class BrokerDir:
    """The files of one broker directory; ``BrokerDir(path).settings("pi-7")`` connects as that account."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def config_file(self) -> Path:
        """mosquitto.conf: ``mosquitto -c`` this file."""
        return self.root / "mosquitto.conf"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate every client trusts (handed out with each account)."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA key (0600): it signs certificates; keep it off the broker host once init is done."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The broker's certificate."""
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        """The broker's key (0600)."""
        return self.root / "server.key"

    @property
    def password_file(self) -> Path:
        """Hashed passwords in Mosquitto's own format (0600)."""
        return self.root / "passwd"

    @property
    def acl_file(self) -> Path:
        """Who may publish and read which topic."""
        return self.root / "acl"

    @property
    def data_dir(self) -> Path:
        """Mosquitto's persistence (sessions and queued messages)."""
        return self.root / "data"

    @property
    def clients_dir(self) -> Path:
        """One ``[mqtt]`` fragment, one secrets file and (optionally) a certificate per account."""
        return self.root / "clients"

    def client_config(self, account: str) -> Path:
        """The account's fedge.toml ``[mqtt]`` fragment (no password in it)."""
        return self.clients_dir / f"{account}.toml"

    def client_secret(self, account: str) -> Path:
        """The account's password as ``FEDGE_MQTT__PASSWORD=...`` (0600), for an EnvironmentFile or ``env``."""
        return self.clients_dir / f"{account}.env"

    def client_cert(self, account: str) -> Path:
        """The account's client certificate (with ``--client-certs``)."""
        return self.clients_dir / f"{account}.crt"

    def client_key(self, account: str) -> Path:
        """The account's client key (0600, with ``--client-certs``)."""
        return self.clients_dir / f"{account}.key"

    def password(self, account: str) -> str:
        """The account's password, read from its secrets file."""
        for line in self.client_secret(account).read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == PASSWORD_ENV:
                return value.strip()
        raise KeyError(f"{self.client_secret(account)} holds no {PASSWORD_ENV}")

    def settings(self, account: str, address: str | None = None) -> MqttSettings:
        """The account's MqttSettings from its fragment and password; ``address`` (HOST:PORT) overrides the broker's."""
        env = {**os.environ, PASSWORD_ENV: self.password(account)}
        settings = MqttSettings.load(self.client_config(account), env=env)
        if address is not None:
            host, port = parse_address(address)
            settings = replace(settings, host=host, port=port)
        return settings
