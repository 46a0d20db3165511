"""``fedge keys init`` (the offline key ceremony) and ``fedge registry ...`` (a client of the registry API).

The registry commands talk to ``fedge cloud serve`` over HTTP; the key comes from
``FEDGE_ADMIN_KEY`` (writes) or ``FEDGE_API_KEY`` (reads), never from the command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sdk.cli.console import console
from sdk.registry_client import RegistryClient, call

__all__ = ["register"]

keys_app = typer.Typer(help="Release signing keys.", no_args_is_help=True)
registry_app = typer.Typer(help="Model registry: versions, releases, fleet (talks to `fedge cloud serve`).")

UrlOpt = Annotated[str, typer.Option(envvar="FEDGE_REGISTRY_URL", help="Base URL of the cloud service.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@keys_app.command("init")
def keys_init(
    online_dir: Annotated[Path, typer.Option(help="Keys the running service signs with.")],
    root_dir: Annotated[Path, typer.Option(help="Root keys: keep this directory offline.")],
    repository: Annotated[Path, typer.Option(help="Create the signed release repository here.")],
    root_keys: Annotated[int, typer.Option(help="Number of root keys.")] = 3,
    threshold: Annotated[int, typer.Option(help="Root signatures needed to trust a root.")] = 2,
) -> None:
    """Create the signing keys and version 1 of the release repository (root signed offline)."""
    from sdk.cloud.repository import ReleaseRepository
    from sdk.cloud.signing import init_keys

    keys = init_keys(online_dir, root_dir, root_keys=root_keys, root_threshold=threshold)
    repo = ReleaseRepository.create(repository, keys)
    console.print(
        f"online keys in {online_dir}; {root_keys} root keys (any {threshold} sign a root) in {root_dir}: "
        f"move them offline. Repository in {repository}; provision devices with {repo.metadata_dir / '1.root.json'}"
    )


@keys_app.command("rotate-root")
def keys_rotate_root(
    repository: Annotated[Path, typer.Option(help="The signed release repository.")],
    online_dir: Annotated[Path, typer.Option(help="The online keys (they stay).")],
    old_root_dir: Annotated[Path, typer.Option(help="The current root keys (offline).")],
    new_root_dir: Annotated[Path, typer.Option(help="Where the new root keys go (offline).")],
    root_keys: Annotated[int, typer.Option(help="Number of new root keys.")] = 3,
    threshold: Annotated[int, typer.Option(help="New root signatures needed to trust the next root.")] = 2,
) -> None:
    """Replace the root keys: the new root is signed by the current root keys and by the new ones."""
    from sdk.cloud.repository import ReleaseRepository
    from sdk.cloud.signing import KeySet, load_signers, new_signer, write_private

    if not 1 <= threshold <= root_keys:
        raise typer.BadParameter(f"must be within 1..{root_keys}", param_hint="--threshold")
    old = load_signers(old_root_dir)
    new = [new_signer() for _ in range(root_keys)]
    for i, signer in enumerate(new):
        write_private(new_root_dir / f"root-{i + 1}.pem", signer)
    repo = ReleaseRepository(repository, KeySet.online_only(online_dir))
    version = repo.rotate_root(old, new, threshold)
    console.print(f"root v{version} signed by {len(old)} old and {root_keys} new keys (any {threshold} sign the next)")


def _key(admin: bool) -> str | None:
    return os.environ.get("FEDGE_ADMIN_KEY" if admin else "FEDGE_API_KEY") or os.environ.get("FEDGE_ADMIN_KEY")


def _call(method: str, url: str, *, admin: bool, **kwargs: Any) -> Any:
    return call(method, url, key=_key(admin), **kwargs)


def _show(data: Any, as_json: bool, columns: tuple[str, ...]) -> None:
    rows = data if isinstance(data, list) else [data]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table()
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if row.get(col) is None else str(row[col]) for col in columns))
    console.print(table)


@registry_app.command()
def upload(model_dir: Path, url: UrlOpt = "http://127.0.0.1:8000", as_json: JsonOpt = False) -> None:
    """Upload a model directory (from `fedge export` or a federation run) as a new version."""
    data = RegistryClient.from_env(url).upload(model_dir)
    _show(data, as_json, ("model", "version", "released"))


@registry_app.command()
def versions(model: str, url: UrlOpt = "http://127.0.0.1:8000", as_json: JsonOpt = False) -> None:
    """List a model's versions."""
    _show(_call("GET", f"{url}/v1/registry/models/{model}/versions", admin=False), as_json, ("version", "released"))


