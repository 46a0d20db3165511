"""Privacy modes: each one owns its client mods, its server fit workflow, its strategy wrapper and its accountant.

```
mode        client mods (outermost first)                    server fit workflow   strategy wrapper  accountant
none        -                                                fit with a deadline   -                 -
secagg      secaggplus_mod, finite_mod                       SecAggPlusWorkflow    -                 -
dp          fixedclipping_mod                                fit with a deadline   client-side DP    RoundAccountant
secagg+dp   secaggplus_mod, fixedclipping_mod, finite_mod    SecAggPlusWorkflow    client-side DP    RoundAccountant
```
Clipping runs inside masking, so the server only ever sees the masked sum of clipped
updates. A new mode is one more class here and its entry in :data:`MODES`; the run
config's ``privacy`` key accepts exactly the names of :data:`MODES`.
Flower is imported where a part is built, so that the settings (and the CLI) can list and
check the modes without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sdk.config import check

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.server.strategy import Strategy

    from federation.accountant import RoundAccountant
    from federation.settings import FederationSettings

__all__ = ["MODES", "DifferentialPrivacy", "PrivacyMode", "SecAgg", "SecAggDP", "finite_mod"]

#: ``mod(msg, context, call_next) -> Message``: a Flower client mod.
Mod = Callable[..., Any]
#: ``workflow(grid, legacy_context)``: one round's fit on the server.
Workflow = Callable[..., None]


def finite_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Refuse to send a non-finite update: under SecAgg+ the server could not see it to drop it.

    (Quantization would turn a NaN into a finite but arbitrary number inside the masked sum.)
    """
    from flwr.app.message_type import MessageType

    out = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN and not out.has_error():
        for record in out.content.array_records.values():
            if not all(np.isfinite(a).all() for a in record.to_numpy_ndarrays()):
                raise ValueError("refusing to send a non-finite update")
    return out


class PrivacyMode:
    """No privacy beyond Flower's transport: the server sees every client's update."""

    name = "none"
    #: The server sees only the sum of the round's updates (robust aggregation is impossible).
    secure_aggregation = False
    #: Updates are clipped on the client and the aggregate is noised; epsilon is accounted.
    differential_privacy = False

    def check(self, settings: FederationSettings) -> None:
        """Raise ConfigError naming the key when ``settings`` cannot run in this mode."""

    def client_mods(self) -> list[Mod]:
        """The ClientApp mods of this mode, outermost first."""
        return []

    def fit_workflow(self, settings: FederationSettings) -> Workflow:
        """The server's fit step of one round."""
        from federation.workflow import fit_with_timeout

        return fit_with_timeout(settings.round_timeout_s)

    def wrap(self, strategy: Strategy, settings: FederationSettings) -> Strategy:
        """The aggregation strategy, wrapped as this mode needs."""
        return strategy

    def accountant(self, settings: FederationSettings) -> RoundAccountant | None:
        """The accountant of the privacy this mode spends (None: it spends none)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SecAgg(PrivacyMode):
    """SecAgg+: pairwise masks and secret-shared keys; the server unmasks only the sum."""

    name = "secagg"
    secure_aggregation = True

    def check(self, settings: FederationSettings) -> None:
        """Robust aggregation needs individual updates; SecAgg+ needs at least 3 clients a round."""
        check(
            settings.robust == "none",
            "robust",
            f"{settings.robust} needs every client's update, which privacy={self.name!r} hides from the server",
        )
        check(settings.clients_per_round >= 3, "clients-per-round", "secure aggregation needs at least 3 clients")

    def client_mods(self) -> list[Mod]:
        """Mask the update, after refusing a non-finite one."""
        from flwr.client.mod import secaggplus_mod

        return [secaggplus_mod, finite_mod]

    def fit_workflow(self, settings: FederationSettings) -> Workflow:
        """Flower's SecAgg+ fit workflow (its own timeout and dropout recovery)."""
        from flwr.server.workflow import SecAggPlusWorkflow

        return SecAggPlusWorkflow(
            num_shares=settings.clients_per_round,
            reconstruction_threshold=max(2, settings.clients_per_round // 2 + 1),
            timeout=settings.round_timeout_s,
        )


class DifferentialPrivacy(PrivacyMode):
    """Central DP: clipping on the client, Gaussian noise on the aggregate, epsilon from the accountant."""

    name = "dp"
    differential_privacy = True

    def client_mods(self) -> list[Mod]:
        """Clip the update before it leaves."""
        from flwr.client.mod import fixedclipping_mod

        return [fixedclipping_mod]

    def wrap(self, strategy: Strategy, settings: FederationSettings) -> Strategy:
        """Flower's client-side fixed-clipping wrapper: noise on the aggregate of clipped updates."""
        from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping

        return DifferentialPrivacyClientSideFixedClipping(
            strategy,
            noise_multiplier=settings.noise_multiplier,
            clipping_norm=settings.clipping_norm,
            num_sampled_clients=settings.clients_per_round,
        )

    def accountant(self, settings: FederationSettings) -> RoundAccountant:
        """Flower's RDP accountant for this run's rounds, with the run's budget."""
        from federation.accountant import RoundAccountant

        return RoundAccountant(
            delta=settings.delta,
            noise_multiplier=settings.noise_multiplier,
            sample_size=settings.clients_per_round,
            population=settings.num_clients,
            epsilon_budget=settings.epsilon_budget or None,
        )


class SecAggDP(SecAgg, DifferentialPrivacy):
    """SecAgg+ for the sum of clipped updates, DP noise on the aggregate."""

    name = "secagg+dp"

    def client_mods(self) -> list[Mod]:
        """Mask the clipped update, after refusing a non-finite one (clipping inside masking)."""
        from flwr.client.mod import fixedclipping_mod, secaggplus_mod

        return [secaggplus_mod, fixedclipping_mod, finite_mod]


#: Every privacy mode by its run-config name.
MODES: dict[str, PrivacyMode] = {m.name: m for m in (PrivacyMode(), SecAgg(), DifferentialPrivacy(), SecAggDP())}
