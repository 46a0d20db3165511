"""Over-the-air model updates: verify with TUF, smoke-test, install atomically, swap, watch, roll back.

```python
store = ModelStore("/var/lib/fedge/digits")
updater = ModelUpdater(store, UpdateConfig(model="digits", device_id="pi-7", repository_url=URL), trusted_root)
outcome = updater.check()          # at start, on an MQTT notice, and on a timer
```
One ``check``: refresh the signed metadata (``tuf.ngclient``: rollback, freeze, mix-and-match,
endless data and untrusted keys are refused there), read the model's signed release index,
pick the newest active release for this device's channel that its rollout bucket admits,
download the manifest, the artifact for this device's target and the probe (each verified
against the signed length and sha256), check that the manifest is the release it claims,
load it and run its probe, publish it as a new version directory, point ``current`` at it,
swap it into the running runtime, then watch a health window (the probe again, several
times, and the error rate of live calls) and roll back to the previous version on failure.
Every step is reported; any refusal leaves the device serving the model it had. An MQTT
notice only triggers a ``check``: it installs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdk.config import check as check_config
from sdk.config import load_section
from sdk.edge.config import EdgeConfig
from sdk.edge.install import ModelStore
from sdk.edge.rollout import in_rollout
from sdk.edge.runtime import EdgeRuntime, LoadedModel, load_model, smoke_test
from sdk.errors import FedgeError, ModelError, SmokeTestFailed, UpdateRejected
from sdk.manifest import ARTIFACT_KINDS, load_manifest

__all__ = ["ModelUpdater", "UpdateConfig", "UpdateOutcome", "open_installed"]

log = logging.getLogger("fedge.edge.updater")

Outcome = Literal["up-to-date", "installed", "rejected", "rolled-back", "unreachable"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """What this device updates and from where (``[update]`` table)."""

    model: str
    device_id: str
    repository_url: str
    target: str = "onnx-int8"
    channel: str = "stable"
    max_download_bytes: int = 256 * 1024 * 1024
    check_interval_s: float = 900.0
    health_window_s: float = 10.0
    health_probes: int = 3
    max_error_rate: float = 0.05

    def __post_init__(self) -> None:
        check_config(self.target in ARTIFACT_KINDS, "target", f"must be one of {', '.join(ARTIFACT_KINDS)}")
        check_config(self.repository_url.startswith(("http://", "https://")), "repository_url", "must be http(s)")
        check_config(self.max_download_bytes > 0, "max_download_bytes", "must be > 0")
        check_config(self.check_interval_s >= 1, "check_interval_s", "must be >= 1")
        check_config(self.health_window_s >= 0, "health_window_s", "must be >= 0")
        check_config(self.health_probes >= 1, "health_probes", "must be >= 1")
        check_config(0 <= self.max_error_rate <= 1, "max_error_rate", "must be within [0, 1]")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> UpdateConfig:
        """Load ``[update]`` from a TOML file and ``FEDGE_UPDATE__*`` environment variables."""
        return load_section(cls, "update", path, env)


@dataclass(frozen=True)
class UpdateOutcome:
    """What one check did."""

    outcome: Outcome
    version: int | None
    detail: str = ""


Reporter = Callable[[dict[str, Any]], None]


class ModelUpdater:
    """Keeps a device's model current and safe; thread-safe, one check at a time."""

    def __init__(
        self,
        store: ModelStore,
        config: UpdateConfig,
        trusted_root: bytes,
        *,
        runtime: EdgeRuntime | None = None,
        edge_config: EdgeConfig | None = None,
        reporter: Reporter | None = None,
        fetcher: Any = None,
    ) -> None:
        """Update ``store`` (and swap into ``runtime``) from the TUF repository at ``config.repository_url``.

        ``trusted_root`` is the root metadata the device was provisioned with; after the first
        check the newest verified root in ``<store>/tuf`` is the trust anchor.
        """
        self.store = store
        self.config = config
        self.runtime = runtime
        self.edge_config = edge_config or EdgeConfig(artifacts=(config.target,))
        self.reporter: Reporter = reporter or (lambda event: None)
        self._fetcher = fetcher
        self._lock = threading.Lock()
        self._metadata_dir = store.root / "tuf"
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        if not (self._metadata_dir / "root.json").exists():
            (self._metadata_dir / "root.json").write_bytes(trusted_root)

    @property
    def installed_version(self) -> int | None:
        """The version ``current`` points at."""
        return self.store.version_of(self.store.current())

    def report(self, step: str, **detail: Any) -> None:
        """Tell the reporter (and the log) about a step."""
        event = {
            "device_id": self.config.device_id,
            "model": self.config.model,
            "version": self.installed_version,
            "step": step,
            "time": time.time(),
            **detail,
        }
        log.info("update %s: %s", step, detail or "")
        self.reporter(event)

    def check(self) -> UpdateOutcome:
        """Look for a release for this device and install it; never raises for a bad or hostile release."""
        with self._lock:
            try:
                return self._check()
            except (UpdateRejected, SmokeTestFailed) as exc:
                self.report("rejected", reason=f"{type(exc).__name__}: {exc}")
                return UpdateOutcome("rejected", self.installed_version, str(exc))

    def _updater(self) -> Any:
        from tuf.ngclient import Updater, UpdaterConfig

        base = self.config.repository_url.rstrip("/")
        return Updater(
            metadata_dir=str(self._metadata_dir),
            metadata_base_url=f"{base}/metadata/",
            target_base_url=f"{base}/targets/",
            target_dir=None,
            fetcher=self._fetcher,
            config=UpdaterConfig(app_user_agent="fedge-updater"),
            bootstrap=None,
        )

    def _check(self) -> UpdateOutcome:
        from tuf.api import exceptions as tuf_errors

        self.report("checking")
        updater = self._updater()
        try:
            updater.refresh()
        except tuf_errors.DownloadLengthMismatchError as exc:  # endless data: an attack, not an outage
            raise UpdateRejected(f"release metadata refused: {exc}") from exc
        except tuf_errors.DownloadError as exc:
            self.report("unreachable", reason=str(exc))
            return UpdateOutcome("unreachable", self.installed_version, str(exc))
        except tuf_errors.RepositoryError as exc:
            raise UpdateRejected(f"release metadata refused: {type(exc).__name__}: {exc}") from exc
        release = self._choose(updater)
        if release is None:
            self.report("up-to-date")
            return UpdateOutcome("up-to-date", self.installed_version)
        version = int(release["version"])
        staging = self.store.stage()
        try:
            self.report("downloading", target_version=version)
            self._download(updater, version, staging)
            self.report("smoke-test", target_version=version)
            self._smoke_test(staging, version)
            self.report("installing", target_version=version)
            installed = self.store.commit(staging, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self._activate(installed, version)

    def _choose(self, updater: Any) -> dict[str, Any] | None:
        """The newest release this device should take, from the signed index; None when there is none."""
        index_path = f"{self.config.model}/index.json"
        info = updater.get_targetinfo(index_path)
        if info is None:
            return None
        data = json.loads(self._fetch(updater, info, self.store.root / ".index.json"))
        current = self.installed_version or 0
        eligible = [
            r
            for r in data.get("releases", [])
            if r.get("state") == "active"
            and r.get("channel") == self.config.channel
            and int(r.get("version", 0)) > current
            and in_rollout(self.config.device_id, self.config.model, int(r.get("rollout", 0)))
        ]
        return max(eligible, key=lambda r: int(r["version"]), default=None)

    def _fetch(self, updater: Any, info: Any, path: Path) -> bytes:
        if info.length > self.config.max_download_bytes:
            raise UpdateRejected(f"{info.path} is {info.length} bytes, over the {self.config.max_download_bytes} bound")
        from tuf.api import exceptions as tuf_errors

        try:
            updater.download_target(info, str(path))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise UpdateRejected(f"{info.path}: {type(exc).__name__}: {exc}") from exc
        try:
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def _download(self, updater: Any, version: int, staging: Path) -> None:
        model = self.config.model
        prefix = f"{model}/{version}/"
        wanted = {"manifest", self.config.target, "probe"}
        found: set[str] = set()
        manifest_info = updater.get_targetinfo(prefix + "manifest.json")
        if manifest_info is None:
            raise UpdateRejected(f"the signed metadata has no {prefix}manifest.json")
        infos = [manifest_info]
        manifest_bytes = self._fetch(updater, manifest_info, staging / ".manifest.download")
        (staging / "manifest.json").write_bytes(manifest_bytes)
        try:
            manifest = load_manifest(staging)
        except ModelError as exc:
            raise UpdateRejected(f"the signed manifest of {model} v{version} is unusable: {exc}") from exc
        if manifest.name != model or manifest.version != version:
            said = f"{manifest.name} v{manifest.version}"
            raise UpdateRejected(f"the manifest says {said}, the signed release {model} v{version}")
        artifact = manifest.artifacts.get(self.config.target)
        if artifact is None:
            raise UpdateRejected(f"{model} v{version} has no {self.config.target} artifact")
        for name in [artifact.file, *([manifest.probe.file] if manifest.probe else [])]:
            info = updater.get_targetinfo(prefix + name)
            if info is None:
                raise UpdateRejected(f"the signed metadata has no {prefix}{name}")
            infos.append(info)
        for info in infos:
            custom = info.unrecognized_fields.get("custom", {})
            if custom.get("model") != model or custom.get("version") != version:
                raise UpdateRejected(f"{info.path} is signed for {custom.get('model')} v{custom.get('version')}")
            found.add(custom.get("kind"))
            name = info.path[len(prefix) :]
            if not _SAFE_NAME.match(name) or name in (".", ".."):
                raise UpdateRejected(f"target path {info.path!r} would leave the model directory")
            if name != "manifest.json":
                (staging / name).write_bytes(self._fetch(updater, info, staging / f".{name}.download"))
        if not wanted <= found | ({"probe"} if manifest.probe is None else set()):
            raise UpdateRejected(f"{model} v{version} lacks {sorted(wanted - found)}")

    def _smoke_test(self, staging: Path, version: int) -> None:
        try:
            model = load_model(staging, self.edge_config)
        except FedgeError as exc:
            raise SmokeTestFailed(f"v{version} does not load: {type(exc).__name__}: {exc}") from exc
        model.close()

    def _activate(self, installed: Path, version: int) -> UpdateOutcome:
        self.store.point(installed)
        if self.runtime is None:
            self.report("installed", installed_version=version)
            return UpdateOutcome("installed", version)
        try:
            model = load_model(installed, self.edge_config)
        except FedgeError as exc:
            return self._roll_back(f"v{version} did not load after install: {exc}")
        calls, errors = self.runtime.local_calls, self.runtime.local_errors
        self.runtime.swap(model)
        self.report("installed", installed_version=version)
        problem = self._watch(model, calls, errors)
        if problem is not None:
            return self._roll_back(f"v{version} failed its health window: {problem}")
        self.report("healthy", installed_version=version)
        self.store.prune()
        return UpdateOutcome("installed", version)

    def _watch(self, model: LoadedModel, calls: int, errors: int) -> str | None:
        """Probe the live model through the health window and watch its error rate; the problem, or None."""
        assert self.runtime is not None
        pause = self.config.health_window_s / self.config.health_probes
        for _ in range(self.config.health_probes):
            try:
                smoke_test(model)
            except FedgeError as exc:
                return f"probe failed: {exc}"
            time.sleep(pause)
        new_calls = self.runtime.local_calls - calls
        new_errors = self.runtime.local_errors - errors
        if new_calls and new_errors / new_calls > self.config.max_error_rate:
            return f"{new_errors} of {new_calls} calls failed (more than {self.config.max_error_rate:.0%})"
        return None

    def _roll_back(self, reason: str) -> UpdateOutcome:
        try:
            previous = self.store.rollback()
        except FileNotFoundError:
            self.report("rollback-impossible", reason=reason)
            return UpdateOutcome("rejected", self.installed_version, reason)
        if self.runtime is not None:
            self.runtime.swap(load_model(previous, self.edge_config))
        self.report("rolled-back", reason=reason)
        return UpdateOutcome("rolled-back", self.installed_version, reason)


def open_installed(store: ModelStore, config: EdgeConfig) -> LoadedModel | None:
    """The model ``current`` points at, loaded and verified; the previous one if it fails; None if neither."""
    for directory in (store.current(), store.previous()):
        if directory is None:
            continue
        try:
            return load_model(directory, config)
        except FedgeError as exc:
            log.error("installed model %s unusable: %s", directory, exc)
    return None
