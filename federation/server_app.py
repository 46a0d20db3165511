"""The Flower ServerApp: rounds of private, guarded aggregation; each accepted global model a new version.

:func:`run_federation` is the whole round, its phases in order as in Flower's
``Strategy.start()``: stop conditions (the privacy budget), train (configure, send,
receive, validate the updates, aggregate them robustly, DP noise: the privacy mode's fit
workflow and strategy wrapper), privacy accounting, evaluation of the global model on the
held-out validation split, and the candidate step (the gate, then export and registration:
never at chance level, never below the floor or the current release; with ``release``, the
release pipeline exports, checks, registers and releases it staged; a refusal is recorded
with its reason in the report's ``refusals``).
The run config is validated before any node is contacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.supercore import log as flwr_log

from federation.gate import ValidationGate, chance_floor
from federation.release_pipeline import ReleasePipeline
from federation.settings import FederationSettings
from federation.strategy import FedgeStrategy, build_strategy
from federation.task import LABELS, DigitsCNN, Split, evaluate, get_weights, load_split, set_seed, set_weights
from federation.versions import VersionStore, split_key
from sdk.errors import ExportError, GateRefused, RegistryError, ReleaseRefused
from sdk.registry_client import RegistryClient

__all__ = ["CandidateStep", "app", "run_federation"]

log = logging.getLogger("fedge.federation")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls with the run's grid and context."""
    settings = FederationSettings.from_run_config(context.run_config)
    run_federation(grid, context, settings)


def run_federation(grid: Grid, context: Context, settings: FederationSettings) -> dict[str, Any]:
    """Run every round of ``settings`` and return (and write, with ``report-path``) the report."""
    # The clients' training is every round's critical path, and on a loaded machine an idle intra-op
    # pool of the server's torch spins on the cores they need; a 270-sample validation needs no pool.
    torch.set_num_threads(1)
    set_seed(settings.seed)
    model = _initial_model(settings)
    split = load_split(settings.seed)
    privacy = settings.privacy_mode
    accountant = privacy.accountant(settings)
    candidates = CandidateStep(settings, split, run_id=str(context.run_id))
    guard = FedgeStrategy(build_strategy(settings, get_weights(model)), settings, audit_dir=settings.audit_dir or None)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=settings.num_server_rounds), strategy=guard)
    fit = privacy.fit_workflow(settings)
    rounds: list[dict[str, Any]] = []
    stopped: str | None = None

    with _nodes_tracked(grid, legacy):
        _set_global(legacy, get_weights(model))
        for server_round in range(1, settings.num_server_rounds + 1):
            flwr_log(logging.INFO, "[ROUND %s]", server_round)  # `fedge federate` follows the run by this line

            # --- STOP CONDITIONS -------------------------------------------------------
            stopped = accountant.refusal() if accountant is not None else None
            if stopped is not None:
                log.error(stopped)
                break

            # --- TRAIN (ClientApp side): configure, send, receive, guard, aggregate ---
            started = time.perf_counter()
            guard.start_round()
            legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = server_round
            fit(grid, legacy)
            if not guard.sampled:
                log.warning("round %d: no client was sampled", server_round)
                continue

            # --- PRIVACY ACCOUNTING ----------------------------------------------------
            record: dict[str, Any] = {"round": server_round}
            if accountant is not None:
                accountant.spend()
            if guard.outcome is None:
                continue  # the clients were asked but the round never aggregated

            # --- EVALUATE (ServerApp side): the global model on the validation split ---
            set_weights(model, _global_arrays(legacy))
            loss, accuracy = evaluate(model, split.x_val, split.y_val)
            record.update(val_loss=round(loss, 5), val_accuracy=round(accuracy, 5))
            epsilon = None if accountant is None else accountant.epsilon

            # --- CANDIDATE: the gate, then export and registration ---------------------
            record.update(candidates.consider(server_round, model, loss=loss, accuracy=accuracy, epsilon=epsilon))

            record.update(guard.outcome, seconds=round(time.perf_counter() - started, 3))
            if accountant is not None:
                record.update(epsilon=round(epsilon, 4), delta=settings.delta)
            rounds.append(record)

    set_weights(model, _global_arrays(legacy))
    _, test_accuracy = evaluate(model, split.x_test, split.y_test)
    report: dict[str, Any] = {
        "run_id": context.run_id,
        "settings": settings.to_run_config(),
        "gate_floor": candidates.gate.floor,
        "rounds": rounds,
        "candidates": candidates.kept,
        "refusals": candidates.refusals,
        "stopped": stopped,
        "test_accuracy": round(test_accuracy, 5),
        "epsilon": None if accountant is None else round(accountant.epsilon, 4),
    }
    if settings.report_path:
        _write_json(Path(settings.report_path), report)
    return report


