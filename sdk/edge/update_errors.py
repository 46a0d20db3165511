"""Foreign errors an update can meet, mapped to Fedge's own at one boundary.

```
tuf DownloadLengthMismatchError        -> UpdateRejected          endless data: an attack, not an outage
tuf DownloadError (HTTP status, slow)  -> RepositoryUnreachable
tuf RepositoryError (signature, expiry, rollback, hash, length)
                                       -> UpdateRejected
securesystemslib StorageError          -> DeviceResourceError
urllib3 errors (ProtocolError: the connection broke mid-download, timeouts, refused, bad proxy)
                                       -> RepositoryUnreachable
ConnectionError, TimeoutError          -> RepositoryUnreachable
OSError ENOSPC / EDQUOT                -> DeviceResourceError     the disk is full
OSError (any other)                    -> DeviceResourceError
MemoryError                            -> DeviceResourceError
```
ONNX Runtime and LiteRT load failures are mapped where the engine loads (``sdk.backends``):
a file the engine refuses is a ``ModelIntegrityError``; an engine that cannot load it here (a
provider failed, memory ran out) is an ``EngineLoadFailed``, which is not the release's fault.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from sdk.errors import DeviceResourceError, FedgeError, RepositoryUnreachable, UpdateRejected

__all__ = ["map_update_errors", "translate"]

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def translate(exc: BaseException) -> FedgeError | None:
    """The Fedge error ``exc`` stands for; ``exc`` itself when it is one; None for an error nobody expects."""
    if isinstance(exc, FedgeError):
        return exc
    from securesystemslib.exceptions import StorageError
    from tuf.api import exceptions as tuf_errors
    from urllib3.exceptions import HTTPError as Urllib3Error

    text = _describe(exc)
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return UpdateRejected(f"the repository sent more than the signed length: {text}")
    if isinstance(exc, tuf_errors.DownloadError):
        return RepositoryUnreachable(f"download failed: {text}")
    if isinstance(exc, tuf_errors.RepositoryError):
        return UpdateRejected(f"signed metadata refused: {text}")
    if isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError)) or type(exc).__module__.startswith("urllib3"):
        return RepositoryUnreachable(f"the connection to the repository failed: {text}")
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return DeviceResourceError(f"the disk is full: {text}")
    if isinstance(exc, (OSError, StorageError)):
        return DeviceResourceError(f"a file could not be read or written: {text}")
    if isinstance(exc, MemoryError):
        return DeviceResourceError(f"out of memory: {text}")
    return None


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # a half-built foreign exception whose __str__ fails must not hide the real failure
        return type(exc).__name__


@contextlib.contextmanager
def map_update_errors() -> Iterator[None]:
    """Re-raise a foreign error as the Fedge error it stands for, ``from`` the original; others pass through."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None or mapped is exc:
            raise
        try:
            raise mapped from exc
        finally:
            mapped = None  # this frame must not keep its own traceback alive (a cycle holding sockets)
