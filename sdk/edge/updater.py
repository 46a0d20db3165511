"""Over-the-air model updates: the driver that does the I/O of :mod:`sdk.edge.update_machine`.

```python
store = ModelStore("/var/lib/fedge/digits")
updater = ModelUpdater(store, UpdateConfig(model="digits", device_id="pi-7", repository_url=URL), trusted_root)
outcome = updater.check()          # at start, on an MQTT notice, and after outcome.retry_after_s
updater.forget(5)                  # an operator lets a refused version be tried again
```
One ``check``: refresh the signed metadata (``tuf.ngclient``: rollback, freeze, mix-and-match,
endless data and untrusted keys are refused there), read the model's signed release index,
pick the newest active release for this device's channel that its rollout bucket admits, that
carries this device's target and that the device did not refuse before; download the manifest,
the artifact for this device's target and the probe (each verified against the signed length and
sha256, before anything is written into the model directory; the artifact rebuilt from the version
the device holds and a signed patch when there is one, :mod:`sdk.delta`), check that the manifest is the
release it claims and that its signed lineage keeps to this device's privacy policy
(:mod:`sdk.edge.privacy_policy`; a release that breaks it is refused before its artifact is
downloaded), load it through the engine (its input and output signature against the manifest)
and run its probe through the live input path, publish it as a new version directory,
point ``current`` at it, swap it into the running runtime, then watch a health window (the probe
again, the error rate of live calls, and a run of failed live calls that ends it at once) and roll
back to the previous version on failure.

A recall (the installed release aborted, its signed index entry naming the version to go back
to, :func:`~sdk.edge.update_machine.choose_release`) installs that lower version like any other:
the device's own copy when it still holds one (``previous``) whose manifest matches the signed
one and whose files match that manifest, else a download; the same smoke test, swap and health
window; then the aborted version is refused from then on, and the final status step is
``recalled`` (``installed_version``, ``recalled_version``, ``reason``). A recall target this
device cannot run is a ``rejected`` check (:class:`~sdk.errors.RecallImpossible`,
:class:`~sdk.errors.PolicyRefused`): the device keeps serving what it has.

``check`` never raises: every failure, ours or a foreign library's (mapped in
:mod:`sdk.edge.update_errors`), is an outcome that is reported and says when to check again.
Rejected and rolled-back versions are kept in the update memory (:mod:`sdk.edge.update_memory`).
An MQTT notice only triggers a ``check``: it installs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.backoff import Backoff
from sdk.config import check as check_config
from sdk.config import load_section
from sdk.delta import choose_parent, patch_target, rebuild
from sdk.edge.config import EdgeConfig
from sdk.edge.install import ModelStore
from sdk.edge.privacy_policy import PrivacyPolicy
from sdk.edge.rollout import in_rollout
from sdk.edge.runtime import EdgeRuntime
from sdk.edge.update_errors import map_update_errors, translate
from sdk.edge.update_machine import (
    Choice,
    Decision,
    HealthRules,
    Outcome,
    Release,
    State,
    UpdateMachine,
    Verdict,
    blames_release,
    choose_release,
)
from sdk.edge.update_memory import UpdateMemory
from sdk.errors import (
    ConfigError,
    FedgeError,
    ModelError,
    PolicyRefused,
    RecallImpossible,
    ReleaseUnusable,
    SmokeTestFailed,
    UpdateRejected,
)
from sdk.loading import LoadedModel, load_model, smoke_test
from sdk.manifest import ARTIFACT_KINDS, Manifest, file_digest, load_manifest, verify_files, write_fetched

__all__ = ["ModelUpdater", "UpdateConfig", "UpdateOutcome", "open_installed"]

log = logging.getLogger("fedge.edge.updater")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_WATCH_STEP_S = 0.05  # how often the health window looks at the live error counters


@dataclass(frozen=True, kw_only=True)
class UpdateConfig(PrivacyPolicy):
    """What this device updates, from where, and the privacy its releases may have spent (``[update]`` table)."""

    model: str
    device_id: str
    repository_url: str
    target: str = "onnx-int8"
    channel: str = "stable"
    max_download_bytes: int = 256 * 1024 * 1024
    check_interval_s: float = 900.0
    min_check_interval_s: float = 30.0  # least gap between two checks however many notices (+ up to 20 % at random)
    retry_base_s: float = 5.0
    health_window_s: float = 10.0
    health_probes: int = 3
    max_error_rate: float = 0.05
    max_error_run: int = 3
    telemetry_interval_s: float = 60.0  # a status with the telemetry window this often (and after every swap)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(self.target in ARTIFACT_KINDS, "target", f"must be one of {', '.join(ARTIFACT_KINDS)}")
        check_config(self.repository_url.startswith(("http://", "https://")), "repository_url", "must be http(s)")
        check_config(self.max_download_bytes > 0, "max_download_bytes", "must be > 0")
        check_config(self.check_interval_s >= 1, "check_interval_s", "must be >= 1")
        check_config(
            0 <= self.min_check_interval_s <= 86_400,
            "min_check_interval_s",
            f"must be within 0..86400, got {self.min_check_interval_s}",
        )
        check_config(0 < self.retry_base_s <= self.check_interval_s, "retry_base_s", "must be in (0, check_interval_s]")
        check_config(self.health_window_s >= 0, "health_window_s", "must be >= 0")
        check_config(self.health_probes >= 1, "health_probes", "must be >= 1")
        check_config(0 <= self.max_error_rate <= 1, "max_error_rate", "must be within [0, 1]")
        check_config(self.max_error_run >= 1, "max_error_run", "must be >= 1")
        check_config(1 <= self.telemetry_interval_s <= 86_400, "telemetry_interval_s", "must be within 1..86400")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> UpdateConfig:
        """Load ``[update]`` from a TOML file and ``FEDGE_UPDATE__*`` environment variables."""
        return load_section(cls, "update", path, env)


@dataclass(frozen=True)
class UpdateOutcome:
    """What one check did: the outcome, the version the device runs after it, why, and when to check again."""

    outcome: Outcome
    version: int | None
    detail: str = ""
    retry_after_s: float = 0.0
    release: int | None = None  # the release this check was about, if it chose one
    recalled: int | None = None  # the aborted release this check was leaving (a recall)


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
        memory: UpdateMemory | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        """Update ``store`` (and swap into ``runtime``) from the TUF repository at ``config.repository_url``.

        ``trusted_root`` is the root metadata the device was provisioned with; after the first
        check the newest verified root in ``<store>/tuf`` is the trust anchor. ``edge_config``
        must allow ``config.target``: it is the one artifact the device fetches and runs.
        ``clock``, ``sleep`` and ``draw`` (jitter, uniform in [0, 1)) are there for tests.

        Raises:
            ConfigError: ``edge_config.artifacts`` does not name ``config.target``.
        """
        self.store = store
        self.config = config
        self.runtime = runtime
        self.edge_config = edge_config or EdgeConfig(artifacts=(config.target,))
        if config.target not in self.edge_config.artifacts:
            allowed = list(self.edge_config.artifacts)
            raise ConfigError("update.target", f"{config.target!r} is not in [edge] artifacts {allowed}")
        self.reporter: Reporter = reporter or (lambda event: None)
        self.memory = memory or UpdateMemory(store.root / "update-memory.json")
        if again := self.memory.forget_other_policies(config.terms()):  # a changed policy looks again
            log.info("versions %s, refused under another privacy policy, may be taken again", again)
        self._fetcher = fetcher
        self._clock, self._sleep, self._draw = clock, sleep, draw
        self._backoff = Backoff(
            base_s=config.retry_base_s, max_s=config.check_interval_s, interval_s=config.check_interval_s
        )
        self._health = HealthRules(
            window_s=config.health_window_s,
            probes=config.health_probes,
            max_error_rate=config.max_error_rate,
            max_error_run=config.max_error_run,
        )
        self.patches_applied = 0  # artifacts rebuilt from a held version and a signed patch
        self.patch_failures = 0  # patches that failed to download, apply or verify: the full file came instead
        self._lock = threading.Lock()
        self._settled_timestamp: int | None = None  # the signed timestamp's version at the last clean check
        self._metadata_dir = store.root / "tuf"
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        if not (self._metadata_dir / "root.json").exists():
            (self._metadata_dir / "root.json").write_bytes(trusted_root)

    @property
    def installed_version(self) -> int | None:
        """The version ``current`` points at."""
        return self.store.version_of(self.store.current())

    def report(self, step: str, **detail: Any) -> None:
        """Tell the reporter (and the log) about a step; a failing reporter never stops an update."""
        event = {
            "device_id": self.config.device_id,
            "model": self.config.model,
            "target": self.config.target,  # the fleet view's artifact kind: what a release must carry for this device
            "version": self.installed_version,
            "step": step,
            "time": time.time(),
            **detail,
        }
        log.info("update %s: %s", step, detail or "")
        try:
            self.reporter(event)
        except Exception:  # a broker hiccup in the status link must not abort an install half-way
            log.exception("the update reporter failed on %s", step)

    def forget(self, version: int | None = None) -> list[int]:
        """Let a refused ``version`` (None: all of them) be tried at the next check; return those forgotten."""
        with self._lock:
            gone = self.memory.forget(version)
            self._settled_timestamp = None  # the next check looks at the index, whatever the timestamp says
        self.report("forgotten", versions=gone)
        return gone

    def check(self, reason: str = "schedule") -> UpdateOutcome:
        """Look for a release for this device and install it; never raises, every failure is an outcome.

        A check for a ``"notice"`` ends ``up-to-date`` right after the metadata refresh when the signed
        timestamp is the one of the last clean check: nothing was released since, the index is not read.
        """
        with self._lock:
            machine = UpdateMachine(
                backoff=self._backoff, health=self._health, failures=self.memory.failures, draw=self._draw
            )
            try:
                verdict = self._run(machine, skip_unchanged=reason == "notice")
            except Exception as exc:  # the one place a check ends on an error
                verdict = machine.failed(_ours(exc))
            return self._conclude(verdict)

    def _conclude(self, verdict: Verdict) -> UpdateOutcome:
        if verdict.remember and verdict.version is not None:
            policy = self.config.terms() if verdict.by_policy else None
            self.memory.remember(verdict.version, verdict.outcome, verdict.detail, policy=policy)
        if verdict.outcome == "installed" and verdict.recalled is not None:  # never back to the aborted version
            self.memory.remember(verdict.recalled, "recalled", verdict.detail)
        self.memory.record(verdict.outcome, verdict.version, verdict.failures)
        try:
            self.memory.save()
        except OSError as exc:  # a full disk: the memory still holds in RAM until the next save
            log.error("update memory not saved: %s", exc)
        retry = round(verdict.retry_after_s, 3)
        fields: dict[str, Any] = {"retry_after_s": retry}
        if verdict.detail:
            fields["reason"] = verdict.detail
        if verdict.outcome == "installed":
            fields["installed_version"] = verdict.version
        elif verdict.version is not None:
            fields["target_version"] = verdict.version
        step = "healthy" if verdict.outcome == "installed" and self.runtime is not None else verdict.outcome
        if verdict.recalled is not None:
            fields["recalled_version"] = verdict.recalled
            step = "recalled" if verdict.outcome == "installed" else step
        self.report(step, **fields)
        return UpdateOutcome(
            verdict.outcome, self.installed_version, verdict.detail, retry, verdict.version, verdict.recalled
        )

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

    def _run(self, machine: UpdateMachine, *, skip_unchanged: bool) -> Verdict:
        machine.advance(State.CHECKING)
        self.report("checking")
        with map_update_errors():
            updater = self._updater()
            updater.refresh()
            timestamp = self._timestamp_version()
            if skip_unchanged and timestamp == self._settled_timestamp:
                return machine.chosen(None)  # type: ignore[return-value]  # None chosen: always a verdict
            releases = self._index(updater)
        choice = choose_release(
            releases,
            installed=self.installed_version,
            target=self.config.target,
            channel=self.config.channel,
            admitted=lambda r: in_rollout(self.config.device_id, self.config.model, r.rollout),
            refused=self.memory.refused,
        )
        verdict = machine.chosen(choice.release if choice else None, recalled=choice.recalled if choice else None)
        if verdict is not None or choice is None:
            self._settled_timestamp = timestamp
            return verdict  # type: ignore[return-value]
        version = choice.release.version
        installed = self._recall_from_held(updater, machine, choice) if choice.recalled is not None else None
        if installed is None:
            installed = self._stage(updater, machine, version)
        machine.advance(State.STAGED)
        verdict = self._activate(machine, installed, version)
        if verdict.outcome == "installed":
            self._settled_timestamp = timestamp
        return verdict

    def _stage(self, updater: Any, machine: UpdateMachine, version: int) -> Path:
        """Download, verify and smoke-test ``version`` into a staging directory; publish it as ``versions/v<N>``."""
        staging = self.store.stage()
        try:
            self.report("downloading", target_version=version)
            with map_update_errors():
                self._download(updater, version, staging)
            machine.advance(State.VERIFYING)
            self.report("smoke-test", target_version=version)
            self._smoke_test(staging, version)
            self.report("installing", target_version=version)
            with map_update_errors():
                return self.store.commit(staging, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _recall_from_held(self, updater: Any, machine: UpdateMachine, choice: Choice) -> Path | None:
        """Start the recall ``choice``: the held copy of its target, verified and smoke-tested; None: download it.

        Raises:
            RecallImpossible: the target has no artifact for this device.
            PolicyRefused: the target's signed lineage breaks this device's privacy policy.
        """
        assert choice.recalled is not None
        version, recalled = choice.release.version, choice.recalled.version
        self.report("recalling", target_version=version, recalled_version=recalled, reason=choice.reason)
        if choice.problem is not None:
            raise RecallImpossible(f"{self.config.model} {choice.problem}")
        with map_update_errors():
            held = self._verified_held(updater, version)
        if held is None:
            return None
        machine.advance(State.VERIFYING)
        self.report("smoke-test", target_version=version, reused=True)
        self._smoke_test(held, version)
        return held

    def _verified_held(self, updater: Any, version: int) -> Path | None:
        """This device's copy of ``version`` if its manifest is the signed one and its files match it; else None."""
        directory = self.store.versions / f"v{version}"
        if not directory.is_dir():
            return None
        info = self._manifest_info(updater, version)
        try:
            digest, size = file_digest(directory / "manifest.json")
            if (digest, size) != (info.hashes.get("sha256"), info.length):
                raise ModelError("its manifest.json is not the signed one")
            manifest = load_manifest(directory)
            self._admit(manifest, version)
            artifact = manifest.artifacts.get(self.config.target)
            if artifact is None:
                raise ModelError(f"it has no {self.config.target} artifact")
            verify_files(directory, [artifact, *([manifest.probe] if manifest.probe else [])])
        except (ModelError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("the held copy of v%s is unusable, downloading it: %s", version, reason)
            self.report("held-copy-unusable", target_version=version, reason=reason)
            return None
        return directory

    def _timestamp_version(self) -> int | None:
        """The version of the signed timestamp the refresh just verified (python-tuf keeps it in the metadata dir)."""
        try:
            return int(json.loads((self._metadata_dir / "timestamp.json").read_bytes())["signed"]["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _index(self, updater: Any) -> list[Release]:
        """The model's releases from its signed index (none when the model was never released)."""
        info = updater.get_targetinfo(f"{self.config.model}/index.json")
        if info is None:
            return []
        path = self._fetch(updater, info, self.store.root / ".index.json")
        try:
            entries = json.loads(path.read_bytes()).get("releases", [])
        except (ValueError, AttributeError) as exc:
            raise UpdateRejected(f"the signed release index is malformed: {exc}") from exc
        finally:
            path.unlink(missing_ok=True)
        return [r for r in map(Release.from_index, entries) if r is not None]

    def _fetch(self, updater: Any, info: Any, path: Path) -> Path:
        """Download a target to ``path``, verified against its signed length and hashes before it is written."""
        if info.length > self.config.max_download_bytes:
            raise ReleaseUnusable(
                f"{info.path} is {info.length} bytes, over the {self.config.max_download_bytes} bound"
            )
        updater.download_target(info, str(path))
        return path

    def _manifest_info(self, updater: Any, version: int) -> Any:
        """The signed target of ``version``'s manifest, checked to be signed for that release."""
        model = self.config.model
        prefix = f"{model}/{version}/"
        manifest_info = updater.get_targetinfo(prefix + "manifest.json")
        if manifest_info is None:
            raise ReleaseUnusable(f"the signed metadata has no {prefix}manifest.json")
        self._check_signed_for(manifest_info, prefix, model, version)
        return manifest_info

    def _admit(self, manifest: Manifest, version: int) -> None:
        """Refuse a manifest that is not the signed release's, or whose lineage this device's privacy policy refuses."""
        model = self.config.model
        if manifest.name != model or manifest.version != version:
            said = f"{manifest.name} v{manifest.version}"
            raise ReleaseUnusable(f"the manifest says {said}, the signed release {model} v{version}")
        if (refusal := self.config.refusal(manifest.lineage)) is not None:  # before the artifact comes down
            raise PolicyRefused(f"{model} v{version} {refusal}")

    def _download(self, updater: Any, version: int, staging: Path) -> None:
        model = self.config.model
        prefix = f"{model}/{version}/"
        self._fetch(updater, self._manifest_info(updater, version), staging / "manifest.json")
        try:
            manifest = load_manifest(staging)
        except ModelError as exc:
            raise ReleaseUnusable(f"the signed manifest of {model} v{version} is unusable: {exc}") from exc
        self._admit(manifest, version)
        artifact = manifest.artifacts.get(self.config.target)
        if artifact is None:
            raise ReleaseUnusable(f"{model} v{version} has no {self.config.target} artifact")
        for name in [artifact.file, *([manifest.probe.file] if manifest.probe else [])]:
            info = updater.get_targetinfo(prefix + name)
            if info is None:
                raise ReleaseUnusable(f"the signed metadata has no {prefix}{name}")
            self._check_signed_for(info, prefix, model, version)
            if name != artifact.file or not self._patched(updater, info, version, staging / name):
                self._fetch(updater, info, staging / name)
        write_fetched(staging, [self.config.target])

    def _patched(self, updater: Any, info: Any, version: int, out: Path) -> bool:
        """Rebuild the artifact ``info`` at ``out`` from a held version and its signed patch; False: fetch it whole.

        A patch that fails to download, apply or verify is counted and reported, and the device
        fetches the full file: it never ends the check.
        """
        model, kind = self.config.model, self.config.target
        held = self._held_artifacts()
        patches: dict[int, Any] = {}
        for parent in held:
            patch = updater.get_targetinfo(patch_target(model, kind, parent, version))
            custom = patch.unrecognized_fields.get("custom", {}) if patch is not None else {}
            signed_for = tuple(custom.get(k) for k in ("model", "version", "kind", "artifact", "parent"))
            if signed_for == (model, version, "patch", kind, parent):
                patches[parent] = patch
        parent = choose_parent(version, held, {p: i.length for p, i in patches.items()}, info.length)
        if parent is None:
            return False
        fetched = out.with_name(".patch")
        try:
            with map_update_errors():
                self._fetch(updater, patches[parent], fetched)
                data = rebuild(
                    held[parent].read_bytes(), fetched.read_bytes(), sha256=info.hashes["sha256"], size=info.length
                )
                out.write_bytes(data)
        except FedgeError as exc:
            self.patch_failures += 1
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("the patch from v%s to v%s failed, fetching the full artifact: %s", parent, version, reason)
            self.report("patch-failed", target_version=version, parent=parent, reason=reason)
            out.unlink(missing_ok=True)
            return False
        finally:
            fetched.unlink(missing_ok=True)
        self.patches_applied += 1
        self.report("patched", target_version=version, parent=parent, patch_bytes=patches[parent].length)
        return True

    def _held_artifacts(self) -> dict[int, Path]:
        """This device's artifact file in each version it holds (``current`` and ``previous``), by version."""
        held: dict[int, Path] = {}
        for directory in (self.store.current(), self.store.previous()):
            if directory is None:
                continue
            try:
                artifact = load_manifest(directory).artifacts.get(self.config.target)
            except ModelError:
                continue  # a damaged version is no parent; the full file will come
            if artifact is not None and (directory / artifact.file).is_file():
                held[self.store.version_of(directory)] = directory / artifact.file
        return held

    def _check_signed_for(self, info: Any, prefix: str, model: str, version: int) -> None:
        custom = info.unrecognized_fields.get("custom", {})
        if custom.get("model") != model or custom.get("version") != version:
            raise ReleaseUnusable(f"{info.path} is signed for {custom.get('model')} v{custom.get('version')}")
        name = info.path[len(prefix) :]
        if not _SAFE_NAME.match(name) or name in (".", ".."):
            raise ReleaseUnusable(f"target path {info.path!r} would leave the model directory")

    def _smoke_test(self, staging: Path, version: int) -> None:
        """Load the staged model as the runtime will (signature, probe through the live input path)."""
        try:
            model = load_model(staging, self.edge_config)
        except ModelError as exc:
            raise SmokeTestFailed(f"v{version} does not load: {type(exc).__name__}: {exc}") from exc
        model.close()

    def _activate(self, machine: UpdateMachine, installed: Path, version: int) -> Verdict:
        machine.advance(State.SWAPPING)
        with map_update_errors():
            self.store.point(installed)
        if self.runtime is None:
            return machine.committed()
        try:
            model = load_model(installed, self.edge_config)
            calls, errors = self.runtime.local_calls, self.runtime.local_errors
            self.runtime.swap(model)
            self.report("installed", installed_version=version)
            machine.advance(State.WATCHING)
            decision = self._watch(machine, model, calls, errors)
        except Exception as exc:
            return self._roll_back_after(machine, exc)
        if decision.action == "roll-back":
            return self._roll_back(machine, decision.reason, True)
        self.store.prune()
        return machine.committed()

    def _watch(self, machine: UpdateMachine, model: LoadedModel, calls: int, errors: int) -> Decision:
        """Probe the live model and read its live-call counters until the machine decides."""
        runtime = self.runtime
        assert runtime is not None
        started, probes = self._clock(), 0
        while True:
            elapsed = self._clock() - started
            problem = None
            if probes < self._health.probes and elapsed >= self._health.probe_due_s(probes):
                try:
                    smoke_test(model)
                except FedgeError as exc:
                    problem = str(exc)
                probes += 1
            decision = machine.watch(
                elapsed_s=elapsed,
                calls=runtime.local_calls - calls,
                errors=runtime.local_errors - errors,
                error_run=runtime.local_error_run,
                probes_done=probes,
                probe_problem=problem,
            )
            if decision.action != "watch":
                return decision
            self._sleep(_WATCH_STEP_S)

    def _roll_back_after(self, machine: UpdateMachine, exc: Exception) -> Verdict:
        error = _ours(exc)
        return self._roll_back(machine, f"{type(error).__name__}: {error}", blames_release(error))

    def _roll_back(self, machine: UpdateMachine, reason: str, blame: bool) -> Verdict:
        try:
            previous = self.store.rollback()
        except FileNotFoundError:
            self.report("rollback-impossible", reason=reason)
            return machine.rolled_back(reason, possible=False, blame_release=blame)
        if self.runtime is not None:
            try:
                self.runtime.swap(load_model(previous, self.edge_config))
            except FedgeError as exc:  # the runtime keeps what it serves; the next start loads `current`
                log.error("the previous version %s does not load: %s", previous, exc)
        return machine.rolled_back(reason, possible=True, blame_release=blame)


def _ours(exc: Exception) -> BaseException:
    """``exc`` as the Fedge error it stands for (logged with its traceback when nobody expected it)."""
    mapped = translate(exc)
    if mapped is None:
        log.error("update check failed unexpectedly", exc_info=exc)
    return mapped or exc


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
