"""Mosquitto 2.0 password files: ``user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512 hash>``.

This is the line ``mosquitto_passwd`` writes (12-byte salt, 64-byte hash, standard
base64 with padding); the broker reads the iteration count from each line.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping

__all__ = ["ITERATIONS", "hash_line", "new_password", "password_file", "verify_line"]

#: PBKDF2 rounds per line. The passwords are 256-bit random strings, so the hash only has to be
#: one-way, not slow; the broker pays this on every connect (mosquitto_passwd's default is 101).
ITERATIONS = 1000
_SALT_BYTES = 12


def new_password() -> str:
    """A random password of 256 bits, URL-safe (fits an environment variable unquoted)."""
    return secrets.token_urlsafe(32)


def hash_line(username: str, password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """One password-file line (no newline) for ``username``."""
    if not username or ":" in username or any(c.isspace() for c in username):
        raise ValueError(f"username {username!r} cannot go into a Mosquitto password file")
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_line(line: str, username: str, password: str) -> bool:
    """Whether ``line`` is a ``$7$`` line that accepts ``username`` with ``password``."""
    user, _, rest = line.strip().partition(":")
    parts = rest.split("$")
    if user != username or len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    expected = base64.b64decode(parts[4])
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return secrets.compare_digest(digest, expected)


def password_file(passwords: Mapping[str, str], *, iterations: int = ITERATIONS) -> str:
    """The text of a password file for ``{username: password}``."""
    return "".join(hash_line(user, pw, iterations=iterations) + "\n" for user, pw in passwords.items())
