"""The model directory's ``manifest.json``: what a model takes, what it returns, and its files.

A model directory holds the artifacts of one model version (``model-fp32.onnx``,
``model-int8.onnx``, ``model.tflite``), a probe input with each artifact's expected
output (``probe.npz``), and this manifest, which records every file's sha256 and size.
A directory fetched over the air may hold only some artifacts; ``fetched.json`` says which.
Edge and cloud read it through this module only; it imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sdk.errors import ManifestError, ModelIntegrityError, ModelNotFound

__all__ = [
    "ARTIFACT_KINDS",
    "DTYPES",
    "FETCHED_FILE",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MAX_FILE_NAME",
    "PROBE_FILE",
    "Artifact",
    "ArtifactKind",
    "InputRange",
    "Manifest",
    "ModelRef",
    "Preprocessing",
    "Probe",
    "TensorSpec",
    "compact_input",
    "fetched_kinds",
    "file_digest",
    "load_manifest",
    "load_probe",
    "plain_file_name",
    "read_probe",
    "verify_files",
    "write_fetched",
    "write_probe",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PROBE_FILE = "probe.npz"
FETCHED_FILE = "fetched.json"
ArtifactKind = Literal["onnx-fp32", "onnx-int8", "tflite"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("onnx-fp32", "onnx-int8", "tflite")
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")
#: The longest file name a model directory may hold.
MAX_FILE_NAME = 128
# File names only: a manifest must never point outside its own directory.
_SAFE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_FILE_NAME - 1}}}")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """Name, shape (``None`` for the dynamic batch dimension) and dtype of one tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: the spec's shape without the batch dimension."""
        return tuple(int(d) for d in self.shape[1:])  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One runnable file of the model and what the export measured of it."""

    kind: ArtifactKind
    file: str
    sha256: str
    size: int
    accuracy: float | None = None
    precision: str = "float32"
    #: Logits are divided by it before the softmax (fitted on the validation split); 1.0: not calibrated.
    temperature: float = 1.0
    #: Expected calibration error on the test split (15 equal-width bins) before and after the temperature.
    ece_before: float | None = None
    ece_after: float | None = None
    #: This artifact's own edge-first threshold (``fedge calibrate``); None: the manifest's.
    confidence_threshold: float | None = None


@dataclass(frozen=True)
class ModelRef:
    """A model version by name, e.g. the cloud model a device's thresholds were calibrated against."""

    name: str
    version: int


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How a raw input becomes the model's input: ``raw * scale + offset`` (digits: pixels 0..16, scale 1/16)."""

    scale: float = 1.0
    offset: float = 0.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` scaled and shifted, in its own float dtype."""
        return x * x.dtype.type(self.scale) + x.dtype.type(self.offset)


@dataclass(frozen=True, kw_only=True)
class InputRange:
    """The smallest and largest value of the preprocessed training inputs, over every feature.

    One range for the whole input rather than one per feature: a feature that was constant in
    training (a digit's corner pixel, always 0) would otherwise make any other value of it suspect.
    """

    min: float
    max: float

    def outside(self, batch: np.ndarray, margin: float) -> np.ndarray | None:
        """Per row of ``batch``: a value more than ``margin`` times the range's width beyond it? None: in no row."""
        slack = margin * (self.max - self.min)
        low, high = self.min - slack, self.max + slack
        if low <= batch.min() and batch.max() <= high:  # the common case in two reductions, no per-row arrays
            return None
        flat = batch.reshape(len(batch), -1)
        rows = (flat.min(axis=1) < low) | (flat.max(axis=1) > high)  # NaN compares False: nan_policy's business
        return rows if rows.any() else None


@dataclass(frozen=True, kw_only=True)
class Probe:
    """A probe input and each artifact's expected output, kept in ``probe.npz``."""

    file: str
    sha256: str
    size: int
    atol: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything a runtime needs to know about one model version."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifacts: Mapping[str, Artifact]
    labels: tuple[str, ...] = ()
    output_kind: Literal["logits", "probabilities"] = "logits"
    probe: Probe | None = None
    reference_accuracy: float | None = None
    confidence_threshold: float | None = None
    #: The cloud model the thresholds were calibrated against.
    cloud_model: ModelRef | None = None
    #: How raw inputs were turned into the model's inputs in training; None: not recorded (older manifests).
    preprocessing: Preprocessing | None = None
    #: The value range of the preprocessed training inputs; None: not recorded, no range check.
    input_range: InputRange | None = None
    sparsity: float = 0.0
    created_at: str = ""
    lineage: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def input(self) -> TensorSpec:
        """The model's single input."""
        return self.inputs[0]

    @property
    def listed_files(self) -> dict[str, int]:
        """Every file the manifest lists besides itself (artifacts, probe), with its size."""
        files = {a.file: a.size for a in self.artifacts.values()}
        return {**files, self.probe.file: self.probe.size} if self.probe else files

    def with_threshold(self, threshold: float, artifact: str | None = None) -> Manifest:
        """A copy with a new confidence threshold: the manifest's, or one artifact's own."""
        if artifact is None:
            return replace(self, confidence_threshold=float(threshold))
        if artifact not in self.artifacts:
            raise KeyError(f"{self.name} v{self.version} has no {artifact} artifact")
        changed = replace(self.artifacts[artifact], confidence_threshold=float(threshold))
        return replace(self, artifacts={**self.artifacts, artifact: changed})

    def threshold_for(self, artifact: str) -> float | None:
        """The calibrated threshold of ``artifact``: its own, else the manifest's, else None."""
        own = self.artifacts[artifact].confidence_threshold if artifact in self.artifacts else None
        return self.confidence_threshold if own is None else own

    def to_json(self) -> str:
        """Serialise as stable, human-readable JSON."""
        data = asdict(self)
        data["artifacts"] = {k: asdict(a) for k, a in sorted(self.artifacts.items())}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` into ``model_dir`` atomically."""
        path = Path(model_dir) / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate a manifest; raise ManifestError naming the bad field."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest.json is not valid JSON: {exc}") from exc
        return _parse_manifest(_Fields(data, "manifest"))


def load_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``manifest.json`` of ``model_dir``."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelNotFound(f"no {MANIFEST_FILE} in {model_dir}") from None
    return Manifest.from_json(raw)


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Return the sha256 hex digest and the size in bytes of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_files(model_dir: str | os.PathLike[str], entries: Iterable[Artifact | Probe]) -> None:
    """Check each file's size and sha256 against the manifest; raise ModelIntegrityError."""
    for entry in entries:
        path = Path(model_dir) / entry.file
        try:
            digest, size = file_digest(path)
        except FileNotFoundError:
            raise ModelIntegrityError(f"{entry.file} is missing from {model_dir}") from None
        if size != entry.size:
            raise ModelIntegrityError(
                f"{entry.file} is {size} bytes, the manifest says {entry.size} (truncated or replaced)"
            )
        if digest != entry.sha256:
            raise ModelIntegrityError(f"{entry.file} does not match its sha256 in the manifest")


