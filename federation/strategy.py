"""The server's strategy: Flower's aggregation (plain, robust, wrapped by the privacy mode) inside Fedge's guard.

```
FedgeStrategy            drops wrong-shape and non-finite updates, keeps a NaN aggregate out,
                         notes what each round sampled, kept and dropped
└── the privacy mode's wrapper (federation/privacy.py; DP: DifferentialPrivacyClientSideFixedClipping)
    └── FedAvg | FedProx | FedAdam | FedTrimmedAvg | FedMedian | Krum
```
Evaluation, the privacy budget and the candidate step are phases of the round
(federation/server_app.py), not of the strategy.
Under SecAgg+ the workflow hands the strategy only the unmasked sum: every result it
sees carries the same aggregate, never a client's own update.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from federation.settings import FederationSettings
from sdk.config import check

__all__ = ["FedgeStrategy", "array_digest", "build_strategy", "check_update"]

log = logging.getLogger("fedge.federation")


def array_digest(arrays: list[np.ndarray]) -> str:
    """A sha256 over the bytes of ``arrays`` (to compare updates without keeping them)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def check_update(arrays: list[np.ndarray], shapes: list[tuple[int, ...]]) -> str | None:
    """Why ``arrays`` cannot be aggregated with a model of ``shapes``, or None when it can."""
    if len(arrays) != len(shapes):
        return f"{len(arrays)} arrays, expected {len(shapes)}"
    for i, (array, shape) in enumerate(zip(arrays, shapes, strict=True)):
        if tuple(array.shape) != shape:
            return f"array {i} has shape {tuple(array.shape)}, expected {shape}"
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            return f"array {i} holds NaN, infinity or a non-float dtype"
    return None


def build_strategy(settings: FederationSettings, initial: list[np.ndarray]) -> Strategy:
    """Flower's aggregation for ``settings``: plain or robust, wrapped as the privacy mode needs."""
    check(
        settings.robust == "none" or settings.strategy != "fedadam",
        "robust",
        "robust aggregation replaces the server optimiser; combine it with fedavg or fedprox",
    )
    common: dict[str, Any] = {
        "fraction_fit": settings.clients_per_round / settings.num_clients,
        "min_fit_clients": settings.clients_per_round,
        "min_available_clients": settings.clients_per_round,
        "fraction_evaluate": 0.0,
        "min_evaluate_clients": 0,
        "initial_parameters": ndarrays_to_parameters(initial),
        "accept_failures": True,
    }
    base: Strategy
    if settings.robust == "trimmed-mean":
        base = FedTrimmedAvg(**common, beta=settings.trim_fraction)
    elif settings.robust == "median":
        base = FedMedian(**common)
    elif settings.robust == "krum":
        base = Krum(**common, num_malicious_clients=settings.byzantine_clients, num_clients_to_keep=0)
    elif settings.strategy == "fedprox":
        base = FedProx(**common, proximal_mu=settings.proximal_mu)
    elif settings.strategy == "fedadam":
        base = FedAdam(**common, eta=settings.server_lr, eta_l=settings.lr, tau=1e-3)
    else:
        base = FedAvg(**common)
    return settings.privacy_mode.wrap(base, settings)


class FedgeStrategy(Strategy):
    """Guards the updates of an inner Flower strategy and notes what each round sampled, kept and dropped."""

    def __init__(self, inner: Strategy, settings: FederationSettings, *, audit_dir: str | None = None) -> None:
        """Wrap ``inner``; with ``audit_dir``, write digests of the updates the server sees there."""
        self.inner = inner
        self.settings = settings
        self.audit_dir = Path(audit_dir) if audit_dir else None
        #: Clients sampled in the current round (0: none, the round did not start).
        self.sampled = 0
        #: ``clients``, ``dropped``, ``failures`` of the current round once it aggregated, else None.
        self.outcome: dict[str, int] | None = None
        self._shapes: list[tuple[int, ...]] = []

    def __repr__(self) -> str:
        return f"FedgeStrategy({self.inner!r})"

    def start_round(self) -> None:
        """Forget the previous round's notes."""
        self.sampled, self.outcome = 0, None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's initial parameters."""
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients through the inner strategy and add the run's training config."""
        self._shapes = [tuple(a.shape) for a in parameters_to_ndarrays(parameters)]
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        for _, fit_ins in instructions:
            fit_ins.config.update(
                {
                    "server-round": server_round,
                    "local-epochs": self.settings.local_epochs,
                    "proximal-mu": self.settings.proximal_mu if self.settings.strategy == "fedprox" else 0.0,
                }
            )
        self.sampled = len(instructions)
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Drop unusable updates, aggregate the rest, and refuse a non-finite aggregate."""
        kept, dropped = [], 0
        seen = []
        for proxy, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            seen.append(array_digest(arrays) if self.audit_dir else "")
            problem = check_update(arrays, self._shapes)
            if problem is not None:
                dropped += 1
                log.warning("round %d: dropped the update of node %s: %s", server_round, proxy.node_id, problem)
                continue
            kept.append((proxy, res))
        if self.audit_dir is not None:
            self._audit(server_round, seen)
        self.outcome = {"clients": len(kept), "dropped": dropped, "failures": len(failures)}
        if not kept:
            log.warning("round %d: no usable update; the global model stays as it was", server_round)
            return None, {}
        parameters, metrics = self.inner.aggregate_fit(server_round, kept, failures)
        if parameters is not None:
            problem = check_update(parameters_to_ndarrays(parameters), self._shapes)
            if problem is not None:
                log.error("round %d: unusable aggregate (%s); the global model stays as it was", server_round, problem)
                return None, {}
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation: the server validates each round's model itself."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to aggregate (no federated evaluation)."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """None: validation is a phase of the round (federation/server_app.py)."""
        return None

    def _audit(self, server_round: int, digests: list[str]) -> None:
        assert self.audit_dir is not None
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        path = self.audit_dir / f"server-round-{server_round}.json"
        path.write_text(json.dumps(digests))
