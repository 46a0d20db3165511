"""A MobileNetV2-shaped network with random, seeded weights, and a cached model directory of it.

Only command-line runs use the shared cache (:func:`default_cache_root`); a caller that
gives no cache root, as the tests do, gets a private build that is removed afterwards.

The network follows the published width-1.0 layout (a 3x3 stem, seventeen inverted
residual blocks, a 1x1 head to 1280 channels, 1000 classes; about 3.5M parameters)
so that latency and size figures are representative of a real edge vision model.
No weights are downloaded: BatchNorm statistics are fitted on random inputs so the
activations keep a sane range for int8 calibration.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "STAGES",
    "InvertedResidual",
    "MobileNetSpec",
    "MobileNetV2",
    "add_cache_arguments",
    "build_model_dir",
    "cached_model_dir",
    "chosen_cache_root",
    "default_cache_root",
    "mobilenet_dir",
]

#: (expansion, output channels, blocks, stride of the first block) per stage, width 1.0.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Bump when the network or the build changes in a way the source hash cannot see.
BUILD_REVISION = 1

StepCallback = Callable[[str], None]


def conv_bn(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu6: bool = True
) -> nn.Sequential:
    """Convolution without bias, BatchNorm, then ReLU6 unless ``relu6`` is off (a linear bottleneck)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu6:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand with a 1x1 conv, filter with a depthwise 3x3, project back linearly; add the input when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [conv_bn(cin, hidden)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, relu6=False)]
        self.body = nn.Sequential(*layers)
        self.shortcut = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus ``x`` on the shortcut blocks."""
        y = self.body(x)
        return x + y if self.shortcut else y


class MobileNetV2(nn.Module):
    """Stem, the inverted-residual stages of :data:`STAGES`, a 1x1 head, global pooling and a linear classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [conv_bn(3, STEM_CHANNELS, 3, stride=2)]
        cin = STEM_CHANNELS
        for expansion, cout, repeats, first_stride in STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, first_stride if i == 0 else 1, expansion))
                cin = cout
        blocks.append(conv_bn(cin, HEAD_CHANNELS))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of ``(N, 3, H, W)`` images."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@torch.no_grad()
def fit_batchnorm(model: nn.Module, samples: np.ndarray) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``samples``, then put the model in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    model.train()
    model(torch.from_numpy(samples))
    return model.eval()


@dataclass(frozen=True, kw_only=True)
class MobileNetSpec:
    """Everything that determines the built model directory; its :meth:`key` names the cache entry."""

    resolution: int = 224
    num_classes: int = 1000
    calibration_samples: int = 32
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one sample: ``(3, resolution, resolution)``."""
        return (3, self.resolution, self.resolution)

    def samples(self, n: int, stream: int) -> np.ndarray:
        """``n`` standard-normal float32 images from random stream ``stream`` of this spec's seed."""
        rng = np.random.default_rng([self.seed, stream])
        return rng.standard_normal((n, *self.input_shape), dtype=np.float32)

    def key(self) -> str:
        """Hash of the parameters, the build revision, library versions and the source of the build code."""
        import onnxruntime

        from federation.export import pipeline, to_onnx
        from sdk import manifest

        digest = hashlib.sha256()
        meta = {**asdict(self), "rev": BUILD_REVISION, "torch": torch.__version__, "ort": onnxruntime.__version__}
        digest.update(json.dumps(meta, sort_keys=True).encode())
        for module_file in (__file__, to_onnx.__file__, pipeline.__file__, manifest.__file__):
            digest.update(Path(module_file).read_bytes())
        return digest.hexdigest()[:16]


def build_model(spec: MobileNetSpec) -> MobileNetV2:
    """A seeded MobileNetV2 with BatchNorm fitted on random images, in eval mode."""
    torch.manual_seed(spec.seed)
    model = MobileNetV2(spec.num_classes)
    fit_batchnorm(model, spec.samples(8, stream=0))
    return model


