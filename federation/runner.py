"""Drive Flower from Python: a SuperLink process, SuperNode processes, and ``flwr run`` of our app.

Flower 1.42 serves the SuperLink's Control and Fleet APIs on one HTTP port; ``flwr run``
finds it through a connection in ``$FLWR_HOME/config.toml``. Every process here gets a
private ``FLWR_HOME``, telemetry off and runtime dependency installation off (it would
``uv sync`` the app into a fresh environment and pull a CUDA torch), and is stopped with
its whole process group, because the SuperLink keeps running after a run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from federation.settings import FederationSettings
from sdk.errors import FedgeError
from sdk.mosquitto import free_port

__all__ = [
    "APP_DIR",
    "FederationError",
    "SuperLink",
    "SuperNode",
    "flower_env",
    "flwr_run",
    "run_app",
    "toml_overrides",
    "write_connection",
]

#: The Flower app directory (its pyproject.toml names the components and the run config).
APP_DIR = Path(__file__).parent / "app"
CONNECTION = "fedge"


class FederationError(FedgeError):
    """A Flower process failed, or a run did not finish in time."""


def flower_env(home: Path) -> dict[str, str]:
    """The environment every Flower process of ours runs with."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning",
    )
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise FederationError(f"{what} exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise FederationError(f"{what} was not ready within {timeout:.0f} s")
        time.sleep(0.2)


class _FlowerProcess:
    """A Flower process in its own session and FLWR_HOME, logging to a file, stopped with its children."""

    log_name = "flower.log"

    def __init__(self, home: str | os.PathLike[str] | None, prefix: str) -> None:
        self._own_home = home is None
        self.home = Path(home or tempfile.mkdtemp(prefix=prefix))
        self.log_file = self.home / self.log_name
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line of the process."""
        raise NotImplementedError

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=flower_env(self.home), start_new_session=True
            )
        return self._proc

    def wait(self) -> int:
        """Wait for the process to end and return its exit status."""
        assert self._proc is not None
        return self._proc.wait()

    def stop(self) -> None:
        """Stop the process and every process it started."""
        if self._proc is not None:
            _stop_group(self._proc)
            self._proc = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)


class SuperLink(_FlowerProcess):
    """A ``flower-superlink`` process on loopback: ``with SuperLink(simulation=True) as link: ...``."""

    log_name = "superlink.log"

    def __init__(self, *, simulation: bool, home: str | os.PathLike[str] | None = None, port: int | None = None):
        """Prepare a SuperLink (simulation engine or deployment engine) with its own FLWR_HOME."""
        super().__init__(home, "fedge-flwr-")
        self.simulation = simulation
        self.port = port or free_port()

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the SuperLink's HTTP APIs (Control and Fleet)."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The ``flower-superlink`` command line."""
        command = ["flower-superlink", "--insecure", "--isolation", "subprocess", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--database", str(self.home / "state.db")]
        command.append("--disable-runtime-dependency-installation")
        return [*command, "--simulation"] if self.simulation else command

    def start(self, timeout: float = 60.0) -> SuperLink:
        """Start the process, wait for its health endpoint, and register it as the ``fedge`` connection."""
        self.home.mkdir(parents=True, exist_ok=True)
        write_connection(self.home, self.address)
        proc = self._spawn()
        _wait_until(self._healthy, proc, "flower-superlink", self.log_file, timeout)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://{self.address}/health", timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    def __enter__(self) -> SuperLink:
        return self.start()


def write_connection(home: Path, address: str) -> Path:
    """Write ``$FLWR_HOME/config.toml`` naming ``address`` as the default connection ``fedge``."""
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\ninsecure = true\n'
    )
    return path


class SuperNode(_FlowerProcess):
    """A ``flower-supernode`` process: the command a device runs to join a federation."""

    log_name = "supernode.log"

    def __init__(self, superlink: str, node_config: Mapping[str, Any], *, home: str | os.PathLike[str] | None = None):
        """Prepare a SuperNode for ``superlink`` (``HOST:PORT``) with ``node_config`` (e.g. ``partition-id``)."""
        super().__init__(home, "fedge-supernode-")
        self.superlink = superlink
        self.node_config = dict(node_config)
        self.port = free_port()

    def command(self) -> list[str]:
        """The ``flower-supernode`` command line."""
        command = ["flower-supernode", "--insecure", "--superlink", self.superlink]
        command += ["--node-config", toml_overrides(self.node_config), "--isolation", "subprocess"]
        return [*command, "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self) -> SuperNode:
        """Start the process; it connects (and reconnects) to the SuperLink by itself."""
        self._spawn()
        return self

    def __enter__(self) -> SuperNode:
        return self.start()


def toml_overrides(values: Mapping[str, Any]) -> str:
    """``key=value`` pairs in TOML syntax, as ``--run-config`` and ``--node-config`` take them."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def run_app(
    home: Path,
    settings: FederationSettings,
    *,
    num_supernodes: int | None = None,
    timeout_s: float = 1800.0,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``flwr run`` our app with ``settings`` on the ``fedge`` connection in ``home``; return the run's report.

    Raises:
        FederationError: ``flwr run`` failed, timed out, or the ServerApp wrote no report.
    """
    report_path = Path(settings.report_path) if settings.report_path else home / f"report-{time.time_ns()}.json"
    values = settings.to_run_config()
    values["report-path"] = str(report_path)
    return flwr_run(
        home, APP_DIR, values, report_path, num_supernodes=num_supernodes, timeout_s=timeout_s, on_line=on_line
    )


def flwr_run(
    home: Path,
    app_dir: Path,
    run_config: Mapping[str, Any],
    report_path: Path,
    *,
    num_supernodes: int | None = None,
    timeout_s: float = 1800.0,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``flwr run`` the app in ``app_dir``, stream its log to ``on_line``, and read the JSON at ``report_path``."""
    command = ["flwr", "run", str(app_dir), CONNECTION, "--run-config", toml_overrides(run_config), "--stream"]
    if num_supernodes is not None:
        command += ["--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=flower_env(home),
        start_new_session=True,
        text=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if on_line is not None:
                on_line(line.rstrip("\n"))

    reader = threading.Thread(target=pump, name="flwr-run-log", daemon=True)
    reader.start()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise FederationError(f"the run did not finish within {timeout_s:.0f} s") from None
    finally:
        _stop_group(proc)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    if not report_path.exists():
        raise FederationError(f"flwr run exited with {proc.returncode} and the ServerApp wrote no report")
    return json.loads(report_path.read_text())
