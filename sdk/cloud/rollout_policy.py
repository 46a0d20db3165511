"""A model's release policy: its rollout stages, soak times and abort thresholds, read from TOML.

```toml
[default]
stages = [5, 25, 100]          # percent of the fleet per stage, increasing, the last 100
soak_s = [600, 1800, 3600]     # per stage, or one number for all
min_devices = [1, 5, 20]       # devices judged (>= min_calls calls on the new version) before a stage ends
min_calls = 50
max_install_failure_rate = 0.1
max_error_rate = 0.02
max_fallback_rate_increase = 0.05  # versus the previous version on the same devices
max_confidence_drop = 0.05         # likewise
targets = ["onnx-int8", "tflite"]

[models.digits]                # overrides [default] for this model
soak_s = 300
```

Every value is checked on load; a bad one raises :class:`~sdk.errors.ConfigError` naming
its key (``models.digits.stages``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.config import check, from_mapping, tomllib
from sdk.errors import ConfigError
from sdk.manifest import ARTIFACT_KINDS

__all__ = ["RolloutPolicies", "RolloutPolicy"]


@dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    """How one model's releases widen across the fleet, and when they abort.

    ``soak_s`` and ``min_devices`` are one value for every stage or one per stage. Rates are
    fractions (0.02 = 2 %); the fallback-rate increase and the confidence drop are differences
    of the new version's value from the previous version's on the same devices.
    """

    stages: tuple[int, ...] = (5, 25, 100)
    soak_s: float | tuple[float, ...] = 600.0
    min_devices: int | tuple[int, ...] = 1
    min_calls: int = 50
    max_install_failure_rate: float = 0.1
    max_error_rate: float = 0.02
    max_fallback_rate_increase: float = 0.05
    max_confidence_drop: float = 0.05
    targets: tuple[str, ...] = ("onnx-int8", "tflite")

    def __post_init__(self) -> None:
        stages = self.stages
        check(bool(stages), "stages", "needs at least one stage")
        check(all(1 <= s <= 100 for s in stages), "stages", f"percents must be within 1..100, got {list(stages)}")
        check(all(a < b for a, b in itertools.pairwise(stages)), "stages", f"must increase, got {list(stages)}")
        check(stages[-1] == 100, "stages", f"the last stage must be 100, got {stages[-1]}")
        for key, least in (("soak_s", 0), ("min_devices", 1)):
            value = getattr(self, key)
            if isinstance(value, tuple):
                check(len(value) == len(stages), key, f"has {len(value)} values for {len(stages)} stages")
            values = value if isinstance(value, tuple) else (value,)
            check(all(v >= least for v in values), key, f"must be >= {least}, got {value}")
        check(1 <= self.min_calls <= 10**9, "min_calls", f"must be within 1..1e9, got {self.min_calls}")
        for key in ("max_install_failure_rate", "max_error_rate", "max_fallback_rate_increase", "max_confidence_drop"):
            check(0.0 <= getattr(self, key) <= 1.0, key, f"must be within 0..1, got {getattr(self, key)}")
        check(bool(self.targets), "targets", "needs at least one artifact kind")
        for kind in self.targets:
            check(kind in ARTIFACT_KINDS, "targets", f"unknown kind {kind!r} (known: {', '.join(ARTIFACT_KINDS)})")

    def soak_for(self, stage: int) -> float:
        """Seconds stage ``stage`` (0-based) soaks before it may end."""
        return self.soak_s[stage] if isinstance(self.soak_s, tuple) else self.soak_s

    def min_devices_for(self, stage: int) -> int:
        """Devices that must be judged on stage ``stage`` before it may end."""
        return self.min_devices[stage] if isinstance(self.min_devices, tuple) else self.min_devices


@dataclass(frozen=True)
class RolloutPolicies:
    """The default policy and the per-model ones of a policy file."""

    default: RolloutPolicy = field(default_factory=RolloutPolicy)
    models: Mapping[str, RolloutPolicy] = field(default_factory=dict)

    def for_model(self, model: str) -> RolloutPolicy:
        """The policy of ``model``: its own section, else the default."""
        return self.models.get(model, self.default)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RolloutPolicies:
        """Read and check a policy file (``[default]`` and ``[models.<name>]`` tables).

        Raises:
            ConfigError: the file is missing or not TOML, or a table or key is unknown or bad (the key is named).
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(path), "rollout policy file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RolloutPolicies:
        """Policies from the parsed TOML document; see :meth:`load`."""
        for key in data:
            check(key in ("default", "models"), key, "unknown table (known: default, models)")
        base = _table(data, "default", "default")
        default = from_mapping(RolloutPolicy, base, section="default")
        models = {}
        for name, table in _table(data, "models", "models").items():
            section = f"models.{name}"
            merged = {**base, **_table({name: table}, name, section)}
            models[name] = from_mapping(RolloutPolicy, merged, section=section)
        return cls(default=default, models=models)


def _table(data: Mapping[str, Any], key: str, section: str) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(section, f"expected a table, got {type(table).__name__}")
    return table
