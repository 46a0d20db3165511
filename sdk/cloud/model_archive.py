"""Unpack an uploaded model directory, bounded by what the archive declares before anything is written.

An upload is a tar (plain, gzip, bzip2 or xz) of a model directory's top-level files. Each
member's header is checked before its data is read: a plain file with a short, plain name,
listed by the manifest (``manifest.json`` itself, the artifacts, the probe), of the size the
manifest records, and the sizes declared so far within ``max_unpacked_bytes``. Members may
come in any order: those seen before ``manifest.json`` are checked when it arrives. The
decompressed stream is bounded too, so tar's own headers (PAX, GNU long names) cannot
expand past the bound either. This is blocking work: call it in a worker thread.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sdk.errors import ModelIntegrityError, ModelNotFound, PayloadTooLarge, WireFormatError
from sdk.manifest import MANIFEST_FILE, MAX_FILE_NAME, Manifest, load_manifest, plain_file_name

__all__ = ["MAX_MANIFEST_BYTES", "MAX_MEMBERS", "unpack_model"]

#: The most members an archive may hold (a manifest lists a handful of files).
MAX_MEMBERS = 64
#: The largest ``manifest.json`` an archive may declare.
MAX_MANIFEST_BYTES = 1 << 20
# What a member adds to the stream besides its declared data: its header block, a PAX header with a few
# records, and the padding to a whole block; plus the end-of-archive blocks and a record's padding.
_MEMBER_OVERHEAD = 8 * tarfile.BLOCKSIZE
_TAIL = 2 * tarfile.RECORDSIZE
_CHUNK = 1 << 20
_DECOMPRESSORS: dict[bytes, Callable[[IO[bytes]], IO[bytes]]] = {
    b"\x1f\x8b": gzip.open,
    b"BZh": bz2.open,
    b"\xfd7zXZ\x00": lzma.open,
}
# What a broken compressed stream raises while it is read.
_CORRUPT = (EOFError, OSError, zlib.error, lzma.LZMAError)


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to give more than ``limit`` bytes of ``inner``."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self._inner, self._left, self.limit = inner, limit, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._left + 1)
        try:
            data = self._inner.read(want)
        except _CORRUPT as exc:
            raise WireFormatError(f"the archive's compressed stream is corrupt: {exc}") from None
        self._left -= len(data)
        if self._left < 0:
            raise PayloadTooLarge(f"the archive unpacks to more than {self.limit} bytes (cloud.max_unpacked_bytes)")
        buffer[: len(data)] = data
        return len(data)


def unpack_model(archive: bytes, into: Path, *, max_unpacked_bytes: int) -> Manifest:
    """Unpack a model directory archive into the empty directory ``into``; return its manifest.

    Raises:
        PayloadTooLarge: the members declare (or the stream holds) more than ``max_unpacked_bytes``.
        WireFormatError: not a tar archive, or a member that is not a plain, short, top-level file the
            manifest lists (links, devices, directories, absolute paths, ``..``), or a member given twice.
        ModelError: no manifest, a malformed one, or a member of another size than the manifest records.
    """
    inner: IO[bytes] = io.BytesIO(archive)
    for magic, decompress in _DECOMPRESSORS.items():
        if archive.startswith(magic):
            inner = decompress(inner)
            break
    stream = _Bounded(inner, max_unpacked_bytes + MAX_MEMBERS * _MEMBER_OVERHEAD + _TAIL)
    declared: dict[str, int] = {}
    manifest: Manifest | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # a stream: one pass, no seeking back
            for member in tar:
                name = _check_header(member, declared, max_unpacked_bytes)
                if manifest is not None:
                    _check_listed(manifest, name, member.size)
                declared[name] = member.size
                with tar.extractfile(member) as data, open(into / name, "xb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(data, out, _CHUNK)
                if name == MANIFEST_FILE:
                    manifest = load_manifest(into)
                    for earlier, size in declared.items():
                        _check_listed(manifest, earlier, size)
    except tarfile.TarError as exc:
        raise WireFormatError(f"not a tar archive: {exc}") from None
    if manifest is None:
        raise ModelNotFound(f"the archive holds no {MANIFEST_FILE}")
    return manifest


def _check_header(member: tarfile.TarInfo, declared: dict[str, int], max_unpacked_bytes: int) -> str:
    """The member's file name, once its header shows a plain, new, bounded top-level file."""
    if len(declared) >= MAX_MEMBERS:
        raise WireFormatError(f"the archive holds more than {MAX_MEMBERS} members")
    name = member.name.removeprefix("./")
    if len(name) > MAX_FILE_NAME:
        raise WireFormatError(f"archive member {name[:40]!r}...: a name longer than {MAX_FILE_NAME} characters")
    # REGTYPE and AREGTYPE only: isfile() also admits contiguous and sparse files, whose data is not their size;
    # a negative size (base-256 allows one) would lower the sum.
    regular = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.sparse and member.size >= 0
    if not regular or not plain_file_name(name):
        raise WireFormatError(f"archive member {member.name!r}: only plain top-level files are allowed")
    if name in declared:
        raise WireFormatError(f"archive member {name!r} is there twice")
    if name == MANIFEST_FILE and member.size > MAX_MANIFEST_BYTES:
        raise PayloadTooLarge(f"{MANIFEST_FILE} declares {member.size} bytes, over the {MAX_MANIFEST_BYTES}-byte bound")
    total = sum(declared.values()) + member.size
    if total > max_unpacked_bytes:
        raise PayloadTooLarge(
            f"the archive's members declare {total} bytes, over the {max_unpacked_bytes}-byte bound "
            "(cloud.max_unpacked_bytes)"
        )
    return name


def _check_listed(manifest: Manifest, name: str, size: int) -> None:
    """Refuse a member the manifest does not list, or one declaring another size than the manifest records."""
    if name == MANIFEST_FILE:
        return
    listed = manifest.listed_files
    if name not in listed:
        raise WireFormatError(f"archive member {name!r} is not listed in the manifest")
    if size != listed[name]:
        raise ModelIntegrityError(f"{name} declares {size} bytes, the manifest says {listed[name]}")
