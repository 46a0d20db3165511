"""The Flower ServerApp: rounds of private, guarded aggregation; each accepted global model a new version.

Per round: sample clients, train on their data, aggregate (SecAgg+ when the privacy mode
asks: the server only sees the masked sum), add DP noise (client-side clipping, noise on
the aggregate, epsilon from the RDP accountant), validate the global model on the held-out
validation split, and export it as a candidate version when the gate accepts it (never at
chance level, never below the floor or the current release); with ``release``, the release
pipeline exports, checks, registers and releases it. A refusal is recorded with its reason in
the report's ``refusals``.
The run config is validated before any node is contacted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from federation.accountant import PrivacyAccountant
from federation.gate import ValidationGate, chance_floor
from federation.release_pipeline import ReleasePipeline
from federation.settings import FederationSettings
from federation.strategy import FedgeStrategy, build_strategy
from federation.task import LABELS, DigitsCNN, Split, evaluate, get_weights, load_split, set_seed, set_weights
from federation.versions import VersionStore, split_key
from federation.workflow import fit_with_timeout
from sdk.errors import ExportError, GateRefused, RegistryError, ReleaseRefused
from sdk.registry_client import RegistryClient

__all__ = ["app", "run_federation"]

log = logging.getLogger("fedge.federation")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls with the run's grid and context."""
    settings = FederationSettings.from_run_config(context.run_config)
    run_federation(grid, context, settings)


def run_federation(grid: Grid, context: Context, settings: FederationSettings) -> dict[str, Any]:
    """Run every round of ``settings`` and return (and write, with ``report-path``) the report."""
    set_seed(settings.seed)
    model = DigitsCNN()
    if settings.init_checkpoint:
        from federation.export import load_checkpoint

        model, _ = load_checkpoint(settings.init_checkpoint)
    initial = get_weights(model)
    split = load_split(settings.seed)
    accountant = PrivacyAccountant(settings.delta) if settings.differential_privacy else None
    store = _version_store(settings)
    validation = split_key(settings.seed, len(split.y_val))
    gate = _gate(settings, split, store, validation)
    pipeline = ReleasePipeline.from_settings(settings, store, split) if settings.release and store else None
    candidates: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    report: dict[str, Any] = {"run_id": context.run_id, "settings": settings.to_run_config(), "gate_floor": gate.floor}

    def evaluate_round(server_round: int, arrays: list[np.ndarray]) -> tuple[float, dict[str, Any]]:
        set_weights(model, arrays)
        loss, acc = evaluate(model, split.x_val, split.y_val)
        metrics: dict[str, Any] = {"val_accuracy": round(acc, 5)}
        if server_round == 0 or store is None:
            return loss, metrics
        decision = gate.consider(server_round, acc)
        if not decision.accepted:
            log.info("round %d not a candidate: %s", server_round, decision.reason)
            refusals.append({**decision.as_record(), "error": GateRefused.__name__})
            return loss, metrics
        epsilon = accountant.epsilon if accountant else None
        lineage = {
            "source": "federation",
            "run_id": str(context.run_id),
            "round": server_round,
            "privacy": settings.privacy,
            "epsilon": epsilon,
            "delta": settings.delta if accountant else None,
            "clients": settings.clients_per_round,
            "strategy": settings.strategy,
            "robust": settings.robust,
            "metrics": {"val_accuracy": acc, "val_loss": loss},
            "validation_split": validation,
            "gate": decision.as_record(),
        }
        try:
            if pipeline is not None:
                outcome = pipeline.release(model, lineage)
                stored = outcome.stored
            else:
                outcome, stored = None, store.export(model, split, lineage, tflite=settings.export_tflite)
        except (ExportError, RegistryError) as exc:
            log.warning("round %d model not kept: %s", server_round, exc)
            gate.withdraw(decision)
            refused = {"accepted": False, "reason": str(exc), "error": type(exc).__name__}
            refusals.append({**decision.as_record(), **refused})
            return loss, metrics
        metrics["candidate_version"] = stored.version
        candidates.append(
            {
                "version": stored.version,
                "round": server_round,
                "val_accuracy": acc,
                "directory": str(stored.directory),
                "registered": None if store.registry is None else stored.registry_error is None,
                **({"registry_error": stored.registry_error} if stored.registry_error else {}),
                **({"release": outcome.as_record()} if outcome else {}),
            }
        )
        if outcome is not None and not outcome.released:  # registered, never released: the gate's bar goes back
            gate.withdraw(decision)
            refused = {"accepted": False, "reason": outcome.reason, "error": ReleaseRefused.__name__}
            refusals.append({**decision.as_record(), **refused})
        return loss, metrics

    strategy = FedgeStrategy(
        build_strategy(settings, initial),
        settings,
        evaluate_round,
        accountant=accountant,
        audit_dir=settings.audit_dir or None,
    )
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=settings.num_server_rounds), strategy=strategy)
    if settings.secure_aggregation:
        fit = SecAggPlusWorkflow(
            num_shares=settings.clients_per_round,
            reconstruction_threshold=max(2, settings.clients_per_round // 2 + 1),
            timeout=settings.round_timeout_s,
        )
    else:
        fit = fit_with_timeout(settings.round_timeout_s)
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    set_weights(model, list(_final_arrays(legacy)))
    _, test_accuracy = evaluate(model, split.x_test, split.y_test)
    report.update(
        rounds=strategy.rounds,
        candidates=candidates,
        refusals=refusals,
        stopped=strategy.stopped,
        test_accuracy=round(test_accuracy, 5),
        epsilon=round(accountant.epsilon, 4) if accountant else None,
    )
    if settings.report_path:
        _write_json(Path(settings.report_path), report)
    return report


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


def _final_arrays(context: LegacyContext) -> list[np.ndarray]:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import parameters_to_ndarrays
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, default=str)
    os.replace(tmp, path)
