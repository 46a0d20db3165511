"""Over-the-air rollout: one release of a real exported model to many simulated devices, against plain GETs.

``python -m bench.ota [--quick] [--json] [--cache-dir DIR | --no-cache]``

One private Mosquitto, one cloud service (registry on SQLite, the signed TUF repository
served by uvicorn, release notices, the fleet listener) and N devices, each with its own
MQTT connection, updater, store and TUF metadata. The model is the int8 MobileNetV2 of
``bench.mobilenet`` (built once and cached), so the download is a realistic size. The clock
starts when the release is created over HTTP and stops when the registry's fleet view shows
the last device on the new version. Bytes are counted at the devices' HTTP fetcher: every
metadata file, the release index, manifest, probe and artifact; ``bytes_per_device_ratio``
divides them by the artifact, ``bytes_per_release_file_ratio`` by the files a device must
have (artifact, manifest and the probe for its smoke test), leaving the TUF overhead.

Before the clock, every device installs the model and serves it; then comes a bad release (the
same model with wrong recorded probe outputs, :func:`bench.versions.with_wrong_probe`) that every
device must refuse, then the timed good release (bytes are counted for it alone). From the bad
release to the end of the good one, :class:`Traffic` keeps calling every device's
``runtime.predict`` on the probe input: ``failed_predictions_during_updates`` (target 0) counts
those that raised, out of ``predictions_during_updates``. Each install watches a health window
of ``HEALTH_WINDOW_S`` after its swap.

Then comes a staged release (:data:`POLICY`: 5 %, 25 %, 100 %, each stage soaked a second), which
the rollout controller (:mod:`sdk.cloud.rollouts`) widens on the devices' telemetry (each device
reports every ``TELEMETRY_S``): ``time_to_fleet_s`` runs from the staged release to the last device
on it, against ``time_to_fleet_soak_s``, the soak the policy asks for alone. Last, that release is
recalled (a signed abort): ``recall_s`` runs from the recall to the last device back on the release before.

The raw baseline runs in the same run, once before the rollout and once after, so drift
falls on both sides: as many plain devices (a thread and an HTTP connection pool each, no
TUF, no MQTT, no install) GET the same three files from the same server, all at once.
``time_to_all_devices_ratio`` is the rollout's time over the mean time of the raw fetches.
"""

from __future__ import annotations

import contextlib
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import urllib3
from fastapi.staticfiles import StaticFiles
from rich.console import Console
from tuf.ngclient import Urllib3Fetcher

from bench.harness import Progress, command_line, figures_table, ratio
from bench.mobilenet import MobileNetSpec, add_cache_arguments, chosen_cache_root, mobilenet_dir
from bench.versions import make_version, with_wrong_probe
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.rollout_policy import RolloutPolicies, RolloutPolicy
from sdk.cloud.rollout_store import RolloutStore
from sdk.cloud.rollouts import RolloutDriver
from sdk.cloud.server import BackgroundServer
from sdk.cloud.signing import init_keys
from sdk.edge import EdgeRuntime
from sdk.edge.background import CheckSchedule
from sdk.edge.config import EdgeConfig
from sdk.edge.install import ModelStore
from sdk.edge.rollout import bucket
from sdk.edge.status import DeviceLink
from sdk.edge.telemetry import Telemetry
from sdk.edge.updater import ModelUpdater, UpdateConfig, UpdateOutcome, open_installed
from sdk.manifest import load_manifest, load_probe
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings

__all__ = ["CountingFetcher", "Traffic", "main", "raw_fetch", "run"]

ADMIN = "bench-admin-0123456789abcdef"
TARGETS = {"bytes_per_device_ratio": 1.1, "failed_predictions_during_updates": 0, "recall_s": 30.0}
HEALTH_WINDOW_S = 1.0  # the window after each swap (10 s by default on a device): part of every install's time
TRAFFIC_THREADS = 2
TRAFFIC_PAUSE_S = 0.005  # between two predictions of one traffic thread: serving goes on, lightly
TELEMETRY_S = 0.5  # each device's telemetry interval, so that the controller sees a soak within a second
#: The staged release: three stages, each soaked a second on devices that served a few calls on the new version.
POLICY = RolloutPolicy(stages=(5, 25, 100), soak_s=1.0, min_devices=1, min_calls=3, targets=("onnx-int8",))
ROLLOUT_TICK_S = 0.2