@registry_app.command()
def release(
    model: str,
    version: int,
    channel: Annotated[str, typer.Option(help="Release channel.")] = "stable",
    rollout: Annotated[int, typer.Option(min=0, max=100, help="Percent of devices.")] = 100,
    staged: Annotated[
        bool, typer.Option("--staged", help="Start a staged rollout at the policy's first stage (not --rollout).")
    ] = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    as_json: JsonOpt = False,
) -> None:
    """Sign a version into the release repository and notify the fleet."""
    body = {"model": model, "version": version, "channel": channel, "rollout": rollout, "staged": staged}
    data = _call("POST", f"{url}/v1/registry/releases", admin=True, json=body)
    _show(data, as_json, ("model", "version", "channel", "rollout", "state"))


@registry_app.command("set")
def set_release(
    model: str,
    version: int,
    state: Annotated[str | None, typer.Option(help="active, paused or aborted.")] = None,
    rollout: Annotated[int | None, typer.Option(min=0, max=100, help="Percent of devices.")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    as_json: JsonOpt = False,
) -> None:
    """Pause, resume, abort or widen a release."""
    body = {"state": state, "rollout": rollout}
    data = _call("PATCH", f"{url}/v1/registry/releases/{model}/{version}", admin=True, json=body)
    _show(data, as_json, ("model", "version", "channel", "rollout", "state"))


@registry_app.command()
def recall(
    model: str,
    version: int,
    reason: Annotated[str, typer.Option(help="Why: signed into the recall, shown in the fleet view.")] = "",
    url: UrlOpt = "http://127.0.0.1:8000",
    as_json: JsonOpt = False,
) -> None:
    """Abort a release: its devices go back to the newest earlier release of its channel not aborted."""
    data = _call("POST", f"{url}/v1/registry/releases/{model}/{version}/recall", admin=True, json={"reason": reason})
    if not as_json:
        data = {**data, "recall_to": data["recall"]["to"], "reason": data["recall"]["reason"]}
    _show(data, as_json, ("model", "version", "channel", "state", "recall_to", "reason"))


@registry_app.command()
def fleet(
    stale_after: Annotated[
        float | None,
        typer.Option(min=1, help="Seconds of silence after which a device not offline shows as stale (3 x 900)."),
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    as_json: JsonOpt = False,
) -> None:
    """Every device: model, running version, state (online, offline, stale), last step, last refusal, last seen."""
    params = {"stale_after_s": stale_after} if stale_after is not None else {}
    data = _call("GET", f"{url}/v1/registry/fleet", admin=False, params=params)
    if not as_json:
        data = [{**d, "state": "stale" if d.get("stale") else d.get("status")} for d in data]
    _show(data, as_json, ("device_id", "model", "running_version", "state", "last_step", "last_refusal", "last_seen"))


@registry_app.command()
def telemetry(
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    per_device: Annotated[bool, typer.Option("--per-device", help="One row per device and version.")] = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    as_json: JsonOpt = False,
) -> None:
    """What the fleet served, per version: devices, calls, error and fallback rates, mean confidence, p50/p99 (ms)."""
    params: dict[str, Any] = {"per_device": per_device, **({"model": model} if model else {})}
    data = _call("GET", f"{url}/v1/registry/telemetry", admin=False, params=params)
    if not as_json:
        data = [{k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()} for d in data]
    columns = ("model", "version", *(("device_id",) if per_device else ()), "devices", "calls", "error_rate")
    _show(data, as_json, (*columns, "fallback_rate", "mean_confidence", "p50_ms", "p99_ms", "last_seen"))


rollout_app = typer.Typer(help="Staged rollouts: stage, devices, telemetry against thresholds.", no_args_is_help=True)
registry_app.add_typer(rollout_app, name="rollout")


@rollout_app.command("status")
def rollout_status(model: str, url: UrlOpt = "http://127.0.0.1:8000", as_json: JsonOpt = False) -> None:
    """A model's newest staged rollout: stage, devices per version, checks against the thresholds, last decision."""
    data = RegistryClient(url, _key(True), read_key=_key(False)).rollout_status(model)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    stages = ", ".join(f"{p} %" for p in data["stages"])
    console.print(
        f"{data['model']} v{data['version']} (after v{data['baseline']}): {data['state']}, "
        f"stage {data['stage'] + 1} of {len(data['stages'])} ({stages}) at {data['percent']} %",
        highlight=False,
    )
    devices = ", ".join(f"v{v}: {n}" if v != "none" else f"none: {n}" for v, n in data["devices"].items())
    console.print(f"devices per version: {devices or 'none reported'}", highlight=False)
    table = Table("threshold", "limit", "measured", "devices", "verdict")
    for check in data["checks"]:
        measured = "-" if check["measured"] is None else f"{check['measured']:.4g}"
        verdict = "BREACHED" if check["breached"] else ("ok" if check["enforced"] else "too few devices")
        table.add_row(check["threshold"], f"{check['limit']:.4g}", measured, str(check["devices"]), verdict)
    console.print(table)
    last = data.get("last_decision") or {}
    console.print(f"last decision: {last.get('action', 'none yet')}: {data['reason']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``keys`` and ``registry`` groups to ``app``."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(registry_app, name="registry")
