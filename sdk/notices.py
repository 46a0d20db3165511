"""The release notice published (retained) on ``fedge/v1/releases/<model>``: what the release service sends.

A notice only says "new signed metadata may be there"; a device checks the signed
metadata and trusts nothing in the notice itself.
"""

from __future__ import annotations

import json
import time

__all__ = ["notice_payload"]


def notice_payload(model: str, version: int) -> bytes:
    """The body of a release notice (informational only: devices trust the signed metadata)."""
    return json.dumps({"model": model, "version": version, "time": time.time()}).encode()
