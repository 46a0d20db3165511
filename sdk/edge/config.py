"""Settings of the edge runtime, the ``[edge]`` table of ``fedge.toml``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdk.config import check, load_section
from sdk.edge.fallback import MODES, Mode
from sdk.manifest import ARTIFACT_KINDS

__all__ = ["LOG_LEVELS", "EdgeConfig"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """How a device loads and runs its model.

    ``artifacts`` is the order in which artifact kinds are tried; ``backend`` limits
    the choice to one engine; ``providers`` is ONNX Runtime's execution-provider
    preference (aliases ``tensorrt``, ``cuda``, ``cpu`` or full names). ``allow_spinning``
    lets ONNX Runtime's idle pool threads spin-wait for the next call (its own default): a
    little latency for back-to-back calls, a busy core between them, so it is off.

    ``fallback`` is the cloud policy (see :mod:`sdk.edge.fallback`); it applies when the
    runtime has a cloud client. ``confidence_threshold`` overrides the manifest's calibrated
    one; ``deadline_ms`` bounds every call that involves the cloud; ``cache_size`` > 0
    turns on the LRU result cache; ``model_name`` is what the cloud is asked for when
    there is no local model (else the manifest's name).

    For the device program (``fedge edge run``): ``log_level`` of its log lines on stderr (the
    journal).
    """

    artifacts: tuple[str, ...] = ("onnx-int8", "onnx-fp32", "tflite")
    backend: Literal["auto", "onnxruntime", "litert"] = "auto"
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    num_threads: int = 0
    allow_spinning: bool = False
    nan_policy: Literal["reject", "allow"] = "reject"
    strict_dtype: bool = False
    max_batch_size: int = 256
    smoke_test: bool = True
    cache_dir: Path | None = None
    fallback: Mode = "edge-first"
    confidence_threshold: float | None = None
    deadline_ms: float = 500.0
    cache_size: int = 0
    model_name: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def __post_init__(self) -> None:
        check(bool(self.artifacts), "artifacts", "needs at least one artifact kind")
        for kind in self.artifacts:
            check(kind in ARTIFACT_KINDS, "artifacts", f"unknown kind {kind!r} (known: {', '.join(ARTIFACT_KINDS)})")
        check(bool(self.providers), "providers", "needs at least one execution provider")
        check(
            0 <= self.num_threads <= 256,
            "num_threads",
            f"must be within 0..256 (0 = engine default), got {self.num_threads}",
        )
        check(
            1 <= self.max_batch_size <= 1 << 16, "max_batch_size", f"must be within 1..65536, got {self.max_batch_size}"
        )
        check(self.fallback in MODES, "fallback", f"expected one of {', '.join(MODES)}, got {self.fallback!r}")
        check(
            self.confidence_threshold is None or 0.0 <= self.confidence_threshold <= 1.0,
            "confidence_threshold",
            f"must be within [0, 1], got {self.confidence_threshold}",
        )
        check(0 < self.deadline_ms <= 600_000, "deadline_ms", f"must be within (0, 600000], got {self.deadline_ms}")
        check(0 <= self.cache_size <= 1_000_000, "cache_size", f"must be within 0..1000000, got {self.cache_size}")
        check(
            self.log_level in LOG_LEVELS,
            "log_level",
            f"expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}",
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
        """Load ``[edge]`` from a TOML file and ``FEDGE_EDGE__*`` environment variables."""
        return load_section(cls, "edge", path, env)
