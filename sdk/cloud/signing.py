"""Release signing keys: online keys for targets, snapshot and timestamp; root keys kept apart, offline.

``fedge keys init`` writes the online keys into the service's key directory and the root
keys into a separate directory meant for offline storage (a USB key in a safe): the
running service never needs them, except to rotate the root. Private keys are PEM
(PKCS#8) files of mode 0600; public keys travel only inside the signed root metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

__all__ = ["ONLINE_ROLES", "KeySet", "init_keys", "load_signers", "new_signer", "write_private"]

ONLINE_ROLES = ("targets", "snapshot", "timestamp")


def new_signer() -> CryptoSigner:
    """A fresh Ed25519 key pair."""
    return CryptoSigner.generate_ed25519()


def write_private(path: Path, signer: CryptoSigner) -> None:
    """Write ``signer``'s private key to a new file of mode 0600 (never over an existing one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_bytes)


def _read_private(path: Path) -> CryptoSigner:
    return CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))


@dataclass(frozen=True)
class KeySet:
    """Where the keys of one repository are, and the root threshold."""

    online_dir: Path
    root_dir: Path | None
    root_threshold: int

    def online(self) -> dict[str, CryptoSigner]:
        """The online signers by role."""
        return {role: _read_private(self.online_dir / f"{role}.pem") for role in ONLINE_ROLES}

    def root(self) -> list[CryptoSigner]:
        """The offline root signers (needed only to create or rotate the root)."""
        if self.root_dir is None:
            raise FileNotFoundError("the root keys are offline: mount their directory to create or rotate the root")
        return load_signers(self.root_dir)

    @classmethod
    def online_only(cls, online_dir: str | os.PathLike[str]) -> KeySet:
        """The keys a running service has: the online ones, without the root keys."""
        meta = json.loads((Path(online_dir) / "keys.json").read_text())
        return cls(Path(online_dir), None, int(meta["root_threshold"]))


def load_signers(directory: str | os.PathLike[str]) -> list[CryptoSigner]:
    """Every ``*.pem`` signer in ``directory``, in name order."""
    return [_read_private(p) for p in sorted(Path(directory).glob("*.pem"))]


def init_keys(
    online_dir: str | os.PathLike[str], root_dir: str | os.PathLike[str], *, root_keys: int = 3, root_threshold: int = 2
) -> KeySet:
    """Create the online keys and ``root_keys`` root keys (any ``root_threshold`` of them sign a root).

    Raises:
        FileExistsError: a key file already exists (keys are never overwritten).
        ValueError: the threshold is not within 1..root_keys.
    """
    if not 1 <= root_threshold <= root_keys:
        raise ValueError(f"root_threshold must be within 1..{root_keys}, got {root_threshold}")
    online, root = Path(online_dir), Path(root_dir)
    if online.resolve() == root.resolve():
        raise ValueError("the root keys must not live with the online keys")
    for role in ONLINE_ROLES:
        write_private(online / f"{role}.pem", new_signer())
    for i in range(root_keys):
        write_private(root / f"root-{i + 1}.pem", new_signer())
    (online / "keys.json").write_text(json.dumps({"root_threshold": root_threshold}))
    return KeySet(online, root, root_threshold)
