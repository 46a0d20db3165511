"""``fedge federate`` (run a federation) and ``fedge edge join`` (a device joins one as a SuperNode)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sdk.cli.console import console, progress

__all__ = ["print_report", "register"]

edge_app = typer.Typer(help="Device-side commands.", no_args_is_help=True)


def federate(
    engine: Annotated[str, typer.Option(help="simulation (virtual clients here) or deployment (a real SuperLink).")] = (
        "simulation"
    ),
    clients: Annotated[int, typer.Option(help="Number of clients (partitions).")] = 5,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    clients_per_round: Annotated[int | None, typer.Option(help="Clients sampled per round (default: all).")] = None,
    privacy: Annotated[str, typer.Option(help="none, secagg, dp or secagg+dp.")] = "none",
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox or fedadam.")] = "fedavg",
    robust: Annotated[str, typer.Option(help="none, trimmed-mean, median or krum.")] = "none",
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP noise multiplier.")] = None,
    clipping_norm: Annotated[float | None, typer.Option(help="DP clipping norm of a client update.")] = None,
    epsilon_budget: Annotated[float | None, typer.Option(help="Stop before epsilon would exceed this.")] = None,
    versions_dir: Annotated[Path | None, typer.Option(help="Where accepted global models become versions.")] = None,
    registry_url: Annotated[
        str | None,
        typer.Option(help="The cloud service whose registry numbers and keeps the versions (key: FEDGE_ADMIN_KEY)."),
    ] = None,
    release: Annotated[
        bool,
        typer.Option(
            "--release",
            help="Release each accepted version: export the fleet's kinds, check, sign, roll out in stages.",
        ),
    ] = False,
    superlink: Annotated[str | None, typer.Option(help="HOST:PORT of the SuperLink (deployment engine).")] = None,
    run_config: Annotated[str | None, typer.Option(help="More run-config overrides: 'key=value key=value'.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up on the run after this many seconds.")] = 1800.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's report as JSON.")] = False,
) -> None:
    """Train the digits model with Flower across clients; every accepted round becomes a new version."""
    from dataclasses import replace

    from federation.runner import SuperLink, run_app, write_connection
    from federation.settings import FederationSettings
    from sdk.config import tomllib

    if engine not in ("simulation", "deployment"):
        raise typer.BadParameter("must be simulation or deployment", param_hint="--engine")
    if release and not registry_url:
        raise typer.BadParameter("--release needs --registry-url: the registry signs releases", param_hint="--release")
    if engine == "deployment" and not superlink:
        raise typer.BadParameter("the deployment engine needs --superlink HOST:PORT", param_hint="--superlink")
    values: dict[str, Any] = {
        "num-clients": clients,
        "num-server-rounds": rounds,
        "clients-per-round": clients_per_round or clients,
        "privacy": privacy,
        "strategy": strategy,
        "robust": robust,
    }
    optional = {
        "local-epochs": local_epochs,
        "noise-multiplier": noise_multiplier,
        "clipping-norm": clipping_norm,
        "epsilon-budget": epsilon_budget,
        "versions-dir": str(versions_dir.resolve()) if versions_dir else None,
        "registry-url": registry_url,
        "release": release or None,
    }
    values.update({k: v for k, v in optional.items() if v is not None})
    if run_config:
        values.update(tomllib.loads(run_config.replace(" ", "\n")))
    settings = FederationSettings.from_run_config(values)  # every error here comes before any node is contacted
    settings = replace(settings, report_path="")

    with progress() as bar:
        task = bar.add_task(f"federating: {clients} clients, {rounds} rounds, privacy {privacy}", total=rounds)

        def on_line(line: str) -> None:
            if "[ROUND " in line:
                bar.update(task, completed=int(line.split("[ROUND ", 1)[1].split("]", 1)[0]) - 1)
            elif "ERROR" in line or "privacy budget" in line:
                console.print(line.strip(), markup=False, highlight=False)

        if engine == "simulation":
            with SuperLink(simulation=True) as link:
                report = run_app(link.home, settings, num_supernodes=clients, timeout_s=timeout, on_line=on_line)
        else:
            import tempfile

            home = Path(tempfile.mkdtemp(prefix="fedge-flwr-"))
            write_connection(home, str(superlink))
            report = run_app(home, settings, timeout_s=timeout, on_line=on_line)
        bar.update(task, completed=rounds)

    if as_json:
        import json

        typer.echo(json.dumps(report, indent=2, default=str))
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    """Print a federation report: one row per round, then the final accuracy."""
    table = Table(title=f"federation run {report['run_id']}")
    for col in ("round", "val accuracy", "epsilon", "clients", "dropped", "candidate", "s"):
        table.add_column(col, justify="right")
    candidate_rounds = {c["round"]: c["version"] for c in report["candidates"]}
    for r in report["rounds"]:
        eps = r.get("epsilon")
        table.add_row(
            str(r["round"]),
            f"{r['val_accuracy']:.4f}",
            "-" if eps is None else f"{eps:.3g}",
            str(r["clients"]),
            str(r["dropped"]),
            f"v{candidate_rounds[r['round']]}" if r["round"] in candidate_rounds else "",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    for refusal in report.get("refusals", []):
        console.print(f"round {refusal['round']} not a candidate: {refusal['reason']}", markup=False, highlight=False)
    for candidate in report["candidates"]:
        if candidate.get("registry_error"):
            console.print(f"v{candidate['version']} not registered: {candidate['registry_error']}", markup=False)
    released = [c["release"] for c in report["candidates"] if "release" in c]
    if released:
        print_releases(released)
    console.print(f"final global model: test accuracy {report['test_accuracy']:.4f}")
    if report.get("stopped"):
        console.print(f"[bold yellow]{report['stopped']}[/]")


def print_releases(outcomes: list[dict[str, Any]]) -> None:
    """Print what the release pipeline did with each candidate: kinds, accuracies against the release, verdict."""
    table = Table(title="releases")
    for col in ("version", "parent", "kind", "accuracy", "release", "check"):
        table.add_column(col, justify="right")
    for outcome in outcomes:
        for i, check in enumerate(outcome["checks"]):
            table.add_row(
                f"v{outcome['version']}" if i == 0 else "",
                ("-" if outcome["parent_version"] is None else f"v{outcome['parent_version']}") if i == 0 else "",
                check["kind"],
                "-" if check["accuracy"] is None else f"{check['accuracy']:.4f}",
                "-" if check["release_accuracy"] is None else f"{check['release_accuracy']:.4f}",
                "ok" if check["accepted"] else "refused",
            )
    console.print(table)
    for outcome in outcomes:
        verdict = "released, staged rollout started" if outcome["released"] else f"not released: {outcome['reason']}"
        console.print(f"v{outcome['version']} {verdict}", markup=False, highlight=False)


@edge_app.command()
def join(
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the SuperLink.")],
    partition_id: Annotated[int, typer.Option(help="This device's partition of the reference data.")] = 0,
    num_partitions: Annotated[int, typer.Option(help="How many partitions the data is split into.")] = 5,
    data_provider: Annotated[
        str | None, typer.Option(help="module:function returning this device's (x, y), instead of a partition.")
    ] = None,
) -> None:
    """Join a federation as a Flower SuperNode and train when the SuperLink asks, until stopped."""
    from federation.runner import SuperNode

    node_config: dict[str, Any] = {"partition-id": partition_id, "num-partitions": num_partitions}
    if data_provider:
        node_config["data-provider"] = data_provider
    node = SuperNode(superlink, node_config).start()
    console.print(f"joined {superlink} as a SuperNode ({node_config}); log: {node.log_file}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    waiter = threading.Thread(target=lambda: (node.wait(), stop.set()), daemon=True)
    waiter.start()
    stop.wait()
    node.stop()


def register(app: typer.Typer) -> None:
    """Add ``federate`` and the ``edge`` group to ``app``."""
    app.command()(federate)
    app.add_typer(edge_app, name="edge")
