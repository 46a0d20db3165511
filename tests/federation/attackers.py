"""A test-only Flower app: Fedge's own ServerApp and ClientApp, with one client turned attacker.

A real client cannot be made malicious on demand, so the robustness tests inject the
fault here, never in the production run config: this app's run config is Fedge's plus
``attack`` and ``attack-partition``, which are taken out before any of Fedge's code sees the
config. :func:`write_app` lays the app out (this module and a pyproject.toml derived from
``federation/app/pyproject.toml``) for ``flwr run``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import ClientApp
from flwr.server import Grid, ServerApp

from federation.client_app import DigitsClient, load_node_data, privacy_mod
from federation.runner import APP_DIR
from federation.server_app import run_federation
from federation.settings import FederationSettings

__all__ = ["ATTACKS", "client", "server", "write_app"]

#: What the attacker sends instead of its honest update.
ATTACKS = ("scale", "sign-flip", "nan", "wrong-shape", "hang")
#: The run-config keys this app adds to Fedge's, with their defaults.
KEYS = {"attack": "none", "attack-partition": -1}


def write_app(directory: Path) -> Path:
    """Lay out this app in ``directory``: Fedge's run config plus the attack keys, and this module's components."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (APP_DIR / "pyproject.toml").read_text()
    text = text.replace('"federation.server_app:app"', '"attackers:server"')
    text = text.replace('"federation.client_app:app"', '"attackers:client"')
    tables = [line for line in text.splitlines() if line.startswith("[")]
    assert tables[-1] == "[tool.flwr.app.config]", "the run config must be the last table of the app's pyproject.toml"
    text = text.rstrip() + "\n" + "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in KEYS.items())
    (directory / "pyproject.toml").write_text(text)
    shutil.copy(Path(__file__), directory / "attackers.py")
    return directory


def fedge_context(context: Context) -> Context:
    """The context as Fedge's code must see it: the run config without this app's keys (the same state)."""
    run_config = {k: v for k, v in context.run_config.items() if k not in KEYS}
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,
        run_config=run_config,
        series_id=context.series_id,
    )


def attacked(
    attack: str, weights: list[np.ndarray], received: list[np.ndarray], server_round: int, timeout_s: float
) -> list[np.ndarray]:
    """What the attacker sends instead of ``weights`` (trained from ``received``)."""
    if attack == "scale":
        return [r + 100.0 * (w - r) for w, r in zip(weights, received, strict=True)]
    if attack == "sign-flip":
        return [r - 10.0 * (w - r) for w, r in zip(weights, received, strict=True)]
    if attack == "nan":
        return [np.full_like(w, np.nan) for w in weights]
    if attack == "hang":
        if server_round == 1:  # silent until well past round 1's timeout, then back for the rounds after it
            time.sleep(timeout_s * 2)
        return weights
    if attack == "wrong-shape":
        return [w[..., :1] for w in weights]
    raise ValueError(f"unknown attack {attack!r}; expected one of {ATTACKS}")


class Attacker(DigitsClient):
    """An honest client's training, then the attack on what it sends."""

    def __init__(self, x: np.ndarray, y: np.ndarray, partition: int, settings: FederationSettings, attack: str):
        """Train like an honest client on ``(x, y)``, send what ``attack`` makes of it."""
        super().__init__(x, y, partition, settings)
        self.attack = attack

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Train, then attack the update."""
        weights, examples, metrics = super().fit(parameters, config)
        server_round = int(config.get("server-round", 0))
        sent = attacked(self.attack, weights, parameters, server_round, self.settings.round_timeout_s)
        return sent, examples, metrics


server = ServerApp()


@server.main()
def _main(grid: Grid, context: Context) -> None:
    """Fedge's round, unchanged, on Fedge's own run config."""
    settings = FederationSettings.from_run_config(fedge_context(context).run_config)
    run_federation(grid, context, settings)


def client_fn(context: Context) -> object:
    """Fedge's client, or the attacker on the attacked partition."""
    torch.set_num_threads(1)
    settings = FederationSettings.from_run_config(fedge_context(context).run_config)
    x, y, partition = load_node_data(context, settings)
    attack, target = str(context.run_config["attack"]), int(context.run_config["attack-partition"])
    if attack != "none" and partition == target:
        return Attacker(x, y, partition, settings, attack).to_client()
    return DigitsClient(x, y, partition, settings).to_client()


def fedge_privacy_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Fedge's privacy mods on Fedge's run config; the client itself still sees the attack keys."""
    return privacy_mod(msg, fedge_context(context), lambda m, _: call_next(m, context))


client = ClientApp(client_fn=client_fn, mods=[fedge_privacy_mod])
