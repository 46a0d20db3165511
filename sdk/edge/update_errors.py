"""Foreign errors an update can meet, mapped to Fedge's own at one boundary.

```
tuf DownloadLengthMismatchError        -> UpdateRejected          endless data: an attack, not an outage
tuf DownloadError (HTTP status, slow)  -> RepositoryUnreachable
tuf RepositoryError (signature, expiry, rollback, hash, length)
                                       -> UpdateRejected
securesystemslib StorageError          -> DeviceResourceError
urllib3 HTTPError (ProtocolError: the connection broke mid-download, timeouts, refused)
                                       -> RepositoryUnreachable
ConnectionError, TimeoutError          -> RepositoryUnreachable
OSError ENOSPC / EDQUOT                -> DeviceResourceError     the disk is full
OSError (any other)                    -> DeviceResourceError
MemoryError                            -> DeviceResourceError
```
ONNX Runtime and LiteRT load failures are mapped where the engine loads (``sdk.edge.backends``):
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

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return UpdateRejected(f"the repository sent more than the signed length: {text}")
    if isinstance(exc, tuf_errors.DownloadError):
        return RepositoryUnreachable(f"download failed: {text}")
    if isinstance(exc, tuf_errors.RepositoryError):
        return UpdateRejected(f"signed metadata refused: {text}")
    if isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError)):
        return RepositoryUnreachable(f"the connection to the repository failed: {text}")
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return DeviceResourceError(f"the disk is full: {text}")
    if isinstance(exc, (OSError, StorageError)):
        return DeviceResourceError(f"a file could not be read or written: {text}")
    if isinstance(exc, MemoryError):
        return DeviceResourceError(f"out of memory: {text}")
    return None


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