def device_ids(count: int, model: str) -> list[str]:
    """``count`` device ids, the first within the first stage of ``POLICY`` (so that every stage has a device)."""
    first = next(f"bench-first-{k}" for k in range(10_000) if bucket(f"bench-first-{k}", model) < POLICY.stages[0])
    return [first, *(f"bench-{i:03d}" for i in range(1, count))]


class Traffic:
    """Threads that keep calling ``predict`` on every runtime in turn, counting calls and calls that raised."""

    def __init__(self, runtimes: list[EdgeRuntime], sample: np.ndarray) -> None:
        """Start ``TRAFFIC_THREADS`` threads, each over its share of ``runtimes``."""
        self.calls = 0
        self.failed = 0
        self.first_failure: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, args=(runtimes[k::TRAFFIC_THREADS], sample), daemon=True)
            for k in range(TRAFFIC_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self, runtimes: list[EdgeRuntime], sample: np.ndarray) -> None:
        while not self._stop.is_set():
            for runtime in runtimes:
                try:
                    runtime.predict(sample)
                    failure = None
                except Exception as exc:  # counted, not fatal: this is the figure
                    failure = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.calls += 1
                    if failure is not None:
                        self.failed += 1
                        self.first_failure = self.first_failure or failure
                self._stop.wait(TRAFFIC_PAUSE_S)

    def stop(self) -> None:
        """Stop the threads and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CountingFetcher(Urllib3Fetcher):
    """python-tuf's default fetcher, counting the bytes it hands over and keeping the URLs it fetched."""

    def __init__(self) -> None:
        super().__init__(app_user_agent="fedge-bench")
        self.bytes = 0
        self.urls: list[str] = []
        self._lock = threading.Lock()

    def _fetch(self, url: str) -> Iterator[bytes]:
        with self._lock:
            self.urls.append(url)
        for chunk in super()._fetch(url):
            with self._lock:
                self.bytes += len(chunk)
            yield chunk


def raw_fetch(urls: list[str], devices: int) -> tuple[float, int]:
    """Seconds until ``devices`` threads, an HTTP connection pool each, have all GET every URL; bytes per device."""
    start_line = threading.Barrier(devices + 1)
    fetched = [0] * devices
    errors: list[BaseException] = []

    def device(i: int) -> None:
        with urllib3.PoolManager() as http:
            start_line.wait()
            try:
                for url in urls:
                    response = http.request("GET", url)
                    if response.status != 200:
                        raise RuntimeError(f"GET {url}: HTTP {response.status}")
                    fetched[i] += len(response.data)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=device, args=(i,), daemon=True) for i in range(devices)]
    for t in threads:
        t.start()
    start_line.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed, round(statistics.fmean(fetched))


