"""Settings of the cloud service, the ``[cloud]`` table of ``fedge.toml``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdk import topics, wire
from sdk.cloud.batching import BatcherConfig
from sdk.config import check, load_section

__all__ = ["CloudConfig"]


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    """What the HTTP endpoint and the MQTT workers serve, and how.

    ``api_keys`` guards every ``/v1`` route when it is not empty (header ``X-API-Key``);
    ``admin_keys`` guard the registry's writing routes, always (none set: they refuse all).
    Neither appears in ``repr`` or logs. ``FEDGE_CLOUD__API_KEYS=k1,k2`` sets them.
    ``worker_metrics_port`` serves a worker's ``/healthz`` and ``/metrics`` (0: off);
    ``worker_session_expiry_s`` > 0 gives workers persistent MQTT sessions; a worker that
    has not served for ``worker_unavailable_exit_s`` exits non-zero for its supervisor to restart.

    ``intra_op_threads`` is the threads ONNX Runtime runs one batch on (0: one per core) and
    ``allow_spinning`` whether its idle pool threads spin-wait for the next batch; one thread
    that does not spin lets one worker process per core scale (README, "Workers per core").

    HTTP limits (``fedge cloud serve``): ``header_timeout_s`` is the time a request's headers
    have to arrive (else the connection is closed), ``body_timeout_s`` that of its whole body
    (else 408); ``limit_concurrency`` caps open connections and running requests (uvicorn
    answers 503 above it); ``max_header_bytes`` bounds a request's head (else 431);
    ``keep_alive_s`` and ``backlog`` are uvicorn's ``timeout_keep_alive`` and ``backlog``.

    Registry uploads: ``max_upload_bytes`` bounds the archive as sent (else 413), and
    ``max_unpacked_bytes`` the sum of the sizes its members declare, checked before any is unpacked (else 413).

    Staged rollouts: ``rollout_policy`` is the release-policy file (:mod:`sdk.cloud.rollout_policy`; none: its
    defaults), read when the service starts (``FEDGE_CLOUD__ROLLOUT_POLICY``); the controller looks at every
    running rollout each ``rollout_tick_s``.
    """

    model_dirs: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = wire.DEFAULT_MAX_BYTES
    group: str = "cloud"
    providers: tuple[str, ...] = ("cuda", "cpu")
    intra_op_threads: int = 1
    allow_spinning: bool = False
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue: int = 1024
    repository_dir: Path | None = None
    keys_dir: Path | None = None
    registry_url: str = ""
    store_dir: Path | None = None
    worker_metrics_port: int = 0
    worker_session_expiry_s: int = 0
    worker_unavailable_exit_s: float = 60.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    limit_concurrency: int = 512
    keep_alive_s: int = 5
    backlog: int = 2048
    max_header_bytes: int = 16 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    max_unpacked_bytes: int = 512 * 1024 * 1024
    rollout_policy: Path | None = None
    rollout_tick_s: float = 10.0

    def __post_init__(self) -> None:
        check(1 <= self.port <= 65535, "port", f"must be within 1..65535, got {self.port}")
        check(0 <= self.worker_metrics_port <= 65535, "worker_metrics_port", "must be within 0..65535 (0: off)")
        check(0 <= self.worker_session_expiry_s <= 86400, "worker_session_expiry_s", "must be within 0..86400")
        check(self.worker_unavailable_exit_s > 0, "worker_unavailable_exit_s", "must be > 0")
        check(1024 <= self.max_body_bytes <= 1 << 30, "max_body_bytes", "must be within 1 KiB..1 GiB")
        check(all(len(k) >= 16 for k in self.api_keys), "api_keys", "every key must have at least 16 characters")
        check(all(len(k) >= 16 for k in self.admin_keys), "admin_keys", "every key must have at least 16 characters")
        try:
            topics.check_segment(self.group, "group")
        except ValueError as exc:
            check(False, "group", str(exc))
        check(
            0 <= self.intra_op_threads <= 256,
            "intra_op_threads",
            f"must be within 0..256 (0 = one per core), got {self.intra_op_threads}",
        )
        self.batcher()  # validates the batching keys, naming them
        check(
            0 < self.header_timeout_s <= 3600,
            "header_timeout_s",
            f"must be within (0, 3600], got {self.header_timeout_s}",
        )
        check(0 < self.body_timeout_s <= 3600, "body_timeout_s", f"must be within (0, 3600], got {self.body_timeout_s}")
        check(1 <= self.limit_concurrency <= 65535, "limit_concurrency", "must be within 1..65535")
        check(1 <= self.keep_alive_s <= 3600, "keep_alive_s", f"must be within 1..3600, got {self.keep_alive_s}")
        check(1 <= self.backlog <= 65535, "backlog", f"must be within 1..65535, got {self.backlog}")
        check(1024 <= self.max_header_bytes <= 1 << 20, "max_header_bytes", "must be within 1 KiB..1 MiB")
        # An upload is held in memory while it is read; what it unpacks to goes to the store's disk.
        check(1024 <= self.max_upload_bytes <= 1 << 32, "max_upload_bytes", "must be within 1 KiB..4 GiB")
        check(1024 <= self.max_unpacked_bytes <= 1 << 40, "max_unpacked_bytes", "must be within 1 KiB..1 TiB")
        check(0 < self.rollout_tick_s <= 86400, "rollout_tick_s", f"must be in (0, 86400], got {self.rollout_tick_s}")

    def batcher(self) -> BatcherConfig:
        """The batching part of these settings."""
        return BatcherConfig(
            max_batch_size=self.max_batch_size, max_queue_delay_ms=self.max_queue_delay_ms, max_queue=self.max_queue
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> CloudConfig:
        """Load ``[cloud]`` from a TOML file and ``FEDGE_CLOUD__*`` environment variables."""
        return load_section(cls, "cloud", path, env)
