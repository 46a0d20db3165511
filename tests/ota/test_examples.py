"""The shipped device examples run as shipped: their ``fedge.toml`` and their systemd unit's own command line.

Only what names this machine changes: the broker (host, port, no TLS, no CA file), the repository URL, and the
paths, which move under the test's folder. Everything else (device id, target, artifacts, providers, deadlines,
``min_check_interval_s``) is the example's own. A real Mosquitto, the real signed repository behind the real cloud
app, and model versions from our export pipeline.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from extras import DEVICE_PYTHON
from peers import publish, subscribed_client
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.backends.ort import available_providers
from sdk.config import tomllib
from sdk.mqtt import MqttSettings
from sdk.notices import notice_payload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Keys this machine's copy may change; every other key of the example stays as shipped.
MACHINE_KEYS = {("mqtt", "host"), ("mqtt", "port"), ("mqtt", "tls"), ("mqtt", "ca_file"), ("update", "repository_url")}
#: Both examples check at most once per 30 s (``min_check_interval_s``, the default on the Jetson): the v2 notice
#: arrives right after the start's check installed v1, so v2 comes one such interval later, plus the health window.
#: That is the example's real behaviour, kept; the bound is generous on top of it.
UPDATE_BOUND_S = 180.0
EXAMPLE_IDS = ["raspberrypi", "jetson"]


def unit_lines(unit: str) -> tuple[list[str], list[str]]:
    """A systemd unit's comment lines and its settings, continuation lines (``\\``) joined."""
    comments = [line for line in unit.splitlines() if line.lstrip().startswith("#")]
    body = re.sub(r"\\\n\s*", " ", "\n".join(line for line in unit.splitlines() if line not in comments))
    return comments, body.splitlines()


def unit_setting(unit: str, key: str) -> str:
    """The value of ``key=`` in the unit (one per unit here)."""
    (value,) = [line.split("=", 1)[1] for line in unit_lines(unit)[1] if line.startswith(f"{key}=")]
    return value


def moved(path: str, root: Path) -> Path:
    """``/etc/fedge/x`` -> ``root/etc/fedge/x``: the device's files, under the test's folder."""
    return root / path.lstrip("/")


