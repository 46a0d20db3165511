"""Delta updates: binary patches (bsdiff4) from a released artifact to the next, made by the cloud, applied by devices.

A patch is a TUF target of its own, ``<model>/patches/<kind>-v<parent>-to-v<version>.bsdiff``,
so it is signed and bounded in length and hash like every other file. The device rebuilds the
artifact from the one it holds and accepts the result only when it has the signed artifact's
length and sha256; otherwise it fetches the full file.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

import bsdiff4

from sdk.errors import PatchUnusable

__all__ = [
    "DIFF_TIMEOUT_S",
    "MAX_DIFF_BYTES",
    "MAX_PATCH_RATIO",
    "choose_parent",
    "make_patch",
    "patch_target",
    "rebuild",
]

MAX_PATCH_RATIO = 0.8  # a patch at least this fraction of the full artifact saves too little to be worth a rebuild
MAX_DIFF_BYTES = 256 * 1024 * 1024  # past this a diff costs more memory and time than a release should
DIFF_TIMEOUT_S = 600.0
_MAGIC = b"BSDIFF40"
_HEADER = 32  # magic, then the control, diff and new-file lengths, 8 bytes each


def patch_target(model: str, kind: str, parent: int, version: int) -> str:
    """The TUF target path of the patch that turns ``kind`` of ``parent`` into ``kind`` of ``version``."""
    return f"{model}/patches/{kind}-v{parent}-to-v{version}.bsdiff"


def make_patch(
    old: Path, new: Path, out: Path, *, max_ratio: float = MAX_PATCH_RATIO, timeout_s: float = DIFF_TIMEOUT_S
) -> bool:
    """Write the patch from ``old`` to ``new`` at ``out``; False, writing nothing, when it saves too little.

    Raises:
        subprocess.SubprocessError: the diff failed or took longer than ``timeout_s``.
    """
    size = new.stat().st_size
    if max(old.stat().st_size, size) > MAX_DIFF_BYTES:
        return False
    # bsdiff holds the GIL for the whole diff (seconds for a few MB) and about 16 bytes of memory per byte of
    # ``old``: a child process leaves the server's threads serving and its memory apart.
    command = [sys.executable, "-c", "import sys, bsdiff4; bsdiff4.file_diff(*sys.argv[1:])", str(old), str(new)]
    try:
        subprocess.run([*command, str(out)], check=True, capture_output=True, timeout=timeout_s)
        if out.stat().st_size < max_ratio * size:
            return True
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    out.unlink()
    return False


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
