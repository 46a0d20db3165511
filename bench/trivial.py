"""A trivial model directory (one Identity node): what transport benchmarks serve, so the model costs nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["FEATURES", "NAME", "build_trivial_model_dir"]

NAME = "trivial"
FEATURES = 16


def build_trivial_model_dir(directory: str | os.PathLike[str], features: int = FEATURES) -> Path:
    """Write an fp32 ONNX model that returns its ``(N, features)`` input, with probe and manifest."""
    import onnx
    from onnx import TensorProto, helper

    from federation.export.pipeline import ArtifactFile, build_model_dir
    from sdk.manifest import TensorSpec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "trivial",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", features])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, directory / "model-fp32.onnx")
    build_model_dir(
        directory,
        [ArtifactFile("onnx-fp32", "model-fp32.onnx", "float32")],
        name=NAME,
        version=1,
        input=TensorSpec(name="input", shape=(None, features), dtype="float32"),
        output=TensorSpec(name="output", shape=(None, features), dtype="float32"),
        probe_input=np.linspace(-1, 1, features, dtype=np.float32)[None],
        lineage={"builder": "bench.trivial"},
    )
    return directory