def toml_text(config: dict[str, dict[str, Any]]) -> str:
    """Flat tables back to TOML. JSON's strings, numbers, booleans and arrays are TOML's too.

    tomli_w is installed here only as a dependency of flwr, which the device side must not need.
    """
    tables = (
        [f"[{name}]"] + [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        for name, table in config.items()
    )
    return "\n\n".join("\n".join(lines) for lines in tables) + "\n"


def example_on_this_machine(example: str, root: Path, broker: str, repository_url: str) -> dict[str, dict[str, Any]]:
    """The example's config, changed only where it names the broker, the repository, or a path (moved under root)."""
    config = tomllib.loads((EXAMPLES / example / "fedge.toml").read_text())
    host, port = broker.rsplit(":", 1)
    config["mqtt"].update(host=host, port=int(port), tls=False)  # the test broker is plain TCP on loopback
    del config["mqtt"]["ca_file"]
    # The example's username stays: the test broker admits any client (no password file).
    config["update"]["repository_url"] = repository_url
    for table in config.values():
        for key, value in table.items():
            if isinstance(value, str) and value.startswith("/"):
                table[key] = str(moved(value, root))
    # ``providers`` (Jetson: tensorrt, cuda, cpu) stays as shipped: the runtime keeps those this onnxruntime offers.
    return config


def unit_command(example: str, root: Path) -> list[str]:
    """The unit's ExecStart, its paths moved under ``root``, run by this checkout's ``sdk`` in the device's Python."""
    program, *args = shlex.split(unit_setting((EXAMPLES / example / "fedge-device.service").read_text(), "ExecStart"))
    assert program == "/opt/fedge/.venv/bin/fedge"
    return [DEVICE_PYTHON, "-m", "sdk.cli", *(str(moved(a, root)) if a.startswith("/") else a for a in args)]


def option(command: list[str], name: str) -> Path:
    return Path(command[command.index(name) + 1])


@pytest.mark.device_subprocess
@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_the_example_serves_throughout_two_releases_and_ends_on_the_second(
    example, tmp_path, broker, server, repo, versions, digits_split
):
    config = example_on_this_machine(example, tmp_path, broker.address, f"{server.url}/tuf")
    shipped = tomllib.loads((EXAMPLES / example / "fedge.toml").read_text())
    changed = {(t, k) for t in shipped for k in shipped[t] if config[t].get(k) != shipped[t][k]}
    assert changed == MACHINE_KEYS | ({("edge", "cache_dir")} if example == "jetson" else set())
    assert all(set(config[t]) <= set(shipped[t]) for t in shipped)  # nothing added
    if example == "jetson":  # no GPU provider here, and nothing forced: the shipped list degrades to CPU by itself
        assert "TensorrtExecutionProvider" not in available_providers()
    command = [*unit_command(example, tmp_path), "--interval", "0.2"]
    option(command, "--config").parent.mkdir(parents=True)
    option(command, "--config").write_text(toml_text(config))
    option(command, "--root-metadata").write_bytes(repo.root_bytes(1))
    option(command, "--samples").parent.mkdir(parents=True)
    np.save(option(command, "--samples"), digits_split.x_test[:3])
    device_id, settings = config["update"]["device_id"], MqttSettings.from_address(broker.address)
    statuses: list[dict] = []
    watcher = subscribed_client(
        settings, topics.device_status(device_id), lambda c, u, m: statuses.append(json.loads(m.payload))
    )
    repo.release(versions(1))  # released before the device's first start: it has no model yet
    out = tmp_path / "device.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:

        def healthy(version: int) -> bool:
            assert proc.poll() is None, out.read_text()
            return any(s.get("step") == "healthy" and s.get("installed_version") == version for s in statuses)

        poll(lambda: healthy(1), "v1 installed and healthy", UPDATE_BOUND_S)
        repo.release(versions(2))
        publish(settings, topics.release("digits"), [notice_payload("digits", 2)], retain=True)
        poll(
            lambda: healthy(2),
            "v2 installed and healthy, one min_check_interval_s after the first check",
            UPDATE_BOUND_S,
        )
        poll(lambda: out.read_text().count("from edge, v2") >= 3, "answers from v2")
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        assert proc.wait(PATIENCE_S) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.disconnect()
        watcher.loop_stop()
    log = out.read_text()
    lines = [line for line in log.splitlines() if line.startswith(f"{device_id}: ")]
    first_local = next(i for i, line in enumerate(lines) if " from edge, " in line)
    # Before its first install the device has no model, and this test runs no cloud worker: those samples are
    # answered with the reason. From the first install on, every sample is answered locally.
    assert all(f"{device_id}: no answer (" in line for line in lines[:first_local]), log
    answered = [re.search(r" from edge, v(\d+), ", line) for line in lines[first_local:]]
    assert all(answered), log
    served = [int(match[1]) for match in answered]
    assert served == sorted(served), log  # v1, then v2, never back
    assert set(served) == {1, 2}, log
    assert served[-3:] == [2, 2, 2]
    assert "Traceback" not in log


@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_setup_installs_from_a_place_that_exists(example):
    script = EXAMPLES / example / "setup.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)  # it parses; it is not run (sudo, useradd)
    text = script.read_text()
    installs = [line for line in text.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert installs, text
    assert not re.search(r"example\.(net|com|org)|git\+|https?://", "\n".join(installs)), installs
    for relative in re.findall(r'"\$HERE/([^"$]+)"', text):  # the scripts and folders it runs from the checkout
        assert (script.parent / relative).exists(), relative
    pi = (EXAMPLES / "raspberrypi" / "setup.sh").read_text()
    assert 'pip wheel --no-deps -w "$CHECKOUT/dist" "$CHECKOUT"' in pi  # the checkout, built into a wheel...
    assert (EXAMPLES / "raspberrypi" / "../../pyproject.toml").exists()  # ... is a project pip can build


@pytest.mark.parametrize("example", EXAMPLE_IDS)
def test_every_file_the_unit_needs_is_explained(example):
    unit = (EXAMPLES / example / "fedge-device.service").read_text()
    comments = "\n".join(unit_lines(unit)[0])
    readme = (EXAMPLES / example / "README.md").read_text()
    config = tomllib.loads((EXAMPLES / example / "fedge.toml").read_text())
    named = [unit_setting(unit, "EnvironmentFile")]
    named += [word for word in shlex.split(unit_setting(unit, "ExecStart")) if word.startswith("/")]
    named += [v for table in config.values() for v in table.values() if isinstance(v, str) and v.startswith("/")]
    assert len(named) >= 6, named
    unexplained = [path for path in named if f"#   {path} " not in comments and path not in readme]
    assert not unexplained, f"{example}: the unit's comments and the README do not explain {unexplained}"
