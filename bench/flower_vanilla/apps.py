"""Plain FedAvg and a plain NumPyClient: the baseline our ServerApp's round time is compared with."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from federation.settings import FederationSettings
from federation.task import DigitsCNN, dirichlet_partition, get_weights, load_split, set_seed, set_weights, train

server = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes how long each round's fit took, from sampling to aggregate."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seconds: list[float] = []
        self._start = 0.0

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: D102
        self._start = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # noqa: D102
        out = super().aggregate_fit(server_round, results, failures)
        self.seconds.append(time.perf_counter() - self._start)
        return out


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Run plain FedAvg for the configured rounds and write the round times."""
    rounds, clients = int(context.run_config["num-server-rounds"]), int(context.run_config["num-clients"])
    set_seed(0)
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        min_fit_clients=clients,
        min_available_clients=clients,
        fraction_evaluate=0.0,
        initial_parameters=ndarrays_to_parameters(get_weights(DigitsCNN())),
    )
    DefaultWorkflow()(grid, LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy))
    Path(str(context.run_config["report-path"])).write_text(json.dumps({"seconds": strategy.seconds}))


class PlainClient(NumPyClient):
    """The same local training as Fedge's client, and nothing else."""

    def __init__(self, x: np.ndarray, y: np.ndarray, settings: FederationSettings) -> None:
        self.x, self.y, self.settings = x, y, settings
        self.model = DigitsCNN()

    def fit(self, parameters, config):  # noqa: D102
        set_weights(self.model, parameters)
        train(self.model, self.x, self.y, epochs=self.settings.local_epochs, lr=self.settings.lr, batch_size=16)
        return get_weights(self.model), len(self.y), {}


def client_fn(context: Context):
    """A client on this node's partition, with Fedge's default local work."""
    torch.set_num_threads(1)
    settings = FederationSettings()
    partition = int(context.node_config.get("partition-id", 0))
    parts = int(context.node_config.get("num-partitions", 3))
    split = load_split(0)
    index = dirichlet_partition(split.y_train, parts, settings.alpha, seed=0)[partition]
    return PlainClient(split.x_train[index], split.y_train[index], settings).to_client()


client = ClientApp(client_fn=client_fn)