class CandidateStep:
    """Decides on each round's global model (the gate) and keeps the accepted ones as versions."""

    def __init__(self, settings: FederationSettings, split: Split, *, run_id: str) -> None:
        """The gate and version store of this run (no store: nothing is kept, nothing is gated)."""
        self.settings = settings
        self.split = split
        self.run_id = run_id
        self.store = _version_store(settings)
        self.validation = split_key(settings.seed, len(split.y_val))
        self.gate = _gate(settings, split, self.store, self.validation)
        self.pipeline = (
            ReleasePipeline.from_settings(settings, self.store, split) if settings.release and self.store else None
        )
        #: The report's ``candidates`` and ``refusals``.
        self.kept: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []

    def consider(
        self, server_round: int, model: DigitsCNN, *, loss: float, accuracy: float, epsilon: float | None
    ) -> dict[str, Any]:
        """Gate the round's model and keep it when accepted; return what the round's record adds."""
        if self.store is None:
            return {}
        decision = self.gate.consider(server_round, accuracy)
        if not decision.accepted:
            log.info("round %d not a candidate: %s", server_round, decision.reason)
            self.refusals.append({**decision.as_record(), "error": GateRefused.__name__})
            return {}
        settings = self.settings
        lineage = {
            "source": "federation",
            "run_id": self.run_id,
            "round": server_round,
            "privacy": settings.privacy,
            "epsilon": epsilon,
            "delta": settings.delta if epsilon is not None else None,
            "clients": settings.clients_per_round,
            "strategy": settings.strategy,
            "robust": settings.robust,
            "metrics": {"val_accuracy": accuracy, "val_loss": loss},
            "validation_split": self.validation,
            "gate": decision.as_record(),
        }
        try:
            if self.pipeline is not None:
                outcome = self.pipeline.release(model, lineage)
                stored = outcome.stored
            else:
                outcome, stored = None, self.store.export(model, self.split, lineage, tflite=settings.export_tflite)
        except (ExportError, RegistryError) as exc:
            log.warning("round %d model not kept: %s", server_round, exc)
            self.gate.withdraw(decision)
            refused = {"accepted": False, "reason": str(exc), "error": type(exc).__name__}
            self.refusals.append({**decision.as_record(), **refused})
            return {}
        self.kept.append(
            {
                "version": stored.version,
                "round": server_round,
                "val_accuracy": accuracy,
                "directory": str(stored.directory),
                "registered": None if self.store.registry is None else stored.registry_error is None,
                **({"registry_error": stored.registry_error} if stored.registry_error else {}),
                **({"release": outcome.as_record()} if outcome else {}),
            }
        )
        if outcome is not None and not outcome.released:  # registered, never released: the gate's bar goes back
            self.gate.withdraw(decision)
            refused = {"accepted": False, "reason": outcome.reason, "error": ReleaseRefused.__name__}
            self.refusals.append({**decision.as_record(), **refused})
        return {"candidate_version": stored.version}


def _initial_model(settings: FederationSettings) -> DigitsCNN:
    """A fresh model, or the one of ``init-checkpoint``."""
    if not settings.init_checkpoint:
        return DigitsCNN()
    from federation.export import load_checkpoint

    model, _ = load_checkpoint(settings.init_checkpoint)
    return model


def _version_store(settings: FederationSettings) -> VersionStore | None:
    """Where accepted models go; with ``registry-url``, numbered by the registry (FEDGE_ADMIN_KEY, FEDGE_API_KEY)."""
    if not settings.versions_dir:
        return None
    registry = RegistryClient.from_env(settings.registry_url) if settings.registry_url else None
    return VersionStore(settings.versions_dir, settings.model_name, registry=registry)


def _gate(settings: FederationSettings, split: Split, store: VersionStore | None, validation: dict) -> ValidationGate:
    """The gate of this run: chance floor of the split, min-accuracy, and the release (given or found)."""
    found = store.release_accuracy(validation) if store is not None else None
    given = settings.baseline_accuracy or None
    release = max((a for a in (given, found) if a is not None), default=None)
    return ValidationGate(
        chance=chance_floor(split.y_val, len(LABELS)),
        min_accuracy=settings.min_accuracy,
        release_accuracy=release,
        max_drop=settings.max_accuracy_drop,
        margin=settings.gate_margin,
    )


@contextlib.contextmanager
def _nodes_tracked(grid: Grid, context: LegacyContext) -> Iterator[None]:
    """Keep the legacy client manager in step with the nodes the grid sees, from the first registration on."""
    thread, stop, registered = start_update_client_manager_thread(grid, context.client_manager)
    registered.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _set_global(context: LegacyContext, arrays: list[np.ndarray]) -> None:
    """Start the legacy state: the global arrays and the round counter the fit workflows read."""
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(arrays), keep_input=True
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.START_TIME: time.time()})


def _global_arrays(context: LegacyContext) -> list[np.ndarray]:
    """The global model's arrays as the last aggregation left them."""
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, default=str)
    os.replace(tmp, path)
