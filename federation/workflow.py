"""The fit step of a round with a deadline: a client that never answers does not hold the round up.

Flower's legacy default fit workflow waits for every sampled client without a time
limit; this one hands ``round_timeout_s`` to ``Grid.send_and_receive`` and aggregates
whatever came back. (SecAgg+ has its own ``timeout`` and its own dropout recovery.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes
from flwr.server import Grid, LegacyContext
from flwr.server.client_proxy import ClientProxy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

__all__ = ["fit_with_timeout"]

log = logging.getLogger("fedge.federation")


def fit_with_timeout(timeout_s: float) -> Callable[[Grid, Context], None]:
    """A legacy fit workflow that waits at most ``timeout_s`` for the sampled clients."""

    def fit(grid: Grid, context: Context) -> None:
        context = cast(LegacyContext, context)
        current_round = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        parameters = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], True)
        instructions = context.strategy.configure_fit(current_round, parameters, context.client_manager)
        if not instructions:
            return
        proxies = {proxy.node_id: proxy for proxy, _ in instructions}
        out = [
            Message(
                content=compat.fitins_to_recorddict(fit_ins, True),
                dst_node_id=proxy.node_id,
                message_type=MessageType.TRAIN,
                group_id=str(current_round),
            )
            for proxy, fit_ins in instructions
        ]
        replies = list(grid.send_and_receive(out, timeout=timeout_s))
        results: list[tuple[ClientProxy, FitRes]] = []
        failures: list[tuple[ClientProxy, FitRes] | BaseException] = []
        for msg in replies:
            if not msg.has_content():
                failures.append(Exception(msg.error))
                continue
            fit_res = compat.recorddict_to_fitres(msg.content, False)
            if fit_res.status.code == Code.OK:
                results.append((proxies[msg.metadata.src_node_id], fit_res))
            else:
                failures.append((proxies[msg.metadata.src_node_id], fit_res))
        silent = len(instructions) - len(replies)
        if silent:
            log.warning("round %d: %d client(s) did not answer within %.0f s", current_round, silent, timeout_s)
        parameters_out, metrics = context.strategy.aggregate_fit(current_round, results, failures)
        if parameters_out is not None:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters_out, True)
            context.history.add_metrics_distributed_fit(server_round=current_round, metrics=metrics)

    return fit
