"""Registry uploads on a real server: bounded by what the archive declares, listed members only, off the loop."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import threading
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from waiting import PATIENCE_S

from sdk.cloud.app import create_app
from sdk.cloud.config import CloudConfig
from sdk.cloud.registry import Registry
from sdk.cloud.server import BackgroundServer
from sdk.errors import ConfigError

ADMIN = "admin-key-0123456789abcdef"
UPLOAD = {"X-API-Key": ADMIN, "Content-Type": "application/gzip"}
MIB = 1 << 20
# A mebibyte of zeros compressed once: a bomb of N MiB is N copies, each its own gzip member (one valid gzip
# stream), so a test builds a few hundred MiB declared in milliseconds.
ZEROS_MIB = gzip.compress(bytes(MIB))


def member(name: str, data: bytes = b"", **fields) -> bytes:
    """One tar member (header and padded data); ``fields`` set TarInfo attributes (type, linkname, size ...)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def model_members(directory) -> list[bytes]:
    """The members of a model directory, in name order (manifest.json comes before the artifacts)."""
    return [member(path.name, path.read_bytes()) for path in sorted(directory.iterdir())]


def tar_gz(*members: bytes, bomb: tuple[str, int] | None = None, bomb_type: bytes = tarfile.REGTYPE) -> bytes:
    """A tar.gz of ``members`` and then, with ``bomb=(name, mib)``, a member of that many MiB of zeros."""
    pieces = [gzip.compress(b"".join(members))]
    if bomb is not None:
        name, mib = bomb
        header = member(name, size=mib * MIB, type=bomb_type)[: tarfile.BLOCKSIZE]
        pieces += [gzip.compress(header), *[ZEROS_MIB] * mib]
    return b"".join([*pieces, gzip.compress(bytes(2 * tarfile.BLOCKSIZE))])  # the end-of-archive blocks


@pytest.fixture
def registry(tmp_path, repo):
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store", repo)
    yield reg
    reg.close()


@contextmanager
def serving(registry: Registry, repo, services=None, **config):
    """The cloud app with the registry and /tuf on a real uvicorn server; ``config`` sets ``[cloud]`` keys."""
    app = create_app(
        services or {}, CloudConfig(admin_keys=(ADMIN,), **config), repository_dir=repo.directory, registry=registry
    )
    with BackgroundServer(app) as server:
        yield server


def upload(server, body: bytes, model: str = "digits") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/registry/models/{model}/versions", content=body, headers=UPLOAD, timeout=3 * PATIENCE_S
    )


def assert_nothing_kept(server, registry: Registry) -> None:
    """No version in the registry, and no file (nor staging directory) left in its store."""
    assert httpx.get(f"{server.url}/v1/registry/models/digits/versions").status_code == 404
    left = [p for p in registry.store_dir.rglob("*") if p.is_file() or p.name.startswith(".")]
    assert left == []


