"""The Flower ClientApp: train the reference task on this node's data and send the new weights.

A node's data comes from its Dirichlet partition of the digits training split
(``partition-id`` and ``num-partitions`` in the node config, as the simulation engine
and ``fedge edge join --partition-id K`` set them). A device with its own data names a
function in the node config instead, ``data-provider = "mypackage.data:load"``, which
returns ``(x, y)``: float32 images ``(N, 1, 8, 8)`` and int64 labels.

Privacy runs as the Flower mods of the run config's privacy mode (federation/privacy.py):
``fixedclipping_mod`` clips the update before it leaves (DP), ``secaggplus_mod`` masks it
(SecAgg+), clipping inside masking.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import make_ffn

from federation.settings import FederationSettings
from federation.strategy import array_digest
from federation.task import DigitsCNN, dirichlet_partition, get_weights, load_split, set_weights, train

__all__ = ["DigitsClient", "app", "load_node_data"]

log = logging.getLogger("fedge.federation")


def load_node_data(context: Context, settings: FederationSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """This node's ``(x, y)`` and its partition id (-1 for data from a provider)."""
    provider = context.node_config.get("data-provider")
    if provider:
        module, _, name = str(provider).partition(":")
        x, y = getattr(importlib.import_module(module), name)()
        return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64), -1
    partition = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", settings.num_clients))
    split = load_split(settings.seed)
    parts = dirichlet_partition(split.y_train, num_partitions, settings.alpha, seed=settings.seed)
    index = parts[partition]
    return split.x_train[index], split.y_train[index], partition


class DigitsClient(NumPyClient):
    """Trains the digits CNN on one node's data."""

    def __init__(self, x: np.ndarray, y: np.ndarray, partition: int, settings: FederationSettings) -> None:
        """Hold this node's data and the run's settings."""
        self.x, self.y, self.partition, self.settings = x, y, partition, settings
        self.model = DigitsCNN()

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Train ``local-epochs`` from the global weights; return the new weights."""
        set_weights(self.model, parameters)
        server_round = int(config.get("server-round", 0))
        loss = train(
            self.model,
            self.x,
            self.y,
            epochs=int(config.get("local-epochs", self.settings.local_epochs)),
            lr=self.settings.lr,
            batch_size=self.settings.batch_size,
            seed=self.settings.seed * 100_003 + server_round * 1009 + self.partition,
            proximal_mu=float(config.get("proximal-mu", 0.0)),
        )
        weights = get_weights(self.model)
        if self.settings.audit_dir:
            _audit(self.settings.audit_dir, server_round, self.partition, weights)
        # DP calibrates its noise to one client's clipped update in a plain average: equal weights.
        examples = 1 if self.settings.differential_privacy else len(self.y)
        return weights, examples, {"loss": float(loss), "partition": self.partition}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        """Loss and accuracy of the global weights on this node's data."""
        from federation.task import evaluate

        set_weights(self.model, parameters)
        loss, acc = evaluate(self.model, self.x, self.y)
        return loss, len(self.y), {"accuracy": acc}


def _audit(audit_dir: str, server_round: int, partition: int, weights: list[np.ndarray]) -> None:
    path = Path(audit_dir) / f"client-round-{server_round}-partition-{partition}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(array_digest(weights)))


def client_fn(context: Context) -> object:
    """Build this node's client from the run config and node config."""
    torch.set_num_threads(1)  # many clients share few cores in simulation
    settings = FederationSettings.from_run_config(context.run_config)
    x, y, partition = load_node_data(context, settings)
    return DigitsClient(x, y, partition, settings).to_client()


def privacy_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Run the mods of the run config's privacy mode around the client."""
    settings = FederationSettings.from_run_config(context.run_config)
    return make_ffn(call_next, settings.privacy_mode.client_mods())(msg, context)


app = ClientApp(client_fn=client_fn, mods=[privacy_mod])