def run(devices: int, step: Progress, cache_root: Path | None = None) -> dict[str, Any]:
    """Roll one release out to ``devices`` devices between two raw fetches; report.

    ``cache_root`` None builds the model privately (what tests do); command-line runs share a cache.
    """
    with contextlib.ExitStack() as stack:
        model_dir, _ = stack.enter_context(mobilenet_dir(MobileNetSpec(calibration_samples=16), cache_root, step))
        manifest = load_manifest(model_dir)
        artifact_size = manifest.artifacts["onnx-int8"].size
        release_files = [manifest.artifacts["onnx-int8"].file, "manifest.json"]
        if manifest.probe:
            release_files.append(manifest.probe.file)
        release_size = sum((model_dir / name).stat().st_size for name in release_files)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-ota-")))
        broker = stack.enter_context(Mosquitto(extra_config="max_connections -1\n"))
        settings = MqttSettings.from_address(broker.address)
        keys = init_keys(tmp / "online", tmp / "root", root_keys=1, root_threshold=1)
        repo = ReleaseRepository.create(tmp / "repository", keys)
        registry = Registry(f"sqlite:///{tmp / 'registry.db'}", tmp / "store", repo)
        stack.callback(registry.close)
        stack.enter_context(ReleaseService(registry, settings))
        config = CloudConfig(admin_keys=(ADMIN,))
        rollouts = RolloutStore(registry, RolloutPolicies(default=POLICY))
        stack.enter_context(RolloutDriver(rollouts, tick_s=ROLLOUT_TICK_S))
        app = create_app({}, config, repository_dir=repo.directory, registry=registry, rollouts=rollouts)
        # The raw baseline's files, from the same server and the same kind of static route as /tuf.
        app.mount("/baseline", StaticFiles(directory=model_dir), name="baseline")
        server = stack.enter_context(BackgroundServer(app))
        raw_urls = [f"{server.url}/baseline/{name}" for name in release_files]
        good = make_version(model_dir, tmp / "good", manifest.version + 2)
        bad = with_wrong_probe(make_version(model_dir, tmp / "bad", manifest.version + 1))
        staged = make_version(model_dir, tmp / "staged", manifest.version + 3)
        for version_dir in (model_dir, bad, good, staged):
            registry.add_version(version_dir)
        step(f"raw baseline, before: {devices} plain devices GET the artifact, manifest and probe")
        raw_before, raw_bytes = raw_fetch(raw_urls, devices)
        step(f"{devices} devices connecting (one MQTT connection, updater and store each)")
        fetchers: list[CountingFetcher] = []
        updaters: list[ModelUpdater] = []
        outcomes: queue.Queue[tuple[int, UpdateOutcome]] = queue.Queue()
        root = repo.root_bytes(1)
        edge_config = EdgeConfig(artifacts=("onnx-int8",), num_threads=1)
        telemetries: list[Telemetry] = []
        for i, device_id in enumerate(device_ids(devices, manifest.name)):
            fetcher = CountingFetcher()
            fetchers.append(fetcher)
            telemetries.append(Telemetry())
            link = DeviceLink(
                settings,
                device_id,
                manifest.name,
                schedule=CheckSchedule(min_interval_s=0.0),
                telemetry=telemetries[-1],
                telemetry_interval_s=TELEMETRY_S,
            )
            updater = ModelUpdater(
                ModelStore(tmp / "devices" / device_id),
                UpdateConfig(
                    model=manifest.name,
                    device_id=device_id,
                    repository_url=f"{server.url}/tuf",
                    health_window_s=HEALTH_WINDOW_S,
                ),
                root,
                edge_config=edge_config,
                reporter=link.report,
                fetcher=fetcher,
            )
            updaters.append(updater)
            link.on_notice = lambda i=i, updater=updater: outcomes.put((i, updater.check()))
            link.start(wait=True)  # connected before the clock starts: the release is timed, not the connects
            stack.callback(link.stop)

        def post(path: str, body: dict[str, Any]) -> None:
            response = httpx.post(f"{server.url}{path}", json=body, headers={"X-API-Key": ADMIN}, timeout=60)
            response.raise_for_status()

        def all_on(version: int) -> None:
            while sum(d["running_version"] == version for d in registry.fleet()) < devices:
                time.sleep(0.05)

        def release(version: int, expected: set[str]) -> None:
            """Release ``version`` over HTTP; return once every device's check about it ended as ``expected``."""
            post("/v1/registry/releases", {"model": manifest.name, "version": version})
            checked(version, expected)

        def checked(version: int, expected: set[str]) -> None:
            """Return once every device's check about ``version`` ended (health window included) as ``expected``."""
            ended: dict[int, UpdateOutcome] = {}
            while len(ended) < devices:
                i, outcome = outcomes.get(timeout=600)
                if outcome.release == version:
                    ended[i] = outcome
            wrong = {i: o for i, o in ended.items() if o.outcome not in expected}
            if wrong:
                raise RuntimeError(f"v{version} ended otherwise than {sorted(expected)}: {wrong}")

        step(f"before the clock: every device installs v{manifest.version} and serves it")
        release(manifest.version, {"installed"})
        for updater, telemetry in zip(updaters, telemetries, strict=True):
            installed = open_installed(updater.store, edge_config)
            updater.runtime = stack.enter_context(EdgeRuntime(installed, edge_config, telemetry=telemetry))
        traffic = stack.enter_context(Traffic([u.runtime for u in updaters], load_probe(model_dir, manifest)["input"]))
        step(f"a bad release (v{manifest.version + 1}, its probe fails): every device must refuse it")
        release(manifest.version + 1, {"rejected", "rolled-back"})
        for fetcher in fetchers:
            fetcher.bytes = 0
        step(f"the good release (v{manifest.version + 2}) over HTTP; waiting for every device to report it")
        started = time.perf_counter()
        release(manifest.version + 2, {"installed"})
        all_on(manifest.version + 2)
        elapsed = time.perf_counter() - started
        per_device = sum(f.bytes for f in fetchers) / devices
        stages = "/".join(f"{p}%" for p in POLICY.stages)
        step(f"a staged release (v{manifest.version + 3}): {stages}, each stage soaked {POLICY.soak_s} s on telemetry")
        started = time.perf_counter()
        post("/v1/registry/releases", {"model": manifest.name, "version": manifest.version + 3, "staged": True})
        while rollouts.status(manifest.name)["state"] == "running":
            time.sleep(0.05)
        rollout = rollouts.status(manifest.name)
        if rollout["state"] != "complete":
            raise RuntimeError(f"the staged release ended {rollout['state']}: {rollout['reason']}")
        all_on(manifest.version + 3)
        to_fleet = time.perf_counter() - started
        checked(manifest.version + 3, {"installed"})
        step(f"recall of v{manifest.version + 3}: every device back on v{manifest.version + 2}")
        started = time.perf_counter()
        post(f"/v1/registry/releases/{manifest.name}/{manifest.version + 3}/recall", {"reason": "bench.ota"})
        all_on(manifest.version + 2)
        recall_s = time.perf_counter() - started
        checked(manifest.version + 2, {"installed"})
        traffic.stop()
        step(f"raw baseline, after: {devices} plain devices GET the same files")
        raw_after, _ = raw_fetch(raw_urls, devices)
    raw_s = statistics.fmean([raw_before, raw_after])
    report = {
        "devices": devices,
        "time_to_all_devices_ratio": ratio(elapsed, raw_s),
        "devices_per_second": round(devices / elapsed, 2),
        "release_to_last_device_s": round(elapsed, 2),
        "raw_fetch_s": round(raw_s, 3),
        "raw_fetch_s_before_after": [round(raw_before, 3), round(raw_after, 3)],
        "raw_bytes_per_device": raw_bytes,
        "bytes_per_device": round(per_device),
        "artifact_bytes": artifact_size,
        "bytes_per_device_ratio": ratio(per_device, artifact_size),
        "bytes_per_release_file_ratio": ratio(per_device, release_size),
        "time_to_fleet_s": round(to_fleet, 2),
        "time_to_fleet_soak_s": POLICY.soak_s * len(POLICY.stages),
        "rollout_decisions": [f"{d['action']} {d['percent']}%" for d in rollout["history"]],
        "recall_s": round(recall_s, 2),
        "predictions_during_updates": traffic.calls,
        "failed_predictions_during_updates": traffic.failed,
        **({"first_failed_prediction": traffic.first_failure} if traffic.first_failure else {}),
        "wall_s": round(time.time() - step.start, 1),
    }
    report["meets_targets"] = {k: report[k] <= v for k, v in TARGETS.items()}
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = (
        "time_to_all_devices_ratio",
        "devices_per_second",
        "release_to_last_device_s",
        "raw_fetch_s",
        "bytes_per_device",
        "raw_bytes_per_device",
        "bytes_per_device_ratio",
        "bytes_per_release_file_ratio",
        "time_to_fleet_s",
        "time_to_fleet_soak_s",
        "recall_s",
        "predictions_during_updates",
        "failed_predictions_during_updates",
    )
    title = f"OTA rollout of int8 MobileNetV2 to {report['devices']} devices, against plain GETs of its files"
    targets = {"bytes_per_device_ratio": "<= 1.1", "failed_predictions_during_updates": "0", "recall_s": "<= 30"}
    console.print(figures_table(title, report, keys, targets))


main = command_line(
    "python -m bench.ota",
    __doc__,
    quick_help="20 devices instead of 100",
    run=lambda args, step: run(20 if args.quick else 100, step, chosen_cache_root(args)),
    render=render,
    arguments=add_cache_arguments,
)

if __name__ == "__main__":
    sys.exit(main())
