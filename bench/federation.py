"""Federation round time: our ServerApp against a vanilla Flower FedAvg app, and SecAgg+ against plain.

``python -m bench.federation [--quick] [--json]``

Runs on one simulation SuperLink with the same clients and the same local work (the
digits CNN, 5 local epochs on each Dirichlet partition): the vanilla app (plain FedAvg, a
plain NumPyClient), ours with privacy ``none`` (update guard, server-side validation each
round, no version export), and ours with ``secagg``. The first run of each app on the
fresh SuperLink is a discarded one-round warm-up; then the three runs, with equal round
counts, alternate (``alternating``) so that drift falls on all of them. A round is timed
from sampling the clients to the aggregate (ours: to the end of validation); the first
round of each run, which starts the Ray actors, is left out; figures are medians over the rest.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import Progress, alternating, command_line, figures_table, ratio
from federation.runner import SuperLink, flwr_run, run_app
from federation.settings import FederationSettings

__all__ = ["main", "run"]

TARGETS = {"round_overhead_ratio": 1.15}
VANILLA_APP = Path(__file__).parent / "flower_vanilla"
WARMUP_ROUNDS = 1


def run(clients: int, rounds: int, step: Progress, repeats: int = 1) -> dict[str, Any]:
    """Warm both apps up, time ``repeats`` alternating runs of vanilla, ours and ours with SecAgg+; report."""
    with SuperLink(simulation=True) as link:

        def vanilla(n_rounds: int) -> list[float]:
            report_path = link.home / f"vanilla-{time.time_ns()}.json"
            run_config = {"num-server-rounds": n_rounds, "num-clients": clients, "report-path": str(report_path)}
            report = flwr_run(link.home, VANILLA_APP, run_config, report_path, num_supernodes=clients, timeout_s=900)
            return report["seconds"]

        def ours(privacy: str, n_rounds: int) -> list[float]:
            settings = FederationSettings(
                num_clients=clients, clients_per_round=clients, num_server_rounds=n_rounds, privacy=privacy
            )
            report = run_app(link.home, settings, num_supernodes=clients, timeout_s=900)
            return [r["seconds"] for r in report["rounds"]]

        def timed(name: str, call: Callable[[], list[float]]) -> Callable[[], list[float]]:
            def phase() -> list[float]:
                step(f"{name}: {clients} clients, {rounds} rounds")
                return call()[1:]  # round 1 starts the Ray actors

            return phase

        step(f"warm-up runs on the fresh SuperLink (discarded), {WARMUP_ROUNDS} round each: vanilla, then ours")
        vanilla(WARMUP_ROUNDS)
        ours("none", WARMUP_ROUNDS)
        results = alternating(
            {
                "vanilla": timed("vanilla Flower FedAvg", lambda: vanilla(rounds)),
                "none": timed("Fedge ServerApp, privacy none", lambda: ours("none", rounds)),
                "secagg": timed("Fedge ServerApp, privacy secagg", lambda: ours("secagg", rounds)),
            },
            repeats,
        )
    medians = {name: statistics.median(s for seconds in runs for s in seconds) for name, runs in results.items()}
    report_out: dict[str, Any] = {
        "round_overhead_ratio": ratio(medians["none"], medians["vanilla"]),
        "secagg_overhead_ratio": ratio(medians["secagg"], medians["none"]),
        "round_s": {name: round(value, 3) for name, value in medians.items()},
        "clients": clients,
        "rounds": rounds,
        "repeats": repeats,
        "warmup_rounds": WARMUP_ROUNDS,
        "wall_s": round(time.time() - step.start, 1),
    }
    report_out["meets_targets"] = {k: report_out[k] <= v for k, v in TARGETS.items()}
    return report_out


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    flat = {**report, **{f"round seconds, {name}": s for name, s in report["round_s"].items()}}
    keys = ["round_overhead_ratio", "secagg_overhead_ratio", *(f"round seconds, {n}" for n in report["round_s"])]
    title = f"federation rounds, {report['clients']} clients, medians over rounds 2..{report['rounds']}"
    console.print(figures_table(title, flat, keys, {"round_overhead_ratio": "<= 1.15"}))


main = command_line(
    "python -m bench.federation",
    __doc__,
    quick_help="3 clients, 4 rounds, once, instead of 5 clients, 10 rounds, three times",
    run=lambda args, step: run(3 if args.quick else 5, 4 if args.quick else 10, step, 1 if args.quick else 3),
    render=render,
)

if __name__ == "__main__":
    sys.exit(main())
