"""The server's strategy: Flower's aggregation (plain, robust or DP) inside a guard that Fedge adds.

```
FedgeStrategy            drops wrong-shape and non-finite updates, keeps a NaN aggregate out,
                         spends the privacy budget, evaluates on the validation split, gates versions
└── DifferentialPrivacyClientSideFixedClipping      (privacy dp, secagg+dp)
    └── FedAvg | FedProx | FedAdam | FedTrimmedAvg | FedMedian | Krum
```
Under SecAgg+ the workflow hands the strategy only the unmasked sum: every result it
sees carries the same aggregate, never a client's own update.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
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
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from federation.accountant import PrivacyAccountant
from federation.settings import FederationSettings
from sdk.config import check

__all__ = ["FedgeStrategy", "RoundEvaluator", "array_digest", "build_strategy", "check_update"]

log = logging.getLogger("fedge.federation")

#: ``evaluate(round, arrays) -> (loss, metrics)``: the server-side validation of a global model.
RoundEvaluator = Callable[[int, list[np.ndarray]], tuple[float, dict[str, Scalar]]]


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
    """Flower's aggregation for ``settings``: plain, robust, and wrapped for DP where asked."""
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
    if settings.differential_privacy:
        base = DifferentialPrivacyClientSideFixedClipping(
            base,
            noise_multiplier=settings.noise_multiplier,
            clipping_norm=settings.clipping_norm,
            num_sampled_clients=settings.clients_per_round,
        )
    return base


class FedgeStrategy(Strategy):
    """Guards, accounts for and evaluates every round of an inner Flower strategy."""

    def __init__(
        self,
        inner: Strategy,
        settings: FederationSettings,
        evaluate: RoundEvaluator,
        *,
        accountant: PrivacyAccountant | None = None,
        audit_dir: str | None = None,
    ) -> None:
        """Wrap ``inner``; ``evaluate`` validates each round's global model on the server."""
        self.inner = inner
        self.settings = settings
        self.evaluate_round = evaluate
        self.accountant = accountant
        self.audit_dir = Path(audit_dir) if audit_dir else None
        self.stopped: str | None = None
        self.rounds: list[dict[str, Any]] = []
        self._shapes: list[tuple[int, ...]] = []
        self._round_started = time.perf_counter()
        self._pending: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"FedgeStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's initial parameters."""
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients, unless the run stopped or this round would overspend the privacy budget."""
        if self.stopped:
            return []
        if self.accountant is not None and self.settings.epsilon_budget > 0:
            after = self.accountant.epsilon_after(self.settings.sample_rate, self.settings.noise_multiplier)
            if after > self.settings.epsilon_budget:
                self.stopped = (
                    f"privacy budget exhausted: round {server_round} would spend epsilon {after:.3f} > "
                    f"{self.settings.epsilon_budget:g} (delta {self.settings.delta:g}); "
                    f"stopping after {server_round - 1} rounds at epsilon {self.accountant.epsilon:.3f}"
                )
                log.error(self.stopped)
                return []
        self._shapes = [tuple(a.shape) for a in parameters_to_ndarrays(parameters)]
        self._round_started = time.perf_counter()
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        for _, fit_ins in instructions:
            fit_ins.config.update(
                {
                    "server-round": server_round,
                    "local-epochs": self.settings.local_epochs,
                    "proximal-mu": self.settings.proximal_mu if self.settings.strategy == "fedprox" else 0.0,
                }
            )
        if instructions and self.accountant is not None:
            self.accountant.spend(self.settings.sample_rate, self.settings.noise_multiplier)
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
        self._pending = {"clients": len(kept), "dropped": dropped, "failures": len(failures)}
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
        """The inner strategy's federated evaluation (off by default: the server validates)."""
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The inner strategy's aggregation of federated evaluation."""
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """Validate the global model of this round and record the round."""
        if server_round > 0 and (self.stopped or not self._pending):
            return None  # no training happened in this round
        loss, metrics = self.evaluate_round(server_round, parameters_to_ndarrays(parameters))
        if server_round > 0:
            record = {
                "round": server_round,
                "val_loss": round(loss, 5),
                **metrics,
                **self._pending,
                "seconds": round(time.perf_counter() - self._round_started, 3),
            }
            if self.accountant is not None:
                record["epsilon"] = round(self.accountant.epsilon, 4)
                record["delta"] = self.settings.delta
            self.rounds.append(record)
            self._pending = {}
        return loss, metrics

    def _audit(self, server_round: int, digests: list[str]) -> None:
        assert self.audit_dir is not None
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        path = self.audit_dir / f"server-round-{server_round}.json"
        path.write_text(json.dumps(digests))