def build_model_dir(
    directory: str | os.PathLike[str], spec: MobileNetSpec, on_step: StepCallback | None = None
) -> Path:
    """Write fp32 and int8 ONNX artifacts, probe and manifest of a MobileNetV2 into the empty ``directory``."""
    from federation.export.pipeline import ArtifactFile
    from federation.export.pipeline import build_model_dir as write_model_dir
    from federation.export.to_onnx import export_onnx, quantize_int8
    from sdk.manifest import TensorSpec

    step = on_step or (lambda _msg: None)
    directory = Path(directory)
    step("building MobileNetV2 (random weights, BatchNorm fitted on random images)")
    model = build_model(spec)
    step("exporting MobileNetV2 to fp32 ONNX")
    export_onnx(model, spec.samples(2, stream=1), directory / "model-fp32.onnx")
    step(f"quantizing MobileNetV2 to int8 ({spec.calibration_samples} calibration samples)")
    quantize_int8(
        directory / "model-fp32.onnx", directory / "model-int8.onnx", spec.samples(spec.calibration_samples, 2)
    )
    step("writing MobileNetV2 probe and manifest")
    write_model_dir(
        directory,
        [ArtifactFile("onnx-fp32", "model-fp32.onnx", "float32"), ArtifactFile("onnx-int8", "model-int8.onnx", "int8")],
        name="mobilenetv2-random",
        version=1,
        input=TensorSpec(name="input", shape=(None, *spec.input_shape), dtype="float32"),
        output=TensorSpec(name="output", shape=(None, spec.num_classes), dtype="float32"),
        probe_input=spec.samples(1, stream=3),
        lineage={"builder": "bench.mobilenet", "spec": asdict(spec), "parameters": parameter_count(model)},
    )
    return directory


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def default_cache_root() -> Path:
    """``$FEDGE_BENCH_CACHE``, else ``fedge-bench-cache`` in the system temp dir."""
    return Path(os.environ.get("FEDGE_BENCH_CACHE") or Path(tempfile.gettempdir()) / "fedge-bench-cache")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--cache-dir DIR`` and ``--no-cache`` to a benchmark's command line."""
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", type=Path, help="where built MobileNetV2 model dirs are kept")
    cache.add_argument("--no-cache", action="store_true", help="build MobileNetV2 afresh in a temp dir")


def chosen_cache_root(args: argparse.Namespace) -> Path | None:
    """The cache root the command line asked for: ``--cache-dir``, None under ``--no-cache``, else the default."""
    return None if args.no_cache else args.cache_dir or default_cache_root()


@contextlib.contextmanager
def mobilenet_dir(
    spec: MobileNetSpec, cache_root: str | os.PathLike[str] | None, on_step: StepCallback | None = None
) -> Iterator[tuple[Path, bool]]:
    """``(directory, was_cached)`` from the cache under ``cache_root``; None: a private build, removed on exit."""
    if cache_root is not None:
        yield cached_model_dir(spec, cache_root, on_step)
        return
    with tempfile.TemporaryDirectory(prefix="fedge-bench-mobilenet-") as tmp:
        yield cached_model_dir(spec, tmp, on_step)


def cached_model_dir(
    spec: MobileNetSpec, cache_root: str | os.PathLike[str], on_step: StepCallback | None = None
) -> tuple[Path, bool]:
    """The model directory of ``spec`` from the cache, built first on a miss; returns ``(directory, was_cached)``."""
    from sdk.errors import ModelError
    from sdk.manifest import load_manifest, verify_files

    root = Path(cache_root)
    target = root / f"mobilenetv2-{spec.key()}"
    if target.is_dir():
        try:
            manifest = load_manifest(target)
            verify_files(target, [*manifest.artifacts.values(), *filter(None, [manifest.probe])])
            return target, True
        except ModelError:
            shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=root))
    try:
        build_model_dir(work, spec, on_step)
        try:
            os.replace(work, target)
        except OSError:  # another run finished the same entry first
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target, False
