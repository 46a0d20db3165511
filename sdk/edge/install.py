"""Model directories on the device, installed atomically: a power cut leaves the old model or the new one.

```
<root>/versions/v7/          complete, verified model directories (renamed into place whole)
<root>/current -> versions/v8   the one to serve (a symlink replaced with os.replace)
<root>/previous -> versions/v7  the last good one, for rollback
<root>/.staging-*            downloads in progress (removed at start)
```
Every file and directory is fsync'd before the rename that publishes it. A version directory
installed over the air holds only the artifacts this device fetched; its ``fetched.json``
(:func:`sdk.manifest.write_fetched`) says which, so that loading does not take the others for missing files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["ModelStore"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


class ModelStore:
    """The installed versions of one model on this device."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Use (and create) ``root``; leftovers of an interrupted install are removed."""
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.versions.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob(".pointer-*"):
            leftover.unlink(missing_ok=True)

    def _pointer(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = (self.root / os.readlink(link)).resolve()
        return target if target.is_dir() else None

    def current(self) -> Path | None:
        """The model directory to serve, or None before the first install."""
        return self._pointer("current")

    def previous(self) -> Path | None:
        """The model directory served before the current one."""
        return self._pointer("previous")

    def version_of(self, directory: Path | None) -> int | None:
        """The version number of an installed directory (``v7`` -> 7)."""
        return int(directory.name[1:]) if directory is not None else None

    def stage(self) -> Path:
        """A fresh directory to download into."""
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def commit(self, staging: Path, version: int) -> Path:
        """Publish a complete staging directory as ``versions/v<N>``, replacing a stale copy (never ``current``)."""
        _fsync_tree(staging)
        target = self.versions / f"v{version}"
        stale = None
        if target.exists() and target != self.current():
            # Moved aside first (a damaged ``previous`` a recall downloads again included); removed at start if cut off.
            stale = Path(tempfile.mkdtemp(prefix=".staging-stale-", dir=self.root))
            os.replace(target, stale / target.name)
        os.replace(staging, target)
        _fsync_dir(self.versions)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
        return target

    def point(self, directory: Path) -> None:
        """Serve ``directory`` from now on; the current one becomes ``previous``."""
        current = self.current()
        if current is not None and current != directory:
            self._set("previous", current)
        self._set("current", directory)

    def rollback(self) -> Path:
        """Serve the previous version again; return it.

        Raises:
            FileNotFoundError: there is no previous version.
        """
        previous = self.previous()
        if previous is None:
            raise FileNotFoundError("no previous version to roll back to")
        self._set("current", previous)
        return previous

    def prune(self, keep: int = 3) -> None:
        """Remove old versions, keeping ``current``, ``previous`` and the newest ``keep``."""
        protected = {self.current(), self.previous()}
        installed = sorted(self.versions.glob("v*"), key=lambda p: int(p.name[1:]))
        for old in installed[:-keep]:
            if old.resolve() not in protected:
                shutil.rmtree(old, ignore_errors=True)

    def _set(self, name: str, directory: Path) -> None:
        tmp = self.root / f".pointer-{name}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.relpath(directory, self.root), tmp)
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)
