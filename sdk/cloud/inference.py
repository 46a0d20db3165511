"""A model directory's fp32 artifact served behind a dynamic batcher: what MQTT workers and HTTP share."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import Future

import numpy as np

from sdk import tracing
from sdk.cloud.batching import Batcher, BatcherConfig
from sdk.cloud.metrics import ServiceMetrics
from sdk.loading import LoadedModel, LoadOptions, load_model
from sdk.manifest import Manifest

__all__ = ["InferenceService", "load_services"]


class InferenceService:
    """Validates inputs and answers them in dynamic batches on one loaded model."""

    def __init__(
        self, model: LoadedModel, config: BatcherConfig | None = None, *, metrics: ServiceMetrics | None = None
    ) -> None:
        """Serve ``model``; the batcher thread starts now."""
        self.model = model
        self.config = config or BatcherConfig()
        self.batcher = Batcher(model.backend.run, self.config)
        if metrics is not None:
            self.report_to(metrics)

    def report_to(self, metrics: ServiceMetrics) -> None:
        """Report batch sizes and queue depth to ``metrics`` (the last one given wins)."""
        name = self.name
        metrics.queue_depth.labels(model=name).set_function(self.batcher.depth)
        batches = metrics.batch_size.labels(model=name)
        self.batcher.on_batch = batches.observe

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike[str],
        config: BatcherConfig | None = None,
        *,
        providers: tuple[str, ...] = ("cuda", "cpu"),
        intra_op_threads: int = 1,
        allow_spinning: bool = False,
        metrics: ServiceMetrics | None = None,
    ) -> InferenceService:
        """Load the fp32 ONNX artifact (CUDA when present, else CPU), verified and smoke-tested.

        ``intra_op_threads`` and ``allow_spinning`` are the engine's (see ``[cloud]`` in CloudConfig).
        """
        options = LoadOptions(
            artifacts=("onnx-fp32",), providers=providers, num_threads=intra_op_threads, allow_spinning=allow_spinning
        )
        return cls(load_model(model_dir, options), config, metrics=metrics)

    @property
    def name(self) -> str:
        """The served model's name (the ``<model>`` of its topic and route)."""
        return self.model.manifest.name

    @property
    def manifest(self) -> Manifest:
        """The served model's manifest (name, version, input spec)."""
        return self.model.manifest

    @property
    def ready(self) -> bool:
        """Whether requests are being taken."""
        return self.batcher.alive

    def submit(
        self, x: object, *, deadline_s: float | None = None, priority: int = 0, trace: object | None = None
    ) -> tuple[Future[np.ndarray], bool]:
        """Queue one sample or a batch; return its future and whether it was one sample.

        ``trace``: the request's span, which its batch's span links to (default: the current one, when tracing).

        Raises:
            InvalidInput: at once, for a wrong shape, dtype or a non-finite value.
            Overloaded: at once, when the queue is full.
        The future raises DeadlineExceeded when the deadline passes while queued.
        """
        batch, single = self.model.inputs.prepare(x)
        return self._queue(batch, deadline_s, priority, trace), single

    def serve(
        self, x: object, *, deadline_s: float | None = None, priority: int = 0, trace: object | None = None
    ) -> tuple[np.ndarray | Future[np.ndarray], bool]:
        """:meth:`submit`, but answered on this thread when the model is quick and idle (:meth:`Batcher.run_alone`).

        Returns the outputs themselves when run here, else their future; and whether it was one sample.

        Raises:
            InvalidInput: a wrong shape, dtype or a non-finite value.
            Overloaded: the queue is full.
            Exception: whatever the model raised, when run here.
        """
        batch, single = self.model.inputs.prepare(x)
        out = self.batcher.run_alone(batch, deadline_s=deadline_s, trace=trace)
        return (self._queue(batch, deadline_s, priority, trace) if out is None else out), single

    def _queue(
        self, batch: np.ndarray, deadline_s: float | None, priority: int, trace: object | None
    ) -> Future[np.ndarray]:
        if trace is None:
            trace = tracing.current_span()
        return self.batcher.submit(batch, deadline_s=deadline_s, priority=priority, trace=trace)

    def close(self) -> None:
        """Stop batching and release the model."""
        self.batcher.close()
        self.model.close()


def load_services(
    model_dirs: Iterable[str | os.PathLike[str]],
    config: BatcherConfig | None = None,
    *,
    providers: tuple[str, ...] = ("cuda", "cpu"),
    intra_op_threads: int = 1,
    allow_spinning: bool = False,
    metrics: ServiceMetrics | None = None,
) -> Mapping[str, InferenceService]:
    """One service per model directory, keyed by model name; a name given twice is an error."""
    services: dict[str, InferenceService] = {}
    try:
        for model_dir in model_dirs:
            service = InferenceService.from_model_dir(
                model_dir,
                config,
                providers=providers,
                intra_op_threads=intra_op_threads,
                allow_spinning=allow_spinning,
                metrics=metrics,
            )
            if service.name in services:
                service.close()
                raise ValueError(f"two model directories serve the model {service.name!r}")
            services[service.name] = service
    except BaseException:
        for service in services.values():
            service.close()
        raise
    return services
