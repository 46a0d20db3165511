"""The federation's run config: typed, validated before any node is contacted, every error naming its key.

The same keys live in ``federation/app/pyproject.toml`` (``[tool.flwr.app.config]``),
in ``flwr run --run-config``, and in ``fedge federate`` options; Flower spells them
with dashes (``local-epochs``), the dataclass with underscores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from federation.privacy import MODES, PrivacyMode
from sdk.config import check, from_mapping
from sdk.manifest import ARTIFACT_KINDS

__all__ = ["PRIVACY_MODES", "ROBUST_MODES", "STRATEGIES", "FederationSettings", "Robust", "Strategy"]

Strategy = Literal["fedavg", "fedprox", "fedadam"]
Robust = Literal["none", "trimmed-mean", "median", "krum"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
#: The ``privacy`` values: the modes of federation/privacy.py.
PRIVACY_MODES: tuple[str, ...] = tuple(MODES)
ROBUST_MODES: tuple[str, ...] = get_args(Robust)


@dataclass(frozen=True, kw_only=True)
class FederationSettings:
    """Everything a run needs to know; see the README's federation section for what each mode protects."""

    strategy: Strategy = "fedavg"
    num_server_rounds: int = 5
    num_clients: int = 5
    clients_per_round: int = 5
    local_epochs: int = 5
    lr: float = 0.01
    batch_size: int = 16
    proximal_mu: float = 0.01
    server_lr: float = 0.05
    privacy: str = "none"  # a name of federation.privacy.MODES
    noise_multiplier: float = 0.5
    clipping_norm: float = 1.0
    delta: float = 1e-5
    epsilon_budget: float = 0.0
    robust: Robust = "none"
    trim_fraction: float = 0.2
    byzantine_clients: int = 1
    alpha: float = 0.5
    seed: int = 0
    round_timeout_s: float = 120.0
    gate_margin: float = 0.0
    baseline_accuracy: float = 0.0
    min_accuracy: float = 0.0
    max_accuracy_drop: float = 0.0
    versions_dir: str = ""
    registry_url: str = ""
    model_name: str = "digits"
    export_tflite: bool = False
    release: bool = False
    release_targets: str = "onnx-fp32,onnx-int8,tflite"
    export_config: str = ""
    threshold_target: float = 0.0
    threshold_cloud_model_dir: str = ""
    audit_dir: str = ""
    report_path: str = ""
    init_checkpoint: str = ""

    def __post_init__(self) -> None:
        check(1 <= self.num_server_rounds <= 10_000, "num-server-rounds", "must be within 1..10000")
        check(2 <= self.num_clients <= 10_000, "num-clients", f"must be within 2..10000, got {self.num_clients}")
        check(
            1 <= self.clients_per_round <= self.num_clients,
            "clients-per-round",
            f"must be within 1..num-clients ({self.num_clients}), got {self.clients_per_round}",
        )
        check(1 <= self.local_epochs <= 100, "local-epochs", "must be within 1..100")
        check(0 < self.lr <= 1, "lr", f"must be within (0, 1], got {self.lr}")
        check(1 <= self.batch_size <= 4096, "batch-size", "must be within 1..4096")
        check(self.proximal_mu >= 0, "proximal-mu", "must be >= 0")
        check(0 < self.server_lr <= 10, "server-lr", "must be within (0, 10]")
        check(self.noise_multiplier > 0, "noise-multiplier", "must be > 0")
        check(self.clipping_norm > 0, "clipping-norm", "must be > 0")
        check(0 < self.delta < 1, "delta", "must be within (0, 1)")
        check(self.epsilon_budget >= 0, "epsilon-budget", "must be >= 0 (0: no budget)")
        check(0 <= self.trim_fraction < 0.5, "trim-fraction", "must be within [0, 0.5)")
        check(self.byzantine_clients >= 0, "byzantine-clients", "must be >= 0")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(self.round_timeout_s > 0, "round-timeout-s", "must be > 0")
        check(0 <= self.baseline_accuracy <= 1, "baseline-accuracy", "must be within [0, 1]")
        check(0 <= self.min_accuracy < 1, "min-accuracy", f"must be within [0, 1), got {self.min_accuracy}")
        check(0 <= self.max_accuracy_drop < 1, "max-accuracy-drop", "must be within [0, 1)")
        check(0 <= self.gate_margin < 1, "gate-margin", "must be within [0, 1)")
        check(
            not self.registry_url or self.registry_url.startswith(("http://", "https://")),
            "registry-url",
            "must be the http:// or https:// address of the cloud service",
        )
        check(not self.registry_url or bool(self.versions_dir), "registry-url", "needs versions-dir")
        check(not self.release or bool(self.registry_url), "release", "needs registry-url: the registry signs releases")
        unknown = [k for k in self.release_kinds if k not in ARTIFACT_KINDS]
        check(
            bool(self.release_kinds) and not unknown,
            "release-targets",
            f"must list artifact kinds among {', '.join(ARTIFACT_KINDS)}, got {self.release_targets!r}",
        )
        check(0 <= self.threshold_target <= 1, "threshold-target", "must be within [0, 1] (0: no calibration)")
        check(
            not self.threshold_target or bool(self.threshold_cloud_model_dir),
            "threshold-cloud-model-dir",
            "threshold-target needs the cloud model directory the thresholds are calibrated against",
        )
        check(self.privacy in MODES, "privacy", f"must be one of {', '.join(MODES)}, got {self.privacy!r}")
        self.privacy_mode.check(self)
        if self.robust == "krum":
            check(
                self.clients_per_round > 2 * self.byzantine_clients + 2,
                "byzantine-clients",
                "Krum needs clients-per-round > 2 * byzantine-clients + 2",
            )

    @property
    def privacy_mode(self) -> PrivacyMode:
        """The privacy mode object: client mods, server fit workflow, strategy wrapper, accountant."""
        return MODES[self.privacy]

    @property
    def secure_aggregation(self) -> bool:
        """Whether SecAgg+ hides individual updates from the server."""
        return self.privacy_mode.secure_aggregation

    @property
    def differential_privacy(self) -> bool:
        """Whether updates are clipped and the aggregate noised."""
        return self.privacy_mode.differential_privacy

    @property
    def release_kinds(self) -> tuple[str, ...]:
        """The artifact kinds every release carries, besides those the fleet runs (``release-targets``)."""
        return tuple(k.strip() for k in self.release_targets.split(",") if k.strip())

    @property
    def sample_rate(self) -> float:
        """Fraction of clients sampled per round (the accountant's ``q``)."""
        return self.clients_per_round / self.num_clients

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationSettings:
        """Parse Flower's run config (dashed keys); raise ConfigError naming the key."""
        values = {str(k).replace("-", "_"): v for k, v in run_config.items()}
        for flag in ("export_tflite", "release"):
            if isinstance(values.get(flag), str):
                values[flag] = values[flag].lower() in ("1", "true", "yes")
        return from_mapping(cls, values, section="run-config")

    def to_run_config(self) -> dict[str, Any]:
        """The dashed-key mapping Flower passes around."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
