"""A repository that hangs up mid-download, a full disk and a clock far off are reported outcomes; the device serves.

The repository here is a tiny real HTTP server over the real signed repository directory; it can be told
to send half of each model file and close the connection, which the cloud app cannot be made to do.
"""

from __future__ import annotations

import datetime
import errno
import shutil
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import tuf.ngclient.updater as tuf_updater
from waiting import PATIENCE_S

from sdk.edge import EdgeRuntime
from sdk.edge.updater import open_installed

SAMPLE = np.zeros((1, 8, 8), np.float32)


class HangingUpHandler(SimpleHTTPRequestHandler):
    """Serves the repository's files; while ``server.hang_up`` is set, model files break off half-way."""

    def copyfile(self, source, outputfile) -> None:
        if not (self.server.hang_up and self.path.endswith(".onnx")):
            return super().copyfile(source, outputfile)
        data = source.read()
        outputfile.write(data[: len(data) // 2])
        outputfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the connection end mid-body

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hanging_repository(repo):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(HangingUpHandler, directory=str(repo.directory)))
    server.hang_up = False
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(PATIENCE_S)


def serving_v1(device, repo, versions, **update):
    repo.release(versions(1))
    updater = device(update={"retry_base_s": 4.0, **update}, draw=lambda: 0.0)
    assert updater.check().outcome == "installed"
    updater.runtime = EdgeRuntime(open_installed(updater.store, updater.edge_config), updater.edge_config)
    return updater


def test_a_repository_that_hangs_up_mid_download_is_an_unreachable_outcome(device, repo, versions, hanging_repository):
    url = f"http://127.0.0.1:{hanging_repository.server_address[1]}"
    updater = serving_v1(device, repo, versions, repository_url=url)
    repo.release(versions(2), patches=False)  # no patch: the fault is in the full download
    hanging_repository.hang_up = True

    first = updater.check()  # python-tuf lets urllib3's ProtocolError through: check() must not
    assert first.outcome == "unreachable"
    assert "ProtocolError" in first.detail or "IncompleteRead" in first.detail
    assert first.retry_after_s == 2.0  # backoff: half of retry_base_s with the injected draw 0
    assert updater.check().retry_after_s == 4.0  # and it doubles while the repository keeps failing
    assert updater.events[-1]["step"] == "unreachable"
    assert updater.runtime.predict(SAMPLE).model_version == 1
    assert updater.installed_version == 1
    assert not list(updater.store.root.glob(".staging-*"))

    hanging_repository.hang_up = False
    healed = updater.check()
    assert (healed.outcome, healed.version) == ("installed", 2)  # v2 was not blamed for the outage
    assert healed.retry_after_s == pytest.approx(updater.config.check_interval_s * 0.9)
    assert updater.runtime.predict(SAMPLE).model_version == 2


def test_a_full_disk_while_writing_the_model_is_a_failed_outcome(device, repo, versions, monkeypatch):
    updater = serving_v1(device, repo, versions)
    repo.release(versions(2), patches=False)  # no patch: the fault is in writing the full download
    real_copy = shutil.copyfileobj

    def disk_full(source, destination, *args, **kwargs):
        # Fault injection: a real disk cannot be filled on demand here; this raises what a full one raises,
        # at the write of a model file into the device's store.
        if str(destination.name).endswith(".onnx") and str(updater.store.root) in str(destination.name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, destination, *args, **kwargs)

    monkeypatch.setattr(tuf_updater.shutil, "copyfileobj", disk_full)
    outcome = updater.check()
    assert outcome.outcome == "failed"
    assert "DeviceResourceError" in outcome.detail
    assert "disk is full" in outcome.detail
    assert outcome.retry_after_s == 2.0
    assert updater.runtime.predict(SAMPLE).model_version == 1
    assert not list(updater.store.root.glob(".staging-*"))
    assert 2 not in updater.memory.refused  # the disk was at fault, not the release

    monkeypatch.undo()  # space was freed
    assert updater.check().version == 2
    assert updater.runtime.predict(SAMPLE).model_version == 2


class FarFuture(datetime.datetime):
    """A clock ten years ahead, as a device with a dead RTC battery and a bad NTP answer may have."""

    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + datetime.timedelta(days=3650)


def test_a_clock_far_ahead_sees_expired_metadata_reports_it_and_recovers(device, repo, versions, monkeypatch):
    import tuf.ngclient._internal.trusted_metadata_set as trusted

    updater = serving_v1(device, repo, versions)
    repo.release(versions(2))
    # Fault injection: the system clock cannot be moved here; python-tuf reads the time it checks expiry
    # against from this module's `datetime`, so the device's view of "now" moves and nothing else does.
    monkeypatch.setattr(trusted, "datetime", SimpleNamespace(datetime=FarFuture, timezone=datetime.timezone))
    outcome = updater.check()
    assert outcome.outcome == "rejected"
    assert "xpired" in outcome.detail
    assert outcome.retry_after_s > 0  # retried later, not given up
    assert updater.events[-1]["step"] == "rejected"
    assert updater.runtime.predict(SAMPLE).model_version == 1
    assert 2 not in updater.memory.refused  # the clock was at fault, not the release

    monkeypatch.undo()  # the clock is right again
    assert updater.check().version == 2
    assert updater.runtime.predict(SAMPLE).model_version == 2
