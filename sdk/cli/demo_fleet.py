"""The demo's OTA stage: the closed loop on real processes, from a registry release to a recall.

A secured Mosquitto, ``fedge cloud serve`` (registry, signed repository, release service,
rollout controller), one ``fedge cloud worker`` and four ``fedge edge run`` devices, two of
each shipped example (``examples/raspberrypi``: LiteRT; ``examples/jetson``: ONNX Runtime).
A device's ``fedge.toml`` is its example's with the broker, the repository, the paths and
its identity changed, and the update timings of :class:`DemoPace` (the field's minutes as
seconds); everything else stays as shipped. The story:

1. v1, released by the registry, on every device;
2. the federation's candidate, released staged by the release pipeline (``fedge federate --release``
   against this cloud: :data:`ReleaseCandidate`), widened stage by stage on the devices' telemetry;
3. a badly trained version forced past the gate (staged), aborted by the controller on the
   devices' telemetry and recalled: every device back on the candidate;

while each device answers its samples throughout, counted per device from its own output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.table import Table

from sdk.cli.console import console
from sdk.cli.demo import TRACE_ENV, TRACE_SUFFIX, _secured_broker, _stop_all, _wait_for_workers

__all__ = [
    "FLEET",
    "PHASES",
    "DemoPace",
    "DeviceRun",
    "LoopRun",
    "ReleaseCandidate",
    "badly_trained",
    "device_config",
    "ota_stage",
]

T = TypeVar("T")
#: Puts the federation's candidate into the registry at ``url`` (admin ``key``) as a staged release; its version,
#: or None when no round earned one.
ReleaseCandidate = Callable[[str, str], "int | None"]

#: The shipped device examples, next to the package in a checkout.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: (device id, example): each example's own device first, then one more of each family. Their stable buckets put
#: both examples' devices in the first stage of 25 %, pi-attic (30) in the second, jetson-yard (76) in the last.
FLEET = (
    ("pi-kitchen", "raspberrypi"),
    ("jetson-lab", "jetson"),
    ("pi-attic", "raspberrypi"),
    ("jetson-yard", "jetson"),
)
MODEL = "digits"
#: The stage's phases; each device's answers are counted per phase.
PHASES = ("first release", "candidate rollout", "abort + recall", "to the stop")


@dataclass(frozen=True, kw_only=True)
class DemoPace:
    """How fast the loop turns: the field's minutes as the demo's seconds (the release policy's too)."""

    sample_interval_s: float = 0.05  # each device answers a sample this often (``fedge edge run --interval``)
    check_interval_s: float = 5.0
    min_check_interval_s: float = 1.0
    telemetry_interval_s: float = 1.0
    health_window_s: float = 1.0
    rollout_tick_s: float = 0.5
    stages: tuple[int, ...] = (25, 50, 100)
    soak_s: float = 3.0
    min_devices: tuple[int, ...] = (2, 3, 4)  # every device of the stage: FLEET's buckets
    min_calls: int = 30
    patience_s: float = 180.0  # the bound on each wait (a loaded 2-core machine), never the expected time

    def update_keys(self) -> dict[str, float]:
        """The ``[update]`` keys this pace sets on each device."""
        return {
            "check_interval_s": self.check_interval_s,
            "min_check_interval_s": self.min_check_interval_s,
            "telemetry_interval_s": self.telemetry_interval_s,
            "health_window_s": self.health_window_s,
        }

    def policy_text(self) -> str:
        """The release policy file of the demo: ``examples/rollout-policy.toml``'s shape at this pace."""
        return (
            "# The demo's release policy (fedge cloud serve reads it from FEDGE_CLOUD__ROLLOUT_POLICY).\n"
            "[default]\n"
            f"stages = {list(self.stages)}\n"
            f"soak_s = {self.soak_s}\n"
            f"min_devices = {list(self.min_devices)}\n"
            f"min_calls = {self.min_calls}\n"
            "max_install_failure_rate = 0.1\n"
            "max_error_rate = 0.02\n"
            "max_fallback_rate_increase = 0.2\n"
            "max_confidence_drop = 0.1\n"
            'targets = ["tflite", "onnx-fp32"]  # what the two families run\n'
        )


@dataclass(frozen=True, kw_only=True)
class DeviceRun:
    """What one device answered, read from its own output."""

    device_id: str
    example: str
    target: str
    answers: int
    errors: int  # samples left unanswered once the device answered from its own model: the loop's failures
    before_install: int  # samples unanswered before that, with no model yet (broker connecting, cloud past deadline)
    sources: dict[str, int]
    versions: tuple[int, ...]  # the versions it swapped in, in order (its log's "now serving" lines)
    swapped_at: tuple[float, ...] = ()  # when it began serving each of them (epoch seconds, its log's clock)
    per_phase: tuple[int, ...]  # answers in each of PHASES


@dataclass(frozen=True, kw_only=True)
class LoopRun:
    """The OTA stage's outcome: each rollout's final status, the fleet after each phase, and each device's answers."""

    first: int
    candidate: int | None  # None: no round of the federation earned a release
    bad: int
    candidate_rollout: dict[str, Any]
    bad_rollout: dict[str, Any]
    fleet: dict[str, dict[str, int | None]] = field(default_factory=dict)  # phase -> device -> running version
    devices: tuple[DeviceRun, ...] = ()
    started_at: float = 0.0  # epoch seconds: the stage's start and end, for a timeline
    finished_at: float = 0.0
    milestones: tuple[tuple[float, str], ...] = ()  # (epoch seconds, what happened): releases, abort and recall


def device_config(
    example: Path, device_id: str, *, broker: str, ca_file: Path, repository_url: str, root: Path, pace: DemoPace
) -> str:
    """``example``'s fedge.toml for ``device_id``: broker, CA, repository, paths (under ``root``) and pace changed."""
    from sdk.config import tomllib

    config = tomllib.loads((example / "fedge.toml").read_text())
    host, port = broker.rsplit(":", 1)
    config["mqtt"].update(host=host, port=int(port), ca_file=str(ca_file), username=device_id)
    config["update"].update(device_id=device_id, repository_url=repository_url, **pace.update_keys())
    for table in config.values():
        for key, value in table.items():
            if isinstance(value, str) and value.startswith("/") and key != "ca_file":
                table[key] = str(root / value.lstrip("/"))
    # JSON's strings, numbers, booleans and arrays are TOML's too; the device side has no TOML writer.
    return "\n".join(
        f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
        for name, table in config.items()
    )


def badly_trained(split: Any, out: Path, version: int, *, samples: int = 40) -> Path:
    """Export, as ``version``, a digits CNN trained one epoch on ``samples`` images: low confidence on every input."""
    from federation.export import ExportConfig, export_model
    from federation.task import DigitsCNN, set_seed, train

    set_seed(1)
    model = DigitsCNN()
    train(model, split.x_train[:samples], split.y_train[:samples], epochs=1, lr=3e-3)
    # An operator forces this one past every gate, the export's int8 accuracy check included.
    export_model(model, out, split, ExportConfig(version=version, overwrite=True, max_accuracy_drop_pt=100.0))
    return out


def ota_stage(
    release_dir: Path,
    candidate: ReleaseCandidate,
    bad: Callable[[int], Path],
    workdir: Path,
    x: np.ndarray,
    *,
    pace: DemoPace | None = None,
    examples: Path = EXAMPLES,
) -> LoopRun:
    """Run the loop on real processes (see the module's docstring), print its tables, and return what happened.

    ``candidate`` releases the federation's candidate while the fleet runs; ``bad(version)`` exports the bad
    version under the number the registry gives next.
    """
    from sdk.broker.acl import RELEASE_ACCOUNT, WORKER_ACCOUNT
    from sdk.cloud.repository import ReleaseRepository
    from sdk.cloud.signing import init_keys
    from sdk.edge.cloud_client import CloudClient
    from sdk.manifest import load_manifest
    from sdk.mosquitto import free_port
    from sdk.registry_client import RegistryClient

    pace = pace or DemoPace()
    if not (examples / "raspberrypi" / "fedge.toml").is_file():
        raise FileNotFoundError(f"{examples} holds no device examples: run the demo from a checkout")
    shutil.rmtree(workdir, ignore_errors=True)
    first = load_manifest(release_dir).version
    ids = [device_id for device_id, _ in FLEET]
    admin = secrets.token_urlsafe(24)
    fleet: dict[str, dict[str, int | None]] = {}
    marks: list[dict[str, int]] = []
    started_at = time.time()
    milestones: list[tuple[float, str]] = []
    with contextlib.ExitStack() as stack:
        console.print("[bold]6/6 OTA[/]: a secured broker, fedge cloud serve, a cloud worker, four fedge edge run")
        broker, layout = _secured_broker(stack, workdir / "broker", ids)
        keys = init_keys(workdir / "keys" / "online", workdir / "keys" / "offline-root")
        repo = ReleaseRepository.create(workdir / "repository", keys)
        policy = workdir / "rollout-policy.toml"
        policy.write_text(pace.policy_text())
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "sdk.cli", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port)]
        serve += ["--registry-url", f"sqlite:///{workdir / 'registry.db'}", "--repository", str(repo.directory)]
        serve += ["--keys", str(workdir / "keys" / "online"), "--store", str(workdir / "store")]
        serve += ["--broker", broker.address, "--config", str(layout.client_config(RELEASE_ACCOUNT))]
        cloud_env = {
            "FEDGE_CLOUD__ADMIN_KEYS": admin,
            "FEDGE_CLOUD__ROLLOUT_POLICY": str(policy),
            "FEDGE_CLOUD__ROLLOUT_TICK_S": str(pace.rollout_tick_s),
        }
        processes: dict[str, subprocess.Popen] = {}
        stack.callback(lambda: _stop_all(list(processes.values())))
        processes["cloud"] = _spawn(serve, workdir / "cloud", layout.password(RELEASE_ACCOUNT), cloud_env)
        work = [sys.executable, "-m", "sdk.cli", "cloud", "worker", "-m", str(release_dir), "--id", "demo-worker"]
        work += ["--broker", broker.address, "--config", str(layout.client_config(WORKER_ACCOUNT))]
        processes["worker"] = _spawn(work, workdir / "worker", layout.password(WORKER_ACCOUNT))
        wait = _Waiter(processes, workdir, pace.patience_s)
        wait.until(lambda: _answers(f"{url}/healthz"), "fedge cloud serve answers")
        console.print(f"the fleet dashboard, live while the demo runs: {url}/dashboard", highlight=False)
        probe = CloudClient(layout.settings(ids[0], broker.address), device_id=ids[0]).start(wait=True)
        try:  # before a device starts: until its first install it answers through this worker
            _wait_for_workers(probe, MODEL, x[0], timeout_s=pace.patience_s)
        finally:
            probe.close()

        client = RegistryClient(url, admin)
        client.upload(release_dir)
        client.release(MODEL, first)
        milestones.append((time.time(), f"v{first} released"))
        console.print(f"v{first} released by the registry to the whole fleet; repository {url}/tuf")
        root_json = repo.metadata_dir / "1.root.json"
        logs = {}
        for i, (device_id, example) in enumerate(FLEET):
            folder = workdir / "devices" / device_id
            folder.mkdir(parents=True)
            config = folder / "fedge.toml"
            config.write_text(
                device_config(
                    examples / example,
                    device_id,
                    broker=broker.address,
                    ca_file=layout.ca_cert,
                    repository_url=f"{url}/tuf",
                    root=folder,
                    pace=pace,
                )
            )
            samples = folder / "sensor.npy"
            np.save(samples, x[i * 50 : (i + 1) * 50])  # each device its own inputs
            run = [sys.executable, "-m", "sdk.cli", "edge", "run", "--config", str(config)]
            run += ["--state-dir", str(folder / "state"), "--root-metadata", str(root_json)]
            run += ["--samples", str(samples), "--interval", str(pace.sample_interval_s)]
            processes[device_id] = _spawn(run, folder / "device", layout.password(device_id))
            logs[device_id] = folder / "device.out"

        def on(version: int) -> dict[str, int | None] | None:
            running = _fleet(url, admin)
            return running if all(running.get(d) == version for d in ids) else None

        fleet[PHASES[0]] = wait.until(lambda: on(first), f"every device on v{first}")
        marks.append(_counts(logs))
        console.print(f"every device runs v{first}; the federation trains on, and its release pipeline rolls out")

        def ended(version: int, good: int, phase: str) -> dict[str, Any]:
            """``version``'s rollout once it ended and every device runs ``good``."""
            status = wait.until(_rollout_ended(client, version), f"the rollout of v{version} ended")
            fleet[phase] = wait.until(lambda: on(good), f"every device on v{good} ({phase})")
            marks.append(_counts(logs))
            _print_status(url, admin)
            return status

        released = candidate(url, admin)
        good = released or first
        if released is None:
            console.print(f"no round earned a release: the fleet stays on v{first}")
            candidate_rollout: dict[str, Any] = {}
            fleet[PHASES[1]] = _fleet(url, admin)
            marks.append(_counts(logs))
        else:
            candidate_rollout = ended(released, good, PHASES[1])
            milestones.extend(_decisions(candidate_rollout, ("start", "complete")))
        worst = client.latest_version(MODEL) + 1  # the registry numbers: after every version the federation made
        bad_dir = bad(worst)
        console.print(f"an operator forces v{worst}, badly trained, past the gate: POST /v1/registry/releases staged")
        client.upload(bad_dir)
        client.release(MODEL, worst, staged=True)
        bad_rollout = ended(worst, good, PHASES[2])  # aborted and recalled: the fleet goes back to the good version
        milestones.extend(_decisions(bad_rollout, ("start", "abort")))
        before = marks[-1]
        wait.until(lambda: all(n > before[d] for d, n in _counts(logs).items()), "one more answer on every device")
        _stop_all([processes.pop(d) for d in ids])  # systemctl stop: SIGTERM, the retained offline status
        marks.append(_counts(logs))

    runs = tuple(_device_run(device_id, example, logs[device_id], marks) for device_id, example in FLEET)
    result = LoopRun(
        first=first,
        candidate=released,
        bad=worst,
        candidate_rollout=candidate_rollout,
        bad_rollout=bad_rollout,
        fleet=fleet,
        devices=runs,
        started_at=started_at,
        finished_at=time.time(),
        milestones=tuple(sorted(milestones)),
    )
    _print_table(result)
    return result


