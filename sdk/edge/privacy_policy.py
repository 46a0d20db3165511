"""The device's privacy policy: which releases it takes, judged by the privacy their signed lineage says they spent.

A release's lineage (in its manifest, whose length and sha256 the signed TUF targets metadata
fix) records how it was trained: ``privacy`` (the mode), ``epsilon`` and ``delta`` (what the
privacy accountant spent), ``clients`` (per round). A device whose ``[update]`` table sets

```toml
max_epsilon = 1.0   # refuse a release that spent more (or says nothing: it was not trained privately)
min_clients = 10    # refuse a release trained with fewer clients per round
```
refuses the others before it downloads their artifact. No I/O here: the driver
(:mod:`sdk.edge.updater`) reads the lineage and raises :class:`~sdk.errors.PolicyRefused`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdk.config import check

__all__ = ["PrivacyPolicy"]


@dataclass(frozen=True, kw_only=True)
class PrivacyPolicy:
    """Limits on how a release was trained; None: no limit."""

    max_epsilon: float | None = None
    min_clients: int | None = None

    def __post_init__(self) -> None:
        check(
            self.max_epsilon is None or (math.isfinite(self.max_epsilon) and self.max_epsilon > 0),
            "max_epsilon",
            f"must be a finite number > 0 (leave it out for no limit), got {self.max_epsilon}",
        )
        check(
            self.min_clients is None or self.min_clients >= 1,
            "min_clients",
            f"must be >= 1 (leave it out for no limit), got {self.min_clients}",
        )

    def terms(self) -> dict[str, Any]:
        """The policy's limits, as JSON (kept with a refusal, so that a changed policy looks again)."""
        return {"max_epsilon": self.max_epsilon, "min_clients": self.min_clients}

    def refusal(self, lineage: Mapping[str, Any]) -> str | None:
        """Why a release with this signed ``lineage`` breaks the policy; None when it keeps to it.

        A lineage that says nothing, or nothing usable, about what a limit bounds breaks that limit.
        """
        return self._epsilon_refusal(lineage) or self._clients_refusal(lineage)

    def _epsilon_refusal(self, lineage: Mapping[str, Any]) -> str | None:
        if self.max_epsilon is None:
            return None
        epsilon = lineage.get("epsilon")
        if lineage.get("privacy") == "none" or epsilon is None:
            return f"was not trained with differential privacy (no epsilon; max_epsilon is {self.max_epsilon:g})"
        if not _number(epsilon) or epsilon < 0:
            return f"has an unusable epsilon {epsilon!r} in its lineage"
        if epsilon <= self.max_epsilon:
            return None
        delta = lineage.get("delta")
        at = f" at delta {delta:g}" if _number(delta) else ""
        return f"spent epsilon {epsilon:g}{at}, over this device's max_epsilon {self.max_epsilon:g}"

    def _clients_refusal(self, lineage: Mapping[str, Any]) -> str | None:
        if self.min_clients is None:
            return None
        clients = lineage.get("clients")
        if clients is None:
            return f"says nothing about its clients (min_clients is {self.min_clients})"
        if not isinstance(clients, int) or isinstance(clients, bool) or clients < 0:
            return f"has an unusable clients {clients!r} in its lineage"
        if clients >= self.min_clients:
            return None
        return f"was trained with {clients} clients per round, fewer than this device's min_clients {self.min_clients}"


def _number(value: Any) -> bool:
    """A real, finite JSON number (a bool is not one; NaN and infinity are not usable)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
