"""The signed release repository (The Update Framework): what devices verify before they install anything.

```
<dir>/metadata/1.root.json, 2.root.json ...   root: keys and thresholds, signed offline
<dir>/metadata/N.targets.json                 every released file: length, sha256, and the release in `custom`
<dir>/metadata/N.snapshot.json                the targets version in force
<dir>/metadata/timestamp.json                 the snapshot in force; short expiry, re-signed on a schedule
<dir>/targets/<model>/<version>/<sha256>.<file>
<dir>/targets/<model>/patches/<sha256>.<kind>-v<parent>-to-v<version>.bsdiff
```
Consistent snapshots: every metadata version and target file has its own name, so a
device that is mid-update never reads a mix of old and new. A release's model, version,
channel, rollout percentage and state live in the signed targets metadata (``custom``),
never only in the MQTT notice. Each release also carries, per artifact kind, a binary patch from
the previous release that was not aborted (:mod:`sdk.delta`), when the patch is small enough to be worth it.

An abort is a recall: the aborted release's signed ``custom`` and its entry in the signed index
gain ``"recall": {"to": <version or null>, "reason": ...}``, the newest earlier release of the same
model and channel that is not aborted. Devices on the aborted version go back to it because the
newest signed metadata says so; a replay of older metadata is refused by TUF itself.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from sdk.cloud.signing import KeySet
from sdk.delta import make_patch, patch_target
from sdk.errors import Conflict, NotFound
from sdk.manifest import ARTIFACT_KINDS, load_manifest, verify_files

__all__ = ["MAX_REASON_CHARS", "ReleaseRepository", "ReleaseState"]

log = logging.getLogger("fedge.cloud.repository")

ReleaseState = Literal["active", "paused", "aborted"]
#: The longest reason an abort (a recall) may carry in the signed metadata.
MAX_REASON_CHARS = 500
_SERIALIZER = JSONSerializer(compact=False)


_T = TypeVar("_T")


def _serialized(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a writing method under the repository's lock: each one reads the newest metadata and bumps its version."""

    @functools.wraps(method)
    def locked(self: ReleaseRepository, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _expiry(delta: dt.timedelta) -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) + delta).replace(microsecond=0)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class ReleaseRepository:
    """Keeps and signs the TUF metadata and target files of every release."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keys: KeySet,
        *,
        timestamp_expiry: dt.timedelta = dt.timedelta(hours=1),
        snapshot_expiry: dt.timedelta = dt.timedelta(days=7),
        targets_expiry: dt.timedelta = dt.timedelta(days=30),
        root_expiry: dt.timedelta = dt.timedelta(days=365),
    ) -> None:
        """Open the repository in ``directory`` (see :meth:`create` for a new one)."""
        self.directory = Path(directory)
        self.metadata_dir = self.directory / "metadata"
        self.targets_dir = self.directory / "targets"
        self.keys = keys
        self.timestamp_expiry = timestamp_expiry
        self.snapshot_expiry = snapshot_expiry
        self.targets_expiry = targets_expiry
        self.root_expiry = root_expiry
        self._online = keys.online()
        self._lock = threading.RLock()  # releases run off the event loop, next to changes and the timestamp schedule

    @classmethod
    def create(cls, directory: str | os.PathLike[str], keys: KeySet, **expiries: dt.timedelta) -> ReleaseRepository:
        """Write version 1 of every role into an empty ``directory``; the root is signed by the root keys."""
        repo = cls(directory, keys, **expiries)
        repo.metadata_dir.mkdir(parents=True, exist_ok=False)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        roots = keys.root()
        root = Root(expires=_expiry(repo.root_expiry), consistent_snapshot=True)
        for signer in roots:
            root.add_key(signer.public_key, "root")
        root.roles["root"].threshold = keys.root_threshold
        for role, signer in repo._online.items():
            root.add_key(signer.public_key, role)
        repo._write_root(Metadata(root), roots)
        targets = Metadata(Targets(expires=_expiry(repo.targets_expiry)))
        repo._publish(targets)
        return repo

    # -- reading ---------------------------------------------------------------------------

    def root_version(self) -> int:
        """The newest root version."""
        return max(int(p.name.split(".", 1)[0]) for p in self.metadata_dir.glob("*.root.json"))

    def root_bytes(self, version: int | None = None) -> bytes:
        """A root metadata file: what a device is provisioned with to bootstrap its trust."""
        return (self.metadata_dir / f"{version or self.root_version()}.root.json").read_bytes()

    def _latest(self, role: str) -> Metadata:
        if role == "timestamp":
            return Metadata.from_file(str(self.metadata_dir / "timestamp.json"))
        versions = [int(p.name.split(".", 1)[0]) for p in self.metadata_dir.glob(f"*.{role}.json")]
        return Metadata.from_file(str(self.metadata_dir / f"{max(versions)}.{role}.json"))

    def releases(self) -> list[dict[str, Any]]:
        """Every release in the signed targets metadata: model, version, channel, rollout, state, files."""
        targets: Targets = self._latest("targets").signed
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for path, info in targets.targets.items():
            custom = info.unrecognized_fields.get("custom", {})
            if custom.get("kind") in ("index", "patch"):
                continue
            key = (custom.get("model"), custom.get("version"))
            fields = ("model", "version", "channel", "rollout", "state")
            entry = found.setdefault(key, {k: custom.get(k) for k in fields})
            if "recall" in custom:
                entry["recall"] = dict(custom["recall"])
            entry.setdefault("files", {})[custom.get("kind")] = path
        return sorted(found.values(), key=lambda r: (r["model"], r["version"]))

    # -- writing ---------------------------------------------------------------------------

    @_serialized
    def release(
        self,
        model_dir: str | os.PathLike[str],
        *,
        channel: str = "stable",
        rollout: int = 100,
        kinds: Iterable[str] | None = None,
        patches: bool = True,
    ) -> dict[str, Any]:
        """Sign a verified model directory's files into a new release; return it.

        With ``patches``, each artifact also gets a signed patch from the parent release's (see :meth:`_add_patches`).

        Raises:
            ModelIntegrityError: a file does not match the manifest.
            Conflict: this model version was released before (versions only go up).
        """
        if not 0 <= rollout <= 100:
            raise ValueError(f"rollout must be within 0..100, got {rollout}")
        source = Path(model_dir)
        manifest = load_manifest(source)
        chosen = [a for k, a in manifest.artifacts.items() if kinds is None or k in set(kinds)]
        entries = [*chosen, *([manifest.probe] if manifest.probe else [])]
        verify_files(source, entries)
        existing = [r["version"] for r in self.releases() if r["model"] == manifest.name]
        if existing and manifest.version <= max(existing):
            raise Conflict(f"{manifest.name} v{manifest.version} is not newer than released v{max(existing)}")
        md = self._latest("targets")
        targets: Targets = md.signed
        files = [("manifest", "manifest.json")] + [(a.kind, a.file) for a in chosen]
        if manifest.probe:
            files.append(("probe", manifest.probe.file))
        base = {"model": manifest.name, "version": manifest.version, "channel": channel, "rollout": rollout}
        out_dir = self.targets_dir / manifest.name / str(manifest.version)
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, name in files:
            info = TargetFile.from_file(
                f"{manifest.name}/{manifest.version}/{name}",
                str(source / name),
                ["sha256"],
            )
            info.unrecognized_fields["custom"] = {**base, "kind": kind, "state": "active"}
            shutil.copyfile(source / name, out_dir / f"{info.hashes['sha256']}.{name}")
            targets.targets[info.path] = info
        if patches:
            self._add_patches(targets, base, [(a.kind, source / a.file) for a in chosen])
        self._publish(md)
        return next(r for r in self.releases() if (r["model"], r["version"]) == (manifest.name, manifest.version))

    def _add_patches(self, targets: Targets, base: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None:
        """Sign a patch per artifact kind from the newest earlier release not aborted, where it is small enough.

        A patch that cannot be made is logged and left out: devices then fetch the full artifact.
        """
        model, version = base["model"], base["version"]
        parent = _standing_before(targets, model, version)
        if parent is None:
            return
        out_dir = self.targets_dir / model / "patches"
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, path in artifacts:
            old = self._stored(targets, model, parent, kind)
            target = patch_target(model, kind, parent, version)
            name = target.rsplit("/", 1)[1]
            made = out_dir / f".{name}.{os.getpid()}"
            try:
                if old is None or not make_patch(old, path, made):
                    continue
            except (subprocess.SubprocessError, OSError) as exc:
                log.warning("no patch %s: %s", target, exc)
                continue
            info = TargetFile.from_file(target, str(made), ["sha256"])
            info.unrecognized_fields["custom"] = {
                **base,
                "kind": "patch",
                "state": "active",
                "artifact": kind,
                "parent": parent,
            }
            os.replace(made, out_dir / f"{info.hashes['sha256']}.{name}")
            targets.targets[info.path] = info

    def _stored(self, targets: Targets, model: str, version: int, kind: str) -> Path | None:
        """The stored file of a released artifact, None when that release does not carry ``kind``."""
        for path, info in targets.targets.items():
            custom = info.unrecognized_fields.get("custom", {})
            if (custom.get("model"), custom.get("version"), custom.get("kind")) == (model, version, kind):
                directory, name = path.rsplit("/", 1)
                return self.targets_dir / directory / f"{info.hashes['sha256']}.{name}"
        return None

    @_serialized
    def update_release(
        self,
        model: str,
        version: int,
        *,
        state: ReleaseState | None = None,
        rollout: int | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Pause, resume, abort, or widen a release; the change is signed like the release itself.

        Aborting recalls: the release's signed metadata and index entry name the version to go back to
        (the newest earlier release of its model and channel not aborted; None when there is none) and
        ``reason``; an earlier recall that pointed at this version now points at that one too.

        Raises:
            NotFound: no such release.
            Conflict: the release was aborted already (an abort is final).
            ValueError: a rollout outside 0..100, a reason without an abort, or a reason too long.
        """
        if rollout is not None and not 0 <= rollout <= 100:
            raise ValueError(f"rollout must be within 0..100, got {rollout}")
        if reason is not None and state != "aborted":
            raise ValueError("a reason goes with an abort (state='aborted') only")
        if reason is not None and len(reason) > MAX_REASON_CHARS:
            raise ValueError(f"the reason is {len(reason)} characters, over {MAX_REASON_CHARS}")
        md = self._latest("targets")
        targets: Targets = md.signed
        hits = [
            custom for custom in _customs(targets) if (custom.get("model"), custom.get("version")) == (model, version)
        ]
        if not hits:
            raise NotFound(f"no release of {model} v{version}")
        if any(custom.get("state") == "aborted" for custom in hits):
            raise Conflict(f"the release of {model} v{version} was aborted")
        recall = None
        if state == "aborted":
            channel = next(c["channel"] for c in hits if c.get("kind") == "manifest")
            recall = {"to": _standing_before(targets, model, version, channel), "reason": reason or ""}
            for custom in _customs(targets):  # recalls to this version now go where it goes
                earlier = custom.get("recall")
                if custom.get("model") == model and earlier is not None and earlier.get("to") == version:
                    custom["recall"] = {**earlier, "to": recall["to"]}
        for custom in hits:
            if state is not None:
                custom["state"] = state
            if recall is not None:
                custom["recall"] = dict(recall)
            if rollout is not None:
                custom["rollout"] = rollout
        self._publish(md)
        return next(r for r in self.releases() if (r["model"], r["version"]) == (model, version))

    @_serialized
    def refresh_timestamp(self) -> int:
        """Re-sign the timestamp with a fresh expiry (run on a schedule); return its version."""
        md = self._latest("timestamp")
        md.signed.version += 1
        md.signed.expires = _expiry(self.timestamp_expiry)
        self._sign_write(md, "timestamp", "timestamp.json")
        return md.signed.version

    @_serialized
    def rotate_root(self, old_signers: Sequence[Signer], new_signers: Sequence[Signer], threshold: int) -> int:
        """Replace the root keys: the new root is signed by the old keys and the new ones; return its version."""
        md = self._latest("root")
        root: Root = md.signed
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        for signer in new_signers:
            root.add_key(signer.public_key, "root")
        root.roles["root"].threshold = threshold
        root.version += 1
        root.expires = _expiry(self.root_expiry)
        md.signatures.clear()
        self._write_root(md, [*old_signers, *new_signers])
        return root.version

    def _write_root(self, md: Metadata, signers: Sequence[Signer]) -> None:
        for signer in signers:
            md.sign(signer, append=True)
        data = md.to_bytes(_SERIALIZER)
        _write_atomic(self.metadata_dir / f"{md.signed.version}.root.json", data)
        _write_atomic(self.metadata_dir / "root.json", data)

    def _sign_write(self, md: Metadata, role: str, name: str) -> None:
        md.signatures.clear()
        md.sign(self._online[role])
        _write_atomic(self.metadata_dir / name, md.to_bytes(_SERIALIZER))

    def _write_indexes(self, targets: Targets) -> None:
        """One signed ``<model>/index.json`` target per model: its releases, each with the artifact kinds it carries."""
        by_model: dict[str, list[dict[str, Any]]] = {}
        carried: dict[tuple[str, int], list[str]] = {}
        for info in targets.targets.values():
            custom = info.unrecognized_fields.get("custom", {})
            if custom.get("kind") in ARTIFACT_KINDS:
                carried.setdefault((custom["model"], custom["version"]), []).append(custom["kind"])
        for info in targets.targets.values():
            custom = info.unrecognized_fields.get("custom", {})
            if custom.get("kind") != "manifest":
                continue
            release = {k: custom[k] for k in ("version", "channel", "rollout", "state")}
            if "recall" in custom:
                release["recall"] = dict(custom["recall"])
            release["targets"] = sorted(carried.get((custom["model"], custom["version"]), []))
            by_model.setdefault(custom["model"], []).append(release)
        for model, releases in by_model.items():
            data = json.dumps({"model": model, "releases": sorted(releases, key=lambda r: r["version"])}).encode()
            path = f"{model}/index.json"
            out = self.targets_dir / model
            out.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(data).hexdigest()
            (out / f"{digest}.index.json").write_bytes(data)
            info = TargetFile(length=len(data), hashes={"sha256": digest}, path=path)
            info.unrecognized_fields["custom"] = {"model": model, "kind": "index"}
            targets.targets[path] = info

    def _publish(self, targets_md: Metadata) -> None:
        """Bump and sign targets, then snapshot, then timestamp: the order a device reads them backwards."""
        self._write_indexes(targets_md.signed)
        has_targets = any(self.metadata_dir.glob("*.targets.json"))
        targets_md.signed.version = targets_md.signed.version + 1 if has_targets else 1
        targets_md.signed.expires = _expiry(self.targets_expiry)
        self._sign_write(targets_md, "targets", f"{targets_md.signed.version}.targets.json")
        has_snapshot = any(self.metadata_dir.glob("*.snapshot.json"))
        snapshot_md = self._latest("snapshot") if has_snapshot else Metadata(Snapshot())
        snapshot_md.signed.version = snapshot_md.signed.version + 1 if has_snapshot else 1
        snapshot_md.signed.expires = _expiry(self.snapshot_expiry)
        snapshot_md.signed.meta["targets.json"] = MetaFile(version=targets_md.signed.version)
        self._sign_write(snapshot_md, "snapshot", f"{snapshot_md.signed.version}.snapshot.json")
        has_timestamp = (self.metadata_dir / "timestamp.json").exists()
        timestamp_md = self._latest("timestamp") if has_timestamp else Metadata(Timestamp())
        timestamp_md.signed.version = timestamp_md.signed.version + 1 if has_timestamp else 1
        timestamp_md.signed.expires = _expiry(self.timestamp_expiry)
        timestamp_md.signed.snapshot_meta = MetaFile(version=snapshot_md.signed.version)
        self._sign_write(timestamp_md, "timestamp", "timestamp.json")


def _customs(targets: Targets) -> Iterable[dict[str, Any]]:
    """The signed ``custom`` of every target (an empty one for a target without it)."""
    return (info.unrecognized_fields.get("custom", {}) for info in targets.targets.values())


def _standing_before(targets: Targets, model: str, version: int, channel: str | None = None) -> int | None:
    """The newest release of ``model`` before ``version`` (of ``channel``, if given) that is not aborted."""
    standing = [
        c["version"]
        for c in _customs(targets)
        if c.get("model") == model
        and c.get("kind") == "manifest"
        and c.get("version") < version
        and c.get("state") != "aborted"
        and channel in (None, c.get("channel"))
    ]
    return max(standing, default=None)