class _Waiter:
    """Bounded waits that fail at once, with the log's tail, when a process of the demo ended."""

    def __init__(self, processes: dict[str, subprocess.Popen], workdir: Path, patience_s: float) -> None:
        self.processes, self.workdir, self.patience_s = processes, workdir, patience_s

    def until(self, predicate: Callable[[], T | None], what: str) -> T:
        deadline = time.monotonic() + self.patience_s
        while True:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self._tail()}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {self.patience_s:.0f} s\n{self._tail()}")
            time.sleep(0.2)

    def _tail(self) -> str:
        tails = []
        for log in sorted(self.workdir.rglob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"--- {log.relative_to(self.workdir)}\n" + "\n".join(lines))
        return "\n".join(tails)


def _spawn(command: list[str], base: Path, password: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` with its account's password in the environment; stdout to ``base.out``, stderr to ``.log``."""
    from sdk.broker.layout import PASSWORD_ENV

    trace = {TRACE_ENV: str(base.with_suffix(TRACE_SUFFIX))}  # its spans, which the demo gathers at the end
    env = {**os.environ, PASSWORD_ENV: password, "COLUMNS": "200", **trace, **(extra or {})}
    base.parent.mkdir(parents=True, exist_ok=True)
    with open(base.with_suffix(".out"), "w") as out, open(base.with_suffix(".log"), "w") as err:
        return subprocess.Popen(command, env=env, stdout=out, stderr=err)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.HTTPError:
        return False


def _fleet(url: str, key: str) -> dict[str, int | None]:
    from sdk.registry_client import call

    return {d["device_id"]: d["running_version"] for d in call("GET", f"{url}/v1/registry/fleet", key=key)}


def _rollout_ended(client: Any, version: int) -> Callable[[], dict[str, Any] | None]:
    """A predicate that prints each new decision of ``version``'s rollout and returns its status once it ended."""
    shown = 0

    def ended() -> dict[str, Any] | None:
        nonlocal shown
        status = client.rollout_status(MODEL)
        if status["version"] != version:
            return None
        for entry in status["history"][shown:]:
            console.print(f"  v{version} {entry['action']} ({entry['percent']} %): {entry['reason']}", highlight=False)
        shown = len(status["history"])
        return status if status["state"] != "running" else None

    return ended


_MILESTONES = {"start": "staged", "abort": "aborted, recalled"}


def _decisions(status: dict[str, Any], actions: tuple[str, ...]) -> list[tuple[float, str]]:
    """The moments of a rollout's ``actions`` (its history's UTC times as epoch seconds), as milestones."""
    version, moments = status["version"], []
    for entry in status["history"]:
        if entry["action"] in actions:
            what = _MILESTONES.get(entry["action"], entry["action"])
            moments.append((dt.datetime.fromisoformat(entry["at"]).timestamp(), f"v{version} {what}"))
    return moments


def _print_status(url: str, key: str) -> None:
    """What an operator sees: ``fedge registry rollout status digits``."""
    command = [sys.executable, "-m", "sdk.cli", "registry", "rollout", "status", MODEL, "--url", url]
    env = {**os.environ, "FEDGE_API_KEY": key, "COLUMNS": "120"}
    shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    console.print(f"$ fedge registry rollout status {MODEL}\n{shown.stdout.rstrip()}", highlight=False)


_ANSWER = re.compile(r"^(?P<device>[\w.-]+): label \d+ \([\d.]+\) from (?P<source>[\w-]+), v\d+,")
_NO_ANSWER = re.compile(r"^(?P<device>[\w.-]+): no answer \(")
_SWAP = re.compile(rf"^(?P<at>[\d-]+ [\d:,]+) INFO fedge\.edge: now serving {MODEL} v(?P<version>\d+)")
#: ``fedge edge run``'s log time stamps (logging's asctime: local time, milliseconds).
_ASCTIME = "%Y-%m-%d %H:%M:%S,%f"


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def _counts(logs: dict[str, Path]) -> dict[str, int]:
    """Answers (and failed calls) so far, per device."""
    return {d: sum(bool(_ANSWER.match(x) or _NO_ANSWER.match(x)) for x in _lines(p)) for d, p in logs.items()}


def _device_run(device_id: str, example: str, log: Path, marks: list[dict[str, int]]) -> DeviceRun:
    from sdk.config import tomllib

    sources: Counter[str] = Counter()
    errors = before_install = 0
    for line in _lines(log):
        if _NO_ANSWER.match(line):
            if set(sources) - {"cloud"}:
                errors += 1
            else:
                before_install += 1
        elif answer := _ANSWER.match(line):
            sources[answer["source"]] += 1
    swaps = [swap for line in _lines(log.with_suffix(".log")) if (swap := _SWAP.match(line))]
    totals = [0, *(m[device_id] for m in marks)]
    target = tomllib.loads((log.parent / "fedge.toml").read_text())["update"]["target"]
    return DeviceRun(
        device_id=device_id,
        example=example,
        target=target,
        answers=sum(sources.values()),
        errors=errors,
        before_install=before_install,
        sources=dict(sources),
        versions=tuple(int(swap["version"]) for swap in swaps),
        swapped_at=tuple(dt.datetime.strptime(swap["at"], _ASCTIME).timestamp() for swap in swaps),
        per_phase=tuple(b - a for a, b in itertools.pairwise(totals)),
    )


def _print_table(run: LoopRun) -> None:
    from sdk.edge.rollout import bucket

    aborted = run.bad_rollout.get("reason", "")
    staged = f"v{run.candidate} staged" if run.candidate is not None else "no candidate"
    title = f"the loop on four devices: v{run.first}, {staged}, v{run.bad} forced, aborted, recalled"
    table = Table(title=title)
    for col in ("device", "target", "installed", "answers by phase", "by the cloud", "failed"):
        table.add_column(col, justify="left" if col in ("device", "target", "installed") else "right")
    for d in run.devices:
        table.add_row(
            d.device_id,
            d.target,
            " ".join(f"v{v}" for v in d.versions),
            "/".join(str(n) for n in d.per_phase),
            str(d.sources.get("cloud", 0)),
            str(d.errors),
        )
    console.print(table)
    before = sum(d.before_install for d in run.devices)
    console.print(
        f"answers by phase: {' / '.join(PHASES)}; stage buckets: "
        + ", ".join(f"{d.device_id} {bucket(d.device_id, MODEL)}" for d in run.devices)
        + f"; before its first install a device has only the cloud: {before} sample(s) went unanswered then",
        highlight=False,
    )
    good = run.candidate_rollout
    console.print(
        (f"v{run.candidate}: {good['state']} ({good['reason']}); " if good else "")
        + f"v{run.bad}: {run.bad_rollout['state']} ({aborted}); every file verified against TUF metadata "
        "signed by keys the devices trust",
        highlight=False,
    )
