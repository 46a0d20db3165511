"""Settings of the edge runtime, the ``[edge]`` table of ``fedge.toml``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from sdk.config import check, load_section
from sdk.edge.fallback import MODES, Mode
from sdk.errors import ManifestError
from sdk.loading import LoadOptions
from sdk.manifest import Manifest

__all__ = ["LOG_LEVELS", "RANGE_POLICIES", "EdgeConfig", "RangePolicy"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
RangePolicy = Literal["reject", "cloud", "allow"]
RANGE_POLICIES: tuple[RangePolicy, ...] = get_args(RangePolicy)


@dataclass(frozen=True, kw_only=True)
class EdgeConfig(LoadOptions):
    """How a device loads and runs its model.

    The loading keys come from :class:`~sdk.loading.LoadOptions`: ``artifacts`` is the order
    in which artifact kinds are tried; ``backend`` limits the choice to one engine;
    ``providers`` is ONNX Runtime's execution-provider preference (aliases ``tensorrt``,
    ``cuda``, ``cpu`` or full names).

    ``fallback`` is the cloud policy (see :mod:`sdk.edge.fallback`); it applies when the
    runtime has a cloud client. ``confidence_threshold`` overrides the manifest's calibrated
    one; ``deadline_ms`` bounds every call that involves the cloud; ``cache_size`` > 0
    turns on the LRU result cache; ``model_name`` is what the cloud is asked for when
    there is no local model (else the manifest's name).

    ``preprocess`` applies the manifest's preprocessing (``raw * scale + offset``) to every input, so
    callers pass raw data (digits: pixels 0..16); a model whose manifest records none is refused at
    load. ``range_policy`` treats rows with a value more than ``range_margin`` times the width of
    the manifest's training range beyond it (digits: [0, 1], so below -0.5 or above 1.5): ``reject``
    raises :class:`~sdk.errors.InputOutOfRange` for the call, ``cloud`` sends those rows to the cloud
    (rejected when there is no cloud to ask), ``allow`` lets the local model answer them. A manifest
    without a range (older exports) turns the check off. ``reject`` is the default: such rows are
    almost always raw, unscaled inputs, which the local model (and the cloud's, from the same
    pipeline) answers with confident garbage; a typed error per call is loud and the runtime keeps serving.

    For the device program (``fedge edge run``): ``log_level`` of its log lines on stderr (the
    journal).
    """

    fallback: Mode = "edge-first"
    confidence_threshold: float | None = None
    deadline_ms: float = 500.0
    cache_size: int = 0
    model_name: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    preprocess: bool = False
    range_policy: RangePolicy = "reject"
    range_margin: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
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
        check(
            self.range_policy in RANGE_POLICIES,
            "range_policy",
            f"expected one of {', '.join(RANGE_POLICIES)}, got {self.range_policy!r}",
        )
        check(0 <= self.range_margin <= 1000, "range_margin", f"must be within [0, 1000], got {self.range_margin}")

    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse a model whose manifest does not say how to preprocess, when ``preprocess`` is on."""
        if self.preprocess and manifest.preprocessing is None:
            raise ManifestError(
                f"manifest.preprocessing: missing in {manifest.name} v{manifest.version}, "
                "and edge.preprocess = true needs it to scale raw inputs"
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
        """Load ``[edge]`` from a TOML file and ``FEDGE_EDGE__*`` environment variables."""
        return load_section(cls, "edge", path, env)
