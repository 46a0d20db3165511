"""Every foreign error the updater can meet maps to a Fedge error; an engine that cannot load is not a bad file."""

from __future__ import annotations

import errno
import inspect

import onnxruntime.capi.onnxruntime_pybind11_state as ort_errors
import pytest
import securesystemslib.exceptions
import tuf.api.exceptions
import urllib3.exceptions

from sdk.backends.ort import OnnxRuntimeBackend, load_error
from sdk.edge.update_errors import map_update_errors, translate
from sdk.errors import (
    DeviceResourceError,
    EngineLoadFailed,
    ModelIntegrityError,
    RepositoryUnreachable,
    UpdateError,
    UpdateRejected,
)


def exception_classes(module) -> list[type[Exception]]:
    found = [c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, Exception)]
    return [c for c in found if c.__module__ == module.__name__ and not issubclass(c, Warning)]


def instance(cls: type[Exception]) -> Exception:
    try:
        return cls("injected")
    except TypeError:  # urllib3 classes that want (pool, url, message) and the like
        return cls.__new__(cls)


@pytest.mark.parametrize("cls", exception_classes(tuf.api.exceptions), ids=lambda c: c.__name__)
def test_every_tuf_error_is_mapped(cls):
    mapped = translate(instance(cls))
    assert isinstance(mapped, UpdateError)
    if issubclass(cls, tuf.api.exceptions.DownloadLengthMismatchError):
        assert isinstance(mapped, UpdateRejected)  # endless data is an attack, not an outage
    elif issubclass(cls, tuf.api.exceptions.DownloadError):
        assert isinstance(mapped, RepositoryUnreachable)
    elif issubclass(cls, tuf.api.exceptions.RepositoryError):
        assert isinstance(mapped, UpdateRejected)


@pytest.mark.parametrize("cls", exception_classes(urllib3.exceptions), ids=lambda c: c.__name__)
def test_every_urllib3_error_is_an_unreachable_repository(cls):
    assert isinstance(translate(instance(cls)), RepositoryUnreachable)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(OSError(errno.ENOSPC, "No space left on device"), DeviceResourceError, id="ENOSPC"),
        pytest.param(OSError(errno.EDQUOT, "Disk quota exceeded"), DeviceResourceError, id="EDQUOT"),
        pytest.param(PermissionError(errno.EACCES, "denied"), DeviceResourceError, id="EACCES"),
        pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), RepositoryUnreachable, id="ECONNRESET"),
        pytest.param(TimeoutError("timed out"), RepositoryUnreachable, id="timeout"),
        pytest.param(MemoryError(), DeviceResourceError, id="MemoryError"),
        pytest.param(securesystemslib.exceptions.StorageError("x"), DeviceResourceError, id="StorageError"),
    ],
)
def test_device_and_network_errors_are_mapped(error, expected):
    mapped = translate(error)
    assert type(mapped) is expected
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        assert "disk is full" in str(mapped)


def test_the_boundary_raises_ours_from_the_original_and_lets_unknown_errors_through():
    original = urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(100 bytes read, 900 more expected)")
    with pytest.raises(RepositoryUnreachable) as caught, map_update_errors():
        raise original
    assert caught.value.__cause__ is original
    with pytest.raises(KeyError), map_update_errors():
        raise KeyError("a bug stays a bug")


@pytest.mark.parametrize("cls", exception_classes(ort_errors), ids=lambda c: c.__name__)
def test_every_onnxruntime_load_failure_says_whether_the_file_or_the_machine_is_at_fault(cls):
    mapped = load_error(cls("injected"), "model.onnx")
    machine_faults = {"EPFail", "EngineError", "DeviceReset"}
    assert isinstance(mapped, EngineLoadFailed if cls.__name__ in machine_faults else ModelIntegrityError)
    assert isinstance(load_error(MemoryError(), "model.onnx"), EngineLoadFailed)


def test_a_real_corrupt_onnx_file_is_an_integrity_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07not a protobuf" * 10)
    with pytest.raises(ModelIntegrityError):
        OnnxRuntimeBackend(tmp_path / "bad.onnx")
