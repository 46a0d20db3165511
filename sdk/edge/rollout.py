"""Staged rollout: whether a device takes a release, from a stable hash of its id (no state, no I/O)."""

from __future__ import annotations

import hashlib

__all__ = ["bucket", "in_rollout"]


def bucket(device_id: str, model: str) -> int:
    """The device's place in 0..99 for ``model``: stable across releases, so widening a rollout only adds devices."""
    digest = hashlib.sha256(f"{model}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_rollout(device_id: str, model: str, percent: int) -> bool:
    """Whether ``device_id`` is within the first ``percent`` of the fleet for ``model``."""
    return bucket(device_id, model) < percent
