"""MQTT topic names shared by devices and the cloud (``fedge/v1/...``)."""

from __future__ import annotations

import re

__all__ = [
    "INFER_FILTER",
    "PREFIX",
    "check_segment",
    "device_replies",
    "device_status",
    "infer",
    "is_device_replies",
    "release",
    "shared_infer",
]

PREFIX = "fedge/v1"
#: Every inference request topic, for a worker that serves all models.
INFER_FILTER = f"{PREFIX}/infer/+"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DEVICE_REPLIES = re.compile(rf"^{re.escape(PREFIX)}/devices/[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}/replies$")


def check_segment(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe topic segment (no ``/``, ``+``, ``#``), else raise ValueError."""
    if not _SEGMENT.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit")
    return value


def infer(model: str) -> str:
    """Requests for ``model``."""
    return f"{PREFIX}/infer/{check_segment(model, 'model')}"


def shared_infer(group: str, model: str | None = None) -> str:
    """The shared subscription a worker group uses; ``None`` serves every model."""
    tail = infer(model) if model else INFER_FILTER
    return f"$share/{check_segment(group, 'group')}/{tail}"


def device_replies(device_id: str) -> str:
    """Where cloud replies for ``device_id`` go (its ResponseTopic)."""
    return f"{PREFIX}/devices/{check_segment(device_id, 'device id')}/replies"


def is_device_replies(topic: str) -> bool:
    """Whether ``topic`` is exactly some device's reply topic (no wildcards, nothing outside that namespace)."""
    return _DEVICE_REPLIES.fullmatch(topic) is not None


def device_status(device_id: str) -> str:
    """Where ``device_id`` reports its state (and its Last Will)."""
    return f"{PREFIX}/devices/{check_segment(device_id, 'device id')}/status"


def release(model: str) -> str:
    """Retained notices that new release metadata for ``model`` is available."""
    return f"{PREFIX}/releases/{check_segment(model, 'model')}"