def refusal(response: httpx.Response, status: int) -> str:
    """The message of an error answer with ``status`` and the uniform error body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "bad_request"
    return body["error"]["message"]


def test_a_bomb_declaring_more_than_the_bound_is_refused_before_it_is_unpacked(registry, repo, versions):
    # 600 MiB declared by one unlisted member in a body of about 600 KB, over the default 512 MiB bound.
    body = tar_gz(*model_members(versions(1)), bomb=("padding.bin", 600))
    assert len(body) < 2 * MIB
    with serving(registry, repo) as server:
        message = refusal(upload(server, body), 413)
        assert "max_unpacked_bytes" in message
        assert_nothing_kept(server, registry)


def test_the_declared_sizes_of_listed_members_are_summed_against_the_configured_bound(registry, repo, versions):
    body = tar_gz(*model_members(versions(1)))
    listed = sum(path.stat().st_size for path in versions(1).iterdir())  # listed, verified files only
    with serving(registry, repo, max_unpacked_bytes=listed // 2) as server:
        assert "max_unpacked_bytes" in refusal(upload(server, body), 413)
        assert_nothing_kept(server, registry)
    with serving(registry, repo) as server:  # the same archive under the default bound
        assert upload(server, body).status_code == 201


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax-header", "gnu-long-name"])
def test_a_tar_extension_header_past_the_bound_is_refused_while_it_is_read(registry, repo, versions, kind):
    # tarfile reads such a header's data whole before it hands over the member: the bounded stream stops it.
    body = tar_gz(*model_members(versions(1)), bomb=("././@LongLink", 64), bomb_type=kind)
    with serving(registry, repo, max_unpacked_bytes=4 * MIB) as server:
        assert "max_unpacked_bytes" in refusal(upload(server, body), 413)
        assert_nothing_kept(server, registry)


@pytest.mark.parametrize("where", ["before the manifest", "after the artifacts"])
def test_a_member_the_manifest_does_not_list_is_refused(registry, repo, versions, where):
    stray = member("a-note.txt" if where == "before the manifest" else "zz-note.txt", b"not a model file")
    members = model_members(versions(1))
    body = tar_gz(stray, *members) if where == "before the manifest" else tar_gz(*members, stray)
    with serving(registry, repo) as server:
        assert "not listed in the manifest" in refusal(upload(server, body), 400)
        assert_nothing_kept(server, registry)


def test_a_listed_member_declaring_another_size_than_its_manifest_entry_is_refused_unread(registry, repo, versions):
    directory = versions(1)
    members = [member(p.name, p.read_bytes()) for p in sorted(directory.iterdir()) if p.name != "model-fp32.onnx"]
    with serving(registry, repo) as server:
        body = tar_gz(*members, bomb=("model-fp32.onnx", 64))
        message = refusal(upload(server, body), 422)
        assert "model-fp32.onnx declares 67108864 bytes" in message
        assert_nothing_kept(server, registry)


# Members that are not plain, short, top-level files: each refused on its own in a model's archive.
NOT_PLAIN = {
    "long-name": member("n" * 200 + ".onnx", b"x"),  # past the bound, in a PAX header
    "absolute": member("/etc/evil", b"x"),
    "dotdot": member("../escape", b"x"),
    "nested": member("sub/model.onnx", b"x"),
    "hidden": member(".hidden", b"x"),
    "newline": member("model.onnx\n", b"x"),
    "symlink": member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
    "hardlink": member("hard", type=tarfile.LNKTYPE, linkname="manifest.json"),
    "device": member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    "fifo": member("fifo", type=tarfile.FIFOTYPE),
    "directory": member("dir", type=tarfile.DIRTYPE),
}


def test_members_that_are_not_plain_short_top_level_files_are_refused(registry, repo, versions):
    members = model_members(versions(1))
    with serving(registry, repo) as server:
        answers = {kind: upload(server, tar_gz(*members, bad)) for kind, bad in NOT_PLAIN.items()}
        assert {kind: answer.status_code for kind, answer in answers.items()} == dict.fromkeys(NOT_PLAIN, 400)
        assert "longer than 128 characters" in refusal(answers["long-name"], 400)
        assert_nothing_kept(server, registry)


def test_a_duplicate_member_and_a_model_name_that_is_no_plain_name_are_refused(registry, repo, versions):
    members = model_members(versions(1))
    with serving(registry, repo) as server:
        assert "twice" in refusal(upload(server, tar_gz(*members, members[-1])), 400)
        assert upload(server, tar_gz(*members), model=".digits").status_code == 422
        assert upload(server, tar_gz(*members), model="d" * 65).status_code == 422
        assert_nothing_kept(server, registry)


class HeldRegistry(Registry):
    """Fault injection: registering waits at a gate the test opens, to hold an upload mid-way on demand."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.gate, self.order = threading.Event(), threading.Event(), []

    def add_version(self, model_dir):
        self.entered.set()
        self.gate.wait(PATIENCE_S)
        self.order.append("upload released")
        return super().add_version(model_dir)


def test_tuf_health_and_predictions_answer_while_an_upload_is_held(tmp_path, repo, versions, service):
    held = HeldRegistry(f"sqlite:///{tmp_path / 'held.db'}", tmp_path / "store", repo)
    answers: dict[str, httpx.Response] = {}
    with serving(held, repo, services={service.name: service}) as server:
        uploading = threading.Thread(
            target=lambda: answers.update(upload=upload(server, tar_gz(*model_members(versions(1)))))
        )
        uploading.start()
        try:
            assert held.entered.wait(PATIENCE_S), "the upload did not reach the registry"
            get = {"timeout": 2 * PATIENCE_S}
            answers["tuf"] = httpx.get(f"{server.url}/tuf/metadata/1.root.json", **get)
            answers["healthz"] = httpx.get(f"{server.url}/healthz", **get)
            sample = {"inputs": np.zeros(service.manifest.input.sample_shape).tolist()}
            answers["predict"] = httpx.post(f"{server.url}/v1/models/{service.name}/predict", json=sample, **get)
            held.order.append("answered")
        finally:
            held.gate.set()
            uploading.join()
    held.close()
    assert held.order == ["answered", "upload released"]  # answered while the upload was held, not after it
    assert [answers[k].status_code for k in ("tuf", "healthz", "predict", "upload")] == [200, 200, 200, 201]


def test_two_uploads_of_one_version_at_once_give_one_version_and_one_conflict(registry, repo, versions):
    body = tar_gz(*model_members(versions(1)))
    statuses: list[int] = []
    with serving(registry, repo) as server:
        threads = [threading.Thread(target=lambda: statuses.append(upload(server, body).status_code)) for _ in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(statuses) == [201, 409]
    assert [v["version"] for v in registry.versions("digits")] == [1]


def test_the_cli_uploads_the_listed_files_of_a_directory_that_holds_others(registry, repo, versions):
    directory = versions(1)
    (directory / "notes.txt").write_text("an operator's notes, not a model file")
    with serving(registry, repo) as server:
        command = [sys.executable, "-m", "sdk.cli", "registry", "upload", str(directory), "--url", server.url, "--json"]
        env = {**os.environ, "FEDGE_ADMIN_KEY": ADMIN}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3 * PATIENCE_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["version"] == 1
    assert sorted(p.name for p in (registry.store_dir / "digits" / "v1").iterdir()) == sorted(
        p.name for p in directory.iterdir() if p.name != "notes.txt"
    )


@pytest.mark.parametrize("key", ["max_unpacked_bytes", "max_upload_bytes"])
def test_the_upload_bounds_are_checked_and_named(key):
    with pytest.raises(ConfigError, match=key):
        CloudConfig(**{key: 0})
