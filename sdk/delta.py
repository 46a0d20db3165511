"""Delta updates: binary patches (bsdiff4) from a released artifact to the next, made by the cloud, applied by devices.

A patch is a TUF target of its own, ``<model>/patches/<kind>-v<parent>-to-v<version>.bsdiff``,
so it is signed and bounded in length and hash like every other file. The device rebuilds the
artifact from the one it holds and accepts the result only when it has the signed artifact's
length and sha256; otherwise it fetches the full file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

import bsdiff4

from sdk.errors import PatchUnusable

__all__ = ["MAX_DIFF_BYTES", "MAX_PATCH_RATIO", "choose_parent", "make_patch", "patch_target", "rebuild"]

MAX_PATCH_RATIO = 0.8  # a patch at least this fraction of the full artifact saves too little to be worth a rebuild
MAX_DIFF_BYTES = 256 * 1024 * 1024  # bsdiff's suffix sort takes about 16 bytes of memory per byte of the old file
_MAGIC = b"BSDIFF40"
_HEADER = 32  # magic, then the control, diff and new-file lengths, 8 bytes each


def patch_target(model: str, kind: str, parent: int, version: int) -> str:
    """The TUF target path of the patch that turns ``kind`` of ``parent`` into ``kind`` of ``version``."""
    return f"{model}/patches/{kind}-v{parent}-to-v{version}.bsdiff"


def make_patch(old: bytes, new: bytes, *, max_ratio: float = MAX_PATCH_RATIO) -> bytes | None:
    """The patch from ``old`` to ``new``; None when it would be ``max_ratio`` of ``new`` or more, or too costly."""
    if max(len(old), len(new)) > MAX_DIFF_BYTES:
        return None
    patch = bsdiff4.diff(old, new)
    return patch if len(patch) < max_ratio * len(new) else None


def rebuild(old: bytes, patch: bytes, *, sha256: str, size: int) -> bytes:
    """Apply ``patch`` to ``old``; the result only if it has the signed ``size`` and ``sha256``.

    Raises:
        PatchUnusable: the patch is malformed, announces another size, or rebuilds other bytes.
    """
    if len(patch) < _HEADER or patch[:8] != _MAGIC:
        raise PatchUnusable("not a bsdiff4 patch")
    announced = _offtin(patch[24:32])
    if announced != size:  # checked before bsdiff4 allocates what the header asks for
        raise PatchUnusable(f"the patch builds {announced} bytes, the signed artifact has {size}")
    try:
        new = bsdiff4.patch(old, patch)
    except ValueError as exc:
        raise PatchUnusable(f"the patch does not apply: {exc}") from exc
    digest = hashlib.sha256(new).hexdigest()
    if len(new) != size or digest != sha256:
        raise PatchUnusable(f"the rebuilt artifact has sha256 {digest[:12]}, the signed one {sha256[:12]}")
    return new


def choose_parent(version: int, held: Collection[int], patches: Mapping[int, int], full_size: int) -> int | None:
    """The newest held version older than ``version`` with a signed patch (length) under ``full_size``; None: full."""
    usable = [p for p in held if p < version and p in patches and patches[p] < full_size]
    return max(usable, default=None)


def _offtin(field: bytes) -> int:
    """The 8-byte integer of bsdiff: little-endian magnitude, sign in the top bit."""
    value = int.from_bytes(field, "little")
    return -(value & ~(1 << 63)) if value >> 63 else value