def plain_file_name(name: str) -> bool:
    """Whether ``name`` may be a file of a model directory: short, top-level, no dot first, no ``..``."""
    return bool(_SAFE_NAME.fullmatch(name)) and ".." not in name  # fullmatch: "$" lets a final newline through


def load_probe(model_dir: str | os.PathLike[str], manifest: Manifest) -> dict[str, np.ndarray]:
    """Load the verified probe: ``input`` and ``expected/<artifact kind>`` arrays."""
    if manifest.probe is None:
        raise ModelNotFound(f"the manifest of {manifest.name} v{manifest.version} has no probe")
    verify_files(model_dir, [manifest.probe])
    return read_probe(Path(model_dir) / manifest.probe.file)


# A probe's input only has to exercise the live input path and reproduce recorded outputs, so a
# float input travels as one byte per value plus two numbers: a quarter of its float32 size, which
# matters when one input image is a sixth of an int8 model. The step is a power of two and the
# lowest level a multiple of it, so that every level is exact in the input's own float type.
_LEVELS = 255


def _levels(x: np.ndarray) -> tuple[float, float]:
    low, high = float(x.min()), float(x.max())
    if high > low:  # one level spare: rounding the lowest level down must not push the highest out of range
        step = 2.0 ** math.ceil(math.log2((high - low) / (_LEVELS - 1)))
    else:  # one value: a step fine enough that the value itself is a level
        step = 2.0 ** (math.frexp(low)[1] - 53) if low else 1.0
    return math.floor(low / step) * step, step


