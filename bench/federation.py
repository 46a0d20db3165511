"""Federation round time: our ServerApp against a vanilla Flower FedAvg app, and SecAgg+ against plain.

``python -m bench.federation [--quick] [--json]``

Three runs on one simulation SuperLink with the same clients and the same local work
(the digits CNN, 5 local epochs on each Dirichlet partition): the vanilla app (plain
FedAvg, a plain NumPyClient), ours with privacy ``none`` (update guard, server-side
validation each round, no version export), and ours with ``secagg``. Vanilla and ours
alternate (three times in the full run) so that drift falls on both. A round is timed from
sampling the clients to the aggregate (ours: to the end of validation); the first round of
each run, which starts the Ray actors, is left out; figures are medians over the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import Progress, ratio, stdout_to_stderr
from federation.runner import SuperLink, flwr_run, run_app
from federation.settings import FederationSettings

__all__ = ["main", "run"]

TARGETS = {"round_overhead_ratio": 1.15}
VANILLA_APP = Path(__file__).parent / "flower_vanilla"


def run(clients: int, rounds: int, step: Progress, repeats: int = 1) -> dict[str, Any]:
    """Time the runs (vanilla and ours alternating ``repeats`` times, then SecAgg+) and return the report."""
    times: dict[str, list[float]] = {"vanilla": [], "none": [], "secagg": []}
    with SuperLink(simulation=True) as link:
        for repeat in range(repeats):
            step(f"vanilla Flower FedAvg: {clients} clients, {rounds} rounds (repeat {repeat + 1}/{repeats})")
            report_path = link.home / f"vanilla-{repeat}.json"
            vanilla = flwr_run(
                link.home,
                VANILLA_APP,
                {"num-server-rounds": rounds, "num-clients": clients, "report-path": str(report_path)},
                report_path,
                num_supernodes=clients,
                timeout_s=900,
            )["seconds"]
            times["vanilla"] += vanilla[1:]  # round 1 starts the Ray actors
            privacies = ("none", "secagg") if repeat == repeats - 1 else ("none",)
            for privacy in privacies:
                step(f"Fedge ServerApp, privacy {privacy} (repeat {repeat + 1}/{repeats})")
                settings = FederationSettings(
                    num_clients=clients, clients_per_round=clients, num_server_rounds=rounds, privacy=privacy
                )
                report = run_app(link.home, settings, num_supernodes=clients, timeout_s=900)
                times[privacy] += [r["seconds"] for r in report["rounds"]][1:]
    medians = {name: statistics.median(values) for name, values in times.items()}
    report_out: dict[str, Any] = {
        "round_overhead_ratio": ratio(medians["none"], medians["vanilla"]),
        "secagg_overhead_ratio": ratio(medians["secagg"], medians["none"]),
        "round_s": {name: round(value, 3) for name, value in medians.items()},
        "clients": clients,
        "rounds": rounds,
        "repeats": repeats,
        "wall_s": round(time.time() - step.start, 1),
    }
    report_out["meets_targets"] = {k: report_out[k] <= v for k, v in TARGETS.items()}
    return report_out


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    table = Table(title=f"federation rounds, {report['clients']} clients, median of rounds 2..{report['rounds']}")
    for column in ("figure", "value"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_row("round_overhead_ratio (target <= 1.15)", f"{report['round_overhead_ratio']:.3g}")
    table.add_row("secagg_overhead_ratio", f"{report['secagg_overhead_ratio']:.3g}")
    for name, seconds in report["round_s"].items():
        table.add_row(f"round seconds, {name}", f"{seconds:.3f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.federation", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 clients, 4 rounds instead of 5 clients, 10 rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    args = parser.parse_args(argv)
    step = Progress(time.time())
    with stdout_to_stderr() as stdout:
        report = run(3 if args.quick else 5, 4 if args.quick else 10, step, repeats=1 if args.quick else 3)
        step("done")
        if args.json:
            stdout.write(json.dumps(report) + "\n")
        else:
            render(report, Console(file=stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
