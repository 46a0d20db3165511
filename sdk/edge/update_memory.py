"""The device's update memory: versions it refused (and under which privacy policy), and how its last checks went.

Kept in its own file (``<state>/update-memory.json``), apart from the model store and the TUF
metadata: wiping installed versions forgets neither trust nor refusals, and an operator can
clear the refusals (``forget``) without touching either. Written atomically; an unreadable file
is set aside and the device starts with an empty memory rather than stop.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["UpdateMemory"]

log = logging.getLogger("fedge.edge.updater")


class UpdateMemory:
    """Refused versions (rejected, rolled back, or left by a recall) and the count of failed checks in a row."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Read the memory at ``path`` (none yet: an empty one)."""
        self.path = Path(path)
        self.refused: dict[int, dict[str, Any]] = {}
        self.failures = 0
        self.last_check: dict[str, Any] = {}
        try:
            data = json.loads(self.path.read_text())
            self.refused = {int(v): dict(why) for v, why in data.get("refused", {}).items()}
            self.failures = int(data.get("failures", 0))
            self.last_check = dict(data.get("last_check", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("update memory %s unreadable (%s); starting with an empty one", self.path, exc)
            self.path.replace(self.path.with_name(self.path.name + ".unreadable"))

    def remember(self, version: int, outcome: str, reason: str, *, policy: dict[str, Any] | None = None) -> None:
        """Refuse ``version`` from now on: rejected, rolled back or recalled (by the privacy ``policy``, if given)."""
        self.refused[version] = {"outcome": outcome, "reason": reason, "time": time.time()}
        if policy is not None:
            self.refused[version]["policy"] = policy

    def forget_other_policies(self, policy: dict[str, Any]) -> list[int]:
        """Let versions a privacy policy other than ``policy`` refused be tried again; return those forgotten."""
        gone = sorted(v for v, why in self.refused.items() if why.get("policy", policy) != policy)
        for v in gone:
            del self.refused[v]
        return gone

    def forget(self, version: int | None = None) -> list[int]:
        """Let ``version`` (None: every refused version) be tried again; return the versions forgotten."""
        gone = sorted(self.refused) if version is None else [v for v in (version,) if v in self.refused]
        for v in gone:
            del self.refused[v]
        self.save()
        return gone

    def record(self, outcome: str, version: int | None, failures: int) -> None:
        """Note how a check ended."""
        self.failures = failures
        self.last_check = {"outcome": outcome, "version": version, "time": time.time()}

    def save(self) -> None:
        """Write the memory atomically.

        Raises:
            OSError: the file cannot be written (a full disk).
        """
        data = {
            "refused": {str(v): why for v, why in sorted(self.refused.items())},
            "failures": self.failures,
            "last_check": self.last_check,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