def _encode(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    low, step = _levels(x)
    codes = np.clip(np.rint((x.astype(np.float64) - low) / step), 0, _LEVELS)
    return codes.astype(np.uint8), low, step


def _decode(codes: np.ndarray, low: float, step: float, dtype: np.dtype) -> np.ndarray:
    return (codes.astype(np.float64) * step + low).astype(dtype)


def _compactable(x: np.ndarray) -> bool:
    return np.issubdtype(x.dtype, np.floating) and x.size > 0 and bool(np.isfinite(x).all())


def compact_input(x: np.ndarray) -> np.ndarray:
    """``x`` as a probe stores it: a float input moved to the nearest of 256 even levels spanning its values."""
    return _decode(*_encode(x), x.dtype) if _compactable(x) else x


def write_probe(path: str | os.PathLike[str], probe: Mapping[str, np.ndarray]) -> tuple[str, int]:
    """Write ``probe`` (``input`` and ``expected/<kind>`` arrays) compressed to ``path``; return its sha256 and size.

    An input that :func:`compact_input` leaves unchanged is stored as one byte per value, any other as it is.
    """
    arrays = {key.replace("/", "__"): value for key, value in probe.items() if key != "input"}
    x = np.asarray(probe["input"])
    codes, low, step = _encode(x) if _compactable(x) else (None, 0.0, 1.0)
    if codes is not None and np.array_equal(_decode(codes, low, step, x.dtype), x):
        arrays.update(input_codes=codes, input_levels=np.array([low, step]), input_dtype=np.array(x.dtype.name))
    else:
        arrays["input"] = x
    np.savez_compressed(path, **arrays)
    return file_digest(path)


def read_probe(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a probe file (either layout): ``input`` and ``expected/<artifact kind>`` arrays.

    Raises:
        ModelIntegrityError: the file is not a probe.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        if "input_codes" in arrays:
            low, step = (float(v) for v in arrays.pop("input_levels"))
            dtype = np.dtype(str(arrays.pop("input_dtype")))
            if not np.issubdtype(dtype, np.floating):
                raise ValueError(f"a compact input must decode to floats, not {dtype}")
            arrays["input"] = _decode(arrays.pop("input_codes"), low, step, dtype)
    except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
        raise ModelIntegrityError(f"{Path(path).name} is not a readable probe: {exc}") from exc
    if "input" not in arrays:
        raise ModelIntegrityError(f"{Path(path).name} has no probe input")
    return {key.replace("__", "/"): value for key, value in arrays.items()}


def write_fetched(directory: Path, kinds: list[str]) -> None:
    """Record in a staged directory which artifact kinds it holds."""
    (directory / FETCHED_FILE).write_text(json.dumps({"artifacts": sorted(kinds)}))


def fetched_kinds(directory: Path) -> frozenset[str] | None:
    """The artifact kinds an over-the-air directory holds; None for a whole exported directory."""
    try:
        data = json.loads((directory / FETCHED_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return frozenset()  # unreadable: trust no artifact, so loading fails loudly rather than guessing
    kinds = data.get("artifacts") if isinstance(data, dict) else None
    return frozenset(k for k in kinds if isinstance(k, str)) if isinstance(kinds, list) else frozenset()


class _Fields:
    """Typed access to a JSON object, raising ManifestError with the field's path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
        self.data = data
        self.where = where

    def _fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}.{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self._fail(key, "missing")
            return default
        value = self.data[key]
        if value is None and default is None:
            return None
        numeric = kind is float or (isinstance(kind, tuple) and float in kind)
        if numeric and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise self._fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail(key, "must be finite")
        return value

    def name(self, key: str) -> str:
        value = self.get(key, str)
        if not plain_file_name(value):
            raise self._fail(key, f"{value!r} is not a plain file name")
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), f"{self.where}.{key}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _parse_tensor(f: _Fields) -> TensorSpec:
    shape = f.get("shape", list)
    if not shape or any(d is not None and (not isinstance(d, int) or isinstance(d, bool) or d < 1) for d in shape):
        raise f._fail("shape", f"expected positive ints or null, got {shape!r}")
    if any(d is None for d in shape[1:]):
        raise f._fail("shape", "only the batch dimension may be dynamic")
    dtype = f.get("dtype", str)
    if dtype not in DTYPES:
        raise f._fail("dtype", f"unsupported dtype {dtype!r}")
    return TensorSpec(name=f.get("name", str), shape=tuple(shape), dtype=dtype)


def _parse_digest(f: _Fields) -> tuple[str, int]:
    sha = f.get("sha256", str)
    if not _SHA256.match(sha):
        raise f._fail("sha256", "expected 64 lowercase hex digits")
    size = f.get("size", int)
    if size < 0:
        raise f._fail("size", "must be >= 0")
    return sha, size


def _parse_artifact(f: _Fields, kind: str) -> Artifact:
    if kind not in ARTIFACT_KINDS:
        raise ManifestError(f"{f.where}: unknown artifact kind (known: {', '.join(ARTIFACT_KINDS)})")
    sha, size = _parse_digest(f)
    return Artifact(
        kind=kind,  # type: ignore[arg-type]
        file=f.name("file"),
        sha256=sha,
        size=size,
        accuracy=f.get("accuracy", float, None),
        precision=f.get("precision", str, "float32"),
        temperature=_positive(f, "temperature"),
        ece_before=f.get("ece_before", float, None),
        ece_after=f.get("ece_after", float, None),
        confidence_threshold=_threshold(f),
    )


def _positive(f: _Fields, key: str) -> float:
    value = f.get(key, float, 1.0)
    if value <= 0:
        raise f._fail(key, "must be > 0")
    return value


def _threshold(f: _Fields) -> float | None:
    threshold = f.get("confidence_threshold", float, None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise f._fail("confidence_threshold", "must be within [0, 1]")
    return threshold


def _parse_model_ref(f: _Fields) -> ModelRef:
    version = f.get("version", int)
    if version < 0:
        raise f._fail("version", "must be >= 0")
    return ModelRef(name=f.get("name", str), version=version)


def _parse_preprocessing(f: _Fields) -> Preprocessing:
    scale = f.get("scale", float)
    if scale == 0:
        raise f._fail("scale", "must not be 0")
    return Preprocessing(scale=scale, offset=f.get("offset", float, 0.0))


def _parse_input_range(f: _Fields) -> InputRange:
    low, high = f.get("min", float), f.get("max", float)
    if low > high:
        raise f._fail("min", f"{low} is above max {high}")
    return InputRange(min=low, max=high)


def _parse_manifest(f: _Fields) -> Manifest:
    fmt = f.get("format_version", int)
    if fmt != FORMAT_VERSION:
        raise f._fail("format_version", f"this SDK reads version {FORMAT_VERSION}, got {fmt}")
    artifacts_f = f.sub("artifacts")
    artifacts = {k: _parse_artifact(artifacts_f.sub(k), k) for k in artifacts_f.data}
    if not artifacts:
        raise f._fail("artifacts", "no artifacts")
    inputs = tuple(_parse_tensor(_Fields(t, f"{f.where}.inputs[{i}]")) for i, t in enumerate(f.get("inputs", list)))
    outputs = tuple(_parse_tensor(_Fields(t, f"{f.where}.outputs[{i}]")) for i, t in enumerate(f.get("outputs", list)))
    if len(inputs) != 1 or len(outputs) != 1:
        raise f._fail("inputs", "exactly one input and one output are supported")
    probe = None
    if f.get("probe", dict, None) is not None:
        pf = f.sub("probe")
        sha, size = _parse_digest(pf)
        probe = Probe(file=pf.name("file"), sha256=sha, size=size, atol=pf.get("atol", float, 1e-3))
    output_kind = f.get("output_kind", str, "logits")
    if output_kind not in ("logits", "probabilities"):
        raise f._fail("output_kind", "expected 'logits' or 'probabilities'")
    threshold = _threshold(f)
    cloud_model = _parse_model_ref(f.sub("cloud_model")) if f.get("cloud_model", dict, None) is not None else None
    version = f.get("version", int)
    if version < 0:
        raise f._fail("version", "must be >= 0")
    has = {key: f.get(key, dict, None) is not None for key in ("preprocessing", "input_range")}
    return Manifest(
        name=f.get("name", str),
        version=version,
        inputs=inputs,
        outputs=outputs,
        artifacts=artifacts,
        labels=tuple(str(x) for x in f.get("labels", list, [])),
        output_kind=output_kind,
        probe=probe,
        reference_accuracy=f.get("reference_accuracy", float, None),
        confidence_threshold=threshold,
        cloud_model=cloud_model,
        preprocessing=_parse_preprocessing(f.sub("preprocessing")) if has["preprocessing"] else None,
        input_range=_parse_input_range(f.sub("input_range")) if has["input_range"] else None,
        sparsity=f.get("sparsity", float, 0.0),
        created_at=f.get("created_at", str, ""),
        lineage=f.get("lineage", dict, {}),
        format_version=fmt,
    )
