"""The device runtime: load a verified model directory, then answer ``predict`` calls."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from sdk import tracing
from sdk.backends import Backend
from sdk.confidence import confidences
from sdk.edge.cache import ResultCache, input_key
from sdk.edge.config import EdgeConfig
from sdk.edge.fallback import (
    AnswerCloud,
    AnswerLocal,
    AskCloud,
    Call,
    CloudFailed,
    CloudReplied,
    Degrade,
    Fail,
    LocalFailed,
    LocalRan,
    Merge,
    RunLocal,
    decide,
    resolve_threshold,
)
from sdk.edge.prediction import BatchPrediction, Prediction, Source
from sdk.errors import BackendError, CloudError, FedgeError, InputOutOfRange, InvalidInput, ModelNotFound
from sdk.loading import LoadedModel, load_model
from sdk.manifest import Artifact, Manifest
from sdk.wire import Message

if TYPE_CHECKING:  # the MQTT client is imported only by those who use the cloud
    from sdk.edge.cloud_client import CloudClient
    from sdk.edge.telemetry import Telemetry

__all__ = ["EdgeRuntime", "LoadedModel", "load_model"]

log = logging.getLogger("fedge.edge")


class EdgeRuntime:
    """Runs a model directory's best artifact on this device, with the cloud as its fallback.

    ```python
    with EdgeRuntime.from_model_dir("models/digits") as rt:
        result = rt.predict(image)          # one (1, 8, 8) sample -> Prediction
        print(result.label, result.confidence, result.source)
    ```

    Give it a started :class:`~sdk.edge.cloud_client.CloudClient` (``cloud=``) and the
    fallback policy of ``config.fallback`` applies; the runtime owns the client and closes it.
    Give it a :class:`~sdk.edge.telemetry.Telemetry` (``telemetry=``) and every call of the local
    model is counted there, for the device's status reports. What a call does is decided by
    :func:`sdk.edge.fallback.decide`; the runtime carries the decisions out.

    Inputs are checked against the manifest's spec, preprocessed when ``config.preprocess`` is on,
    and screened against its training range by ``config.range_policy`` (see :class:`EdgeConfig`);
    ``out_of_range_rows`` counts the rows found far outside it.
    """

    def __init__(
        self,
        model: LoadedModel | None,
        config: EdgeConfig | None = None,
        *,
        cloud: CloudClient | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Serve ``model`` (None: no local model yet, the cloud answers until one is swapped in).

        ``clock`` (seconds) times each call against ``deadline_ms`` and for its ``latency_ms``.
        """
        self._config = config or EdgeConfig()
        self._model = model
        self._cloud = cloud
        self.telemetry = telemetry
        self._clock = clock
        self._cache: ResultCache[_Answer] | None = (
            ResultCache(self._config.cache_size) if self._config.cache_size else None
        )
        self._local_s = 0.0  # a running estimate of one local call, to keep room for it before the deadline
        self.local_calls = 0
        self.local_errors = 0
        self.local_error_run = 0  # local calls failed in a row, since the last success or swap
        self.out_of_range_rows = 0
        self._closed = False
        self._lock = threading.Lock()
        if model is None and cloud is None:
            raise ValueError("a runtime needs a model, a cloud client, or both")
        if model is None and not self._config.model_name:
            raise ValueError("without a local model, config.model_name says which cloud model to ask")
        if model is not None:
            self._config.check_manifest(model.manifest)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike[str],
        config: EdgeConfig | None = None,
        *,
        cloud: CloudClient | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> EdgeRuntime:
        """Verify and load ``model_dir``; see :func:`load_model` for what it raises."""
        config = config or EdgeConfig()
        return cls(load_model(model_dir, config), config, cloud=cloud, telemetry=telemetry, clock=clock)

    @property
    def config(self) -> EdgeConfig:
        """The settings this runtime was made with."""
        return self._config

    @property
    def model(self) -> LoadedModel | None:
        """The local model being served, if any."""
        return self._model

    @property
    def manifest(self) -> Manifest:
        """Manifest of the local model being served."""
        return self._require_model().manifest

    @property
    def artifact(self) -> Artifact:
        """The artifact being served."""
        return self._require_model().artifact

    @property
    def backend(self) -> Backend:
        """The engine running the artifact."""
        return self._require_model().backend

    @property
    def cloud(self) -> CloudClient | None:
        """The cloud client, when there is one."""
        return self._cloud

    @property
    def cache(self) -> ResultCache | None:
        """The result cache, when ``cache_size`` turned it on."""
        return self._cache

    @property
    def num_threads(self) -> int:
        """Threads the local engine runs a call on, as the engine reports them (0: the engine's default)."""
        model = self._model
        return model.backend.num_threads if model is not None else self._config.num_threads

    @property
    def confidence_threshold(self) -> float:
        """The threshold below which ``edge-first`` asks the cloud."""
        model = self._model
        return resolve_threshold(
            self._config.confidence_threshold, model and model.manifest.threshold_for(model.artifact.kind)
        )

    def predict(self, x: object) -> Prediction | BatchPrediction:
        """Answer one sample (a :class:`Prediction`) or a batch (a :class:`BatchPrediction`).

        Each answer says its source: ``edge``, ``cloud``, or ``edge-degraded`` when the
        cloud was wanted but could not answer within ``deadline_ms``. Only ``cloud-only``
        (or a runtime without a local model) raises when the cloud is down.

        Raises:
            InvalidInput: wrong shape, a dtype that cannot be cast, NaN under ``nan_policy="reject"``, or
                rows far outside the training range under ``range_policy="reject"`` (``InputOutOfRange``).
            ModelNotFound: ``preprocess`` is on and no local model says how.
            BackendError: the engine failed and no cloud could stand in.
            CloudError: under ``cloud-only`` or without a local model, the cloud could not answer.
        """
        if tracing.active():
            return self._predict_traced(x)
        return self._predict(x)

    def _predict_traced(self, x: object) -> Prediction | BatchPrediction:
        """``predict`` inside a span, current while it runs (a cloud request carries it), that says its answer."""
        model = self._model
        with tracing.predict_span(self._config.model_name or (model.manifest.name if model else "")) as span:
            result = self._predict(x)
            single = isinstance(result, Prediction)
            tracing.record_prediction(
                span,
                sources=(result.source,) if single else result.sources,
                latency_ms=result.latency_ms,
                model_version=result.model_version,
                rows=1 if single else len(result.labels),
            )
        return result

    def _predict(self, x: object) -> Prediction | BatchPrediction:
        start = self._clock()
        model = self._model  # one read: a concurrent model swap never mixes two models in one call
        if self._closed:
            raise RuntimeError("the runtime is closed")
        if model is None:
            return self._predict_remote(np.asarray(x), start)  # not counted: telemetry is about local models
        telemetry = self.telemetry
        if telemetry is None:
            return self._predict_local(model, x, start)[0]
        try:
            result, answer = self._predict_local(model, x, start)
        except InvalidInput:
            raise  # the caller's input, not the model, failed
        except FedgeError:
            telemetry.record(model.manifest.version, (self._clock() - start) * 1e3, error=True)
            raise
        _count(telemetry, model.manifest.version, result, answer)
        return result

    def _predict_local(
        self, model: LoadedModel, x: object, start: float
    ) -> tuple[Prediction | BatchPrediction, _Answer]:
        batch, single = model.inputs.prepare(x)
        batch, outside = self._screen(model.manifest, batch)
        key = None
        if self._cache is not None:
            key = input_key(batch, model.manifest.version)
            cached = self._cache.get(key)
            if cached is not None:
                return self._result(cached, model.manifest, single, start), cached._replace(engine_failed=False)
        answer = self._carry_out(model, batch, start, outside)
        if key is not None and (answer.sources is None or "edge-degraded" not in answer.sources):
            self._cache.put(key, answer)  # a degraded answer is not kept: the cloud may be back next time
        return self._result(answer, model.manifest, single, start), answer

    def _screen(self, manifest: Manifest, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``batch`` preprocessed when asked, and its rows far outside the training range the cloud should answer."""
        config = self._config
        if config.preprocess and manifest.preprocessing is not None:
            batch = manifest.preprocessing.apply(batch)
        span = manifest.input_range
        if span is None or config.range_policy == "allow":
            return batch, None
        outside = span.outside(batch, config.range_margin)
        if outside is None:
            return batch, None
        rows = int(outside.sum())
        self.out_of_range_rows += rows  # approximate under threads, as local_calls
        if config.range_policy == "reject":
            hint = "" if config.preprocess else "; raw inputs? scale them, or set edge.preprocess = true"
            raise InputOutOfRange(
                f"{rows} of {len(batch)} rows hold values far outside the training range "
                f"[{span.min:g}, {span.max:g}] (seen {float(batch.min()):g}..{float(batch.max()):g}){hint}"
            )
        return batch, outside

    def _predict_remote(self, x: np.ndarray, start: float) -> Prediction | BatchPrediction:
        if self._config.preprocess:  # the cloud's model takes preprocessed inputs, and only a manifest says how
            raise ModelNotFound("preprocess = true, and no local model is loaded to say how to preprocess inputs")
        out = self._carry_out(None, x, start)
        single = out.outputs.ndim == 1  # nothing local says what one sample is: the reply's rank does
        batch_out = out.outputs[None] if single else out.outputs
        answer = _Answer(batch_out, ("cloud",) * len(batch_out), out.cloud_version)
        return self._result(answer, None, single, start)

    def _carry_out(
        self, model: LoadedModel | None, batch: np.ndarray, start: float, outside: np.ndarray | None = None
    ) -> _Answer:
        """Carry out the fallback policy's actions for one call, until it answers or fails."""
        cloud = self._cloud
        call = Call(
            mode=self._config.fallback if cloud is not None else "edge-only",
            has_local=model is not None,
            rows=len(batch) if model is not None else None,
            threshold=resolve_threshold(
                self._config.confidence_threshold, model and model.manifest.threshold_for(model.artifact.kind)
            ),
            deadline_s=self._config.deadline_ms / 1000.0,
            local_s=self._local_s,
            breaker_open=cloud is not None and cloud.breaker.state == "open",
            outside=outside,
        )
        outputs = probs = reply = None
        while True:
            action = decide(call, self._clock() - start)
            if isinstance(action, RunLocal):
                assert model is not None
                try:
                    outputs = self._run_local(model, batch)
                except BackendError as exc:
                    call.local = LocalFailed(exc)
                    continue
                probs = confidences(outputs, model.manifest.output_kind, model.artifact.temperature)
                call.local = LocalRan(outputs.shape, probs.max(axis=1) if action.score else None)
            elif isinstance(action, AskCloud):
                assert cloud is not None
                if isinstance(call.local, LocalFailed):
                    log.warning("local engine failed (%s); asking the cloud", call.local.error)
                name = self._config.model_name or (model.manifest.name if model is not None else "")
                try:
                    reply = cloud.infer(
                        name, batch if action.rows is None else batch[action.rows], timeout_s=action.budget_s
                    )
                except CloudError as exc:
                    call.cloud = CloudFailed(action.rows, exc)
                else:
                    call.cloud = CloudReplied(action.rows, reply.tensor.shape)
            elif isinstance(action, Fail):
                if action.cause is None:
                    raise action.error
                raise action.error from action.cause
            else:
                return _answer(action, call, len(batch), outputs, probs, reply)

    def _run_local(self, model: LoadedModel, batch: np.ndarray) -> np.ndarray:
        t0 = self._clock()
        self.local_calls += 1  # approximate under threads: health statistics, not accounting
        try:
            outputs = model.backend.run(batch)
        except BackendError:
            self.local_errors += 1
            self.local_error_run += 1
            raise
        self.local_error_run = 0
        self._local_s = 0.8 * self._local_s + 0.2 * (self._clock() - t0)
        return outputs

    def _result(
        self, answer: _Answer, manifest: Manifest | None, single: bool, start: float
    ) -> Prediction | BatchPrediction:
        return _result(answer, manifest, single, (self._clock() - start) * 1e3)

    def _require_model(self) -> LoadedModel:
        model = self._model
        if model is None:
            raise ModelNotFound("no local model is loaded")
        return model

    def swap(self, model: LoadedModel) -> Manifest | None:
        """Serve ``model`` from the next call on and let go of the previous one; return its manifest.

        Raises ``ManifestError`` (and keeps serving the previous model) when ``config`` cannot serve it.

        Calls already running finish on the model they started with: each call reads the
        model reference once. The previous engine is not closed here, because a call may be
        between reading the reference and running it; it is freed when the last such call
        returns and drops its reference.
        """
        with self._lock:
            if self._closed:
                model.close()
                raise RuntimeError("the runtime is closed")
            self._config.check_manifest(model.manifest)
            old, self._model = self._model, model
            self.local_error_run = 0
        if self._cache is not None:
            self._cache.clear()
        if old is None:
            log.info("now serving %s v%s", model.manifest.name, model.manifest.version)
            return None
        log.info("now serving %s v%s (was v%s)", model.manifest.name, model.manifest.version, old.manifest.version)
        return old.manifest

    def close(self) -> None:
        """Release the engine and the cloud client; later ``predict`` calls raise ``RuntimeError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._model is not None:
            self._model.close()
        if self._cloud is not None:
            self._cloud.close()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Answer(NamedTuple):
    outputs: np.ndarray
    sources: tuple[Source, ...] | None  # None: every row from the local model
    cloud_version: int | None
    probabilities: np.ndarray | None = None  # when already computed for the fallback decision
    local_confidence: np.ndarray | None = None  # the local model's, for rows the cloud answered instead
    engine_failed: bool = False  # the local engine failed and the cloud stood in


def _answer(
    action: AnswerLocal | AnswerCloud | Merge | Degrade,
    call: Call,
    rows: int,
    outputs: np.ndarray | None,
    probs: np.ndarray | None,
    reply: Message | None,
) -> _Answer:
    """The answer a final action names, from the local outputs and the cloud's reply."""
    if isinstance(action, AnswerCloud):
        assert reply is not None
        failed = isinstance(call.local, LocalFailed)
        return _Answer(reply.tensor, ("cloud",) * rows, reply.model_version, engine_failed=failed)
    assert outputs is not None
    if isinstance(action, AnswerLocal):
        return _Answer(outputs, None, None, probs)
    if isinstance(action, Degrade):
        log.debug("cloud fallback failed: %s", action.cause)
        if action.rows is None:
            return _Answer(outputs, ("edge-degraded",) * rows, None, probs)
        sources = np.full(rows, "edge", dtype=object)
        sources[action.rows] = "edge-degraded"
        return _Answer(outputs, tuple(sources), None, probs)
    assert reply is not None
    assert isinstance(call.local, LocalRan)
    merged = outputs.copy()
    merged[action.rows] = reply.tensor
    sources = np.full(rows, "edge", dtype=object)
    sources[action.rows] = "cloud"
    return _Answer(merged, tuple(sources), None, local_confidence=call.local.confidence)


def _count(telemetry: Telemetry, version: int, result: Prediction | BatchPrediction, answer: _Answer) -> None:
    """Count one answered call: fallbacks, and the local model's confidence on the rows it ran."""
    latency_ms = result.latency_ms
    local, failed = answer.local_confidence, answer.engine_failed
    if isinstance(result, Prediction):
        fallback = result.source != "edge"
        if local is not None:
            conf, rows = float(local[0]), 1
        elif result.source != "cloud":
            conf, rows = result.confidence, 1
        else:
            conf, rows = 0.0, 0
        telemetry.record(
            version, latency_ms, fallbacks=fallback, confidence_sum=conf, confident_rows=rows, error=failed
        )
        return
    n = len(result.labels)
    sources = answer.sources  # None: every row from the local model
    fallbacks = 0 if sources is None else n - sources.count("edge")
    if local is not None:
        conf, rows = float(local.sum()), n
    elif sources is None:
        conf, rows = float(result.confidences.sum()), n
    else:
        ran = [i for i, s in enumerate(sources) if s != "cloud"]
        conf, rows = float(result.confidences[ran].sum()), len(ran)
    telemetry.record(
        version, latency_ms, rows=n, fallbacks=fallbacks, confidence_sum=conf, confident_rows=rows, error=failed
    )


def _result(
    answer: _Answer, manifest: Manifest | None, single: bool, latency_ms: float
) -> Prediction | BatchPrediction:
    outputs, sources, cloud_version, probs = answer[:4]
    if probs is None:
        probs = confidences(outputs, manifest.output_kind if manifest else "logits")
    labels = probs.argmax(axis=1)
    version = manifest.version if manifest else cloud_version
    if sources is not None and cloud_version is not None and all(s == "cloud" for s in sources):
        version = cloud_version
    if single:
        label = int(labels[0])
        return Prediction(
            outputs=outputs[0],
            label=label,
            confidence=float(probs[0, label]),
            source=sources[0] if sources else "edge",
            model_version=version,
            latency_ms=latency_ms,
        )
    return BatchPrediction(
        outputs=outputs,
        labels=labels,
        confidences=probs[np.arange(len(labels)), labels],
        sources=sources or ("edge",) * len(labels),
        model_version=version,
        latency_ms=latency_ms,
    )
