"""A private Mosquitto broker process for tests, benchmarks and the demo.

It listens on loopback on a free port with a generated config that says
``set_tcp_nodelay true``, and can be stopped and restarted on the same port.
Given a ``fedge broker init`` directory, it runs that directory's secured mosquitto.conf
as written, except that each listener moves to a free port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sdk.errors import BrokerUnavailable

__all__ = ["Mosquitto", "find_mosquitto", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary; raise BrokerUnavailable when it is not installed."""
    found = shutil.which("mosquitto") or next(
        (
            p
            for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")
            if os.path.exists(p)
        ),
        None,
    )
    if found is None:
        raise BrokerUnavailable("mosquitto is not installed (make install does it with apt-get)")
    return found


class Mosquitto:
    """One broker process on ``127.0.0.1:port``; ``with Mosquitto() as broker: ...``."""

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_config: str = "",
        workdir: str | os.PathLike[str] | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        tcp_nodelay: bool = True,
    ):
        """A stopped broker; ``config_dir`` (from ``fedge broker init``) runs its TLS, accounts and ACL.

        ``tcp_nodelay=False`` runs a stock broker (Nagle's algorithm on), for benchmarks that show its cost.
        """
        self.host = "127.0.0.1"
        self.port = port or free_port()
        #: Every listener's port, in the config's order (the first is ``port``).
        self.ports = [self.port]
        self._binary = find_mosquitto()
        self._own_dir = workdir is None
        self._dir = Path(workdir or tempfile.mkdtemp(prefix="fedge-mosquitto-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.config_file = self._dir / "mosquitto.conf"
        self.log_file = self._dir / "mosquitto.log"
        if config_dir is not None:
            secured = (Path(config_dir) / "mosquitto.conf").read_text()
            self.config_file.write_text(self._on_loopback(secured) + extra_config)
        else:
            self.config_file.write_text(self._plain_config(tcp_nodelay) + extra_config)
        self._proc: subprocess.Popen[bytes] | None = None

    def _plain_config(self, tcp_nodelay: bool) -> str:
        return (
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            f"set_tcp_nodelay {'true' if tcp_nodelay else 'false'}\n"
            "persistence false\n"
            "max_queued_messages 10000\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )

    def _on_loopback(self, config: str) -> str:
        """``config`` with each listener on 127.0.0.1: the first on ``port``, the others on free ports."""

        def move(match: re.Match[str]) -> str:
            port = self.port if match.start() == first else free_port()
            if port not in self.ports:
                self.ports.append(port)
            return f"listener {port} {self.host}"

        listeners = re.compile(r"^listener[ \t]+\d+[^\n]*$", re.MULTILINE)
        found = listeners.search(config)
        if found is None:
            raise BrokerUnavailable("the broker config has no listener line")
        first = found.start()
        # Started as root, Mosquitto drops to the "mosquitto" user, which cannot read our 0600 key and
        # password files; a private broker runs as whoever started it (the option is ignored otherwise).
        return listeners.sub(move, config) + f"user {getpass.getuser()}\n"

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the broker."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU time)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the process and wait until it accepts connections."""
        if self.running:
            return self
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        self._proc = subprocess.Popen(
            [self._binary, "-c", str(self.config_file)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerUnavailable(f"mosquitto exited with {self._proc.returncode}: {self._tail_log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not listen on {self.address} within {timeout}s: {self._tail_log()}")

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def reload(self) -> None:
        """Make the broker re-read its password and ACL files (SIGHUP)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, and start again on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its generated files."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _tail_log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-500:].strip()
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
