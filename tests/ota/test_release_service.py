"""End to end over the air: upload and release over HTTP, a retained notice, devices update, the fleet view."""

from __future__ import annotations

import io
import json
import tarfile
import threading

import httpx
import pytest
from peers import publish
from waiting import PATIENCE_S, poll

from sdk import topics
from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.releases import ReleaseService
from sdk.cloud.server import BackgroundServer
from sdk.edge.install import ModelStore
from sdk.edge.status import DeviceLink
from sdk.edge.updater import ModelUpdater, UpdateConfig
from sdk.mqtt import MqttSettings

ADMIN = "admin-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"


def archive(directory) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def evil_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    return buffer.getvalue()


@pytest.fixture
def cloud(tmp_path, repo, broker):
    settings = MqttSettings.from_address(broker.address)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    config = CloudConfig(api_keys=(READER,), admin_keys=(ADMIN,))
    with (
        ReleaseService(registry, settings, refresh_every_s=1.0) as service,
        BackgroundServer(create_app({}, config, repository_dir=repo.directory, registry=registry)) as server,
    ):
        yield server, service, settings
    registry.close()


def test_upload_release_notice_update_and_fleet(cloud, versions, repo, tmp_path):
    server, _, settings = cloud
    url = f"{server.url}/v1/registry"
    body = archive(versions(1))
    assert httpx.post(f"{url}/models/digits/versions", content=body).status_code == 401
    reader = {"X-API-Key": READER}
    assert httpx.post(f"{url}/models/digits/versions", content=body, headers=reader).status_code == 401
    upload = {"X-API-Key": ADMIN, "Content-Type": "application/gzip"}
    admin = {"X-API-Key": ADMIN}
    bad = httpx.post(f"{url}/models/digits/versions", content=evil_archive(), headers=upload)
    assert bad.status_code == 400
    assert "plain top-level files" in bad.json()["error"]["message"]
    assert not list(tmp_path.rglob("escape.txt"))
    created = httpx.post(f"{url}/models/digits/versions", content=body, headers=upload)
    assert created.status_code == 201, created.text
    assert httpx.post(f"{url}/models/digits/versions", content=body, headers=upload).status_code == 409
    assert [v["version"] for v in httpx.get(f"{url}/models/digits/versions", headers=reader).json()] == [1]

    installed = threading.Event()
    store = ModelStore(tmp_path / "pi-e2e")
    config = UpdateConfig(model="digits", device_id="pi-e2e", repository_url=f"{server.url}/tuf")

    with DeviceLink(settings, "pi-e2e", "digits") as link:
        updater = ModelUpdater(store, config, repo.root_bytes(1), reporter=link.report)
        link.on_notice = lambda: updater.check().outcome == "installed" and installed.set()
        release = httpx.post(f"{url}/releases", json={"model": "digits", "version": 1}, headers=admin)
        assert release.status_code == 201, release.text
        assert installed.wait(PATIENCE_S), "the notice did not lead to an install"

        def device_on_v1():
            fleet = httpx.get(f"{url}/fleet", headers=reader).json()
            done = ("installed", "healthy", "up-to-date")
            return fleet and fleet[0]["running_version"] == 1 and fleet[0]["last_step"] in done

        poll(device_on_v1, "the fleet view shows the device on v1")
    paused = httpx.patch(f"{url}/releases/digits/1", json={"state": "paused"}, headers=admin)
    assert paused.json()["state"] == "paused"
    assert httpx.get(f"{url}/releases", headers=reader).json()[0]["state"] == "paused"


def test_the_schedule_keeps_the_timestamp_fresh(cloud, repo):
    from tuf.api.metadata import Metadata

    def signed_version() -> int:
        return Metadata.from_file(str(repo.metadata_dir / "timestamp.json")).signed.version

    before = repo.refresh_timestamp()
    # The schedule (every 1 s here) re-signs it again and again by itself; two turns prove a schedule.
    poll(lambda: signed_version() >= before + 2, "two scheduled re-signings of the timestamp")


def test_malformed_statuses_from_strangers_do_not_stop_the_fleet_view(cloud):
    _, service, settings = cloud
    poisons = [
        json.dumps({"model": ["not", "a", "name"]}).encode(),  # the database cannot bind a list
        json.dumps({"installed_version": 2**70}).encode(),  # nor an integer this large
        b"[" * 100_000,  # JSON nested past the recursion limit
    ]
    for i, poison in enumerate(poisons):
        publish(settings, topics.device_status(f"stranger-{i}"), [poison])
    publish(settings, topics.device_status("pi-good"), [json.dumps({"state": "online", "step": "healthy"}).encode()])

    def good_recorded():
        return any(d["device_id"] == "pi-good" for d in service.registry.fleet())

    poll(good_recorded, "the good device's status recorded after the strangers'")
    assert service.dropped_statuses == len(poisons)
