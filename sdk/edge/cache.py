"""An LRU cache of answers keyed by a hash of the input (off by default: ``EdgeConfig.cache_size``)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

__all__ = ["ResultCache", "input_key"]

V = TypeVar("V")


def input_key(batch: np.ndarray, model_version: int | None) -> bytes:
    """A digest of the model version, dtype, shape and bytes of ``batch``."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{model_version}|{batch.dtype.str}|{batch.shape}|".encode())
    digest.update(np.ascontiguousarray(batch).data)
    return digest.digest()


class ResultCache(Generic[V]):
    """At most ``maxsize`` entries; the least recently used goes first. Thread-safe."""

    def __init__(self, maxsize: int) -> None:
        """An empty cache of ``maxsize`` (>= 1) entries."""
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[bytes, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> V | None:
        """The value for ``key``, refreshed as most recent; None when absent."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value: V) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (a new model makes them stale)."""
        with self._lock:
            self._data.clear()
