"""Over-the-air rollout: one release of a real exported model to many simulated devices.

``python -m bench.ota [--quick] [--json]``

One private Mosquitto, one cloud service (registry on SQLite, the signed TUF repository
served by uvicorn, release notices, the fleet listener) and N devices, each with its own
MQTT connection, updater, store and TUF metadata. The model is the int8 MobileNetV2 of
``bench.mobilenet`` (built once and cached), so the download is a realistic size. The clock
starts when the release is created over HTTP and stops when the registry's fleet view shows
the last device on the new version. Bytes are counted at the devices' HTTP fetcher: every
metadata file, the release index, manifest, probe and artifact; ``bytes_per_device_ratio``
divides them by the artifact, ``bytes_per_release_file_ratio`` by the files a device must
have (artifact, manifest and the probe for its smoke test), leaving the TUF overhead.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from tuf.ngclient import Urllib3Fetcher

from bench.harness import Progress, command_line, figures_table, ratio
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.server import BackgroundServer
from sdk.cloud.signing import init_keys
from sdk.edge.config import EdgeConfig
from sdk.edge.install import ModelStore
from sdk.edge.status import DeviceLink
from sdk.edge.updater import ModelUpdater, UpdateConfig
from sdk.manifest import load_manifest
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings

__all__ = ["CountingFetcher", "main", "run"]

ADMIN = "bench-admin-0123456789abcdef"
TARGETS = {"bytes_per_device_ratio": 1.1}


class CountingFetcher(Urllib3Fetcher):
    """python-tuf's default fetcher, counting the bytes it hands over."""

    def __init__(self) -> None:
        super().__init__(app_user_agent="fedge-bench")
        self.bytes = 0
        self._lock = threading.Lock()

    def _fetch(self, url: str) -> Iterator[bytes]:
        for chunk in super()._fetch(url):
            with self._lock:
                self.bytes += len(chunk)
            yield chunk


def run(devices: int, step: Progress, cache_root: Path | None = None) -> dict[str, Any]:
    """Roll one release out to ``devices`` devices and return the report."""
    from bench.mobilenet import MobileNetSpec, cached_model_dir

    model_dir, _ = cached_model_dir(MobileNetSpec(calibration_samples=16), cache_root, step)
    manifest = load_manifest(model_dir)
    artifact_size = manifest.artifacts["onnx-int8"].size
    release_size = (
        artifact_size + (model_dir / "manifest.json").stat().st_size + (manifest.probe.size if manifest.probe else 0)
    )
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-ota-")))
        broker = stack.enter_context(Mosquitto(extra_config="max_connections -1\n"))
        settings = MqttSettings.from_address(broker.address)
        keys = init_keys(tmp / "online", tmp / "root", root_keys=1, root_threshold=1)
        repo = ReleaseRepository.create(tmp / "repository", keys)
        registry = Registry(f"sqlite:///{tmp / 'registry.db'}", tmp / "store", repo)
        stack.callback(registry.close)
        stack.enter_context(ReleaseService(registry, settings))
        config = CloudConfig(admin_keys=(ADMIN,))
        server = stack.enter_context(
            BackgroundServer(create_app({}, config, repository_dir=repo.directory, registry=registry))
        )
        registry.add_version(model_dir)
        step(f"{devices} devices connecting (one MQTT connection, updater and store each)")
        fetchers, done = [], threading.Semaphore(0)
        root = repo.root_bytes(1)
        for i in range(devices):
            device_id = f"bench-{i:03d}"
            fetcher = CountingFetcher()
            fetchers.append(fetcher)
            link = DeviceLink(settings, device_id, manifest.name)
            updater = ModelUpdater(
                ModelStore(tmp / "devices" / device_id),
                UpdateConfig(model=manifest.name, device_id=device_id, repository_url=f"{server.url}/tuf"),
                root,
                edge_config=EdgeConfig(artifacts=("onnx-int8",), num_threads=1),
                reporter=link.report,
                fetcher=fetcher,
            )

            def on_notice(updater: ModelUpdater = updater) -> None:
                if updater.check().outcome == "installed":
                    done.release()

            link.on_notice = on_notice
            stack.enter_context(link)
        step("releasing over HTTP; waiting for every device to report the new version")
        started = time.perf_counter()
        response = httpx.post(
            f"{server.url}/v1/registry/releases",
            json={"model": manifest.name, "version": manifest.version},
            headers={"X-API-Key": ADMIN},
            timeout=60,
        )
        response.raise_for_status()
        for _ in range(devices):
            if not done.acquire(timeout=600):
                raise TimeoutError("not every device installed the release")
        while sum(d["running_version"] == manifest.version for d in registry.fleet()) < devices:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    per_device = sum(f.bytes for f in fetchers) / devices
    report = {
        "devices": devices,
        "devices_per_second": round(devices / elapsed, 2),
        "release_to_last_device_s": round(elapsed, 2),
        "bytes_per_device": round(per_device),
        "artifact_bytes": artifact_size,
        "bytes_per_device_ratio": ratio(per_device, artifact_size),
        "bytes_per_release_file_ratio": ratio(per_device, release_size),
        "wall_s": round(time.time() - step.start, 1),
    }
    report["meets_targets"] = {k: report[k] <= v for k, v in TARGETS.items()}
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = ("devices_per_second", "release_to_last_device_s", "bytes_per_device", "bytes_per_device_ratio")
    title = f"OTA rollout of int8 MobileNetV2 to {report['devices']} devices"
    table = figures_table(title, report, (*keys, "bytes_per_release_file_ratio"), {"bytes_per_device_ratio": "<= 1.1"})
    console.print(table)


main = command_line(
    "python -m bench.ota",
    __doc__,
    quick_help="20 devices instead of 100",
    run=lambda args, step: run(20 if args.quick else 100, step, args.cache_dir),
    render=render,
    arguments=lambda parser: parser.add_argument("--cache-dir", type=Path, help="where MobileNetV2 dirs are kept"),
)

if __name__ == "__main__":
    sys.exit(main())
