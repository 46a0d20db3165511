"""Settings of the edge runtime, the ``[edge]`` table of ``fedge.toml``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdk.config import check, load_section
from sdk.manifest import ARTIFACT_KINDS

__all__ = ["EdgeConfig"]


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """How a device loads and runs its model.

    ``artifacts`` is the order in which artifact kinds are tried; ``backend`` limits
    the choice to one engine; ``providers`` is ONNX Runtime's execution-provider
    preference (aliases ``tensorrt``, ``cuda``, ``cpu`` or full names).
    """

    artifacts: tuple[str, ...] = ("onnx-int8", "onnx-fp32", "tflite")
    backend: Literal["auto", "onnxruntime", "litert"] = "auto"
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    num_threads: int = 0
    nan_policy: Literal["reject", "allow"] = "reject"
    strict_dtype: bool = False
    max_batch_size: int = 256
    smoke_test: bool = True
    cache_dir: Path | None = None

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

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
        """Load ``[edge]`` from a TOML file and ``FEDGE_EDGE__*`` environment variables."""
        return load_section(cls, "edge", path, env)
