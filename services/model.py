"""The shape every Roost model follows, and the one BentoML service built around it.

A lesson model is one BentoML service, one process per worker (``ROOST_WORKERS``). Its
:class:`RoostModel` follows KServe's Model: ``load`` (bundle -> runtime + batcher) ->
``preprocess`` -> ``predict`` (rows through the in-process :class:`Batcher`) -> ``postprocess``,
each stage timed into ``roost_stage_seconds``. The typed routes, OIP REST and OIP gRPC all call
the same instance, so they share its batcher, limits and metrics; an image's tensor is made once
from the request bytes and never serialized again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import numpy as np

from services import metrics
from services.batcher import Batcher
from services.bundle import Bundle, open_bundle
from services.errors import Overloaded, Unavailable, as_roost_error
from services.runtime import load_runtime
from services.settings import Settings, settings_for
from services.startup import fatal, is_serve_process, preflight

log = logging.getLogger("roost.model")

THREAD_ROWS = 64  # a request with more rows runs its stages in a thread, whatever the model
_served: "RoostModel | None" = None  # the model this worker process serves (one per process)


def served_model() -> "RoostModel | None":
    """The model this process serves, once loaded (for the HTTP guard and the gRPC server)."""
    return _served


class Preprocessed:
    """Rows already in model-input form (e.g. an OIP FP32 tensor), for :meth:`RoostModel.__call__`.

    The call skips ``preprocess`` and hands ``request`` (default: one ``None`` per row) to
    ``postprocess``; limits, batching and metrics are the same as for any other request.
    """

    __slots__ = ("rows", "request")

    def __init__(self, rows: np.ndarray, request: Any = None):
        self.rows = rows
        self.request = [None] * len(rows) if request is None else request


def model_feeds(spec, input_names: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """One batched array -> the network's named inputs (tabular packs x_cat | x_cont in one array)."""
    if spec.kind == "tabular":
        n_cat = len(spec.cat_names)
        return {
            input_names[0]: np.ascontiguousarray(batch[:, :n_cat]).astype(np.int64),
            input_names[1]: np.ascontiguousarray(batch[:, n_cat:]).astype(np.float32),
        }
    return {input_names[0]: batch}


class RoostModel:
    """Base class: subclasses set ``name``/``spec_kind`` and write preprocess/postprocess."""

    name: ClassVar[str]
    spec_kind: ClassVar[str]
    # Image decoding and mask encoding take milliseconds: off the event loop. A table row or a
    # softmax over two classes takes microseconds: a thread hop would cost more than the work.
    preprocess_in_thread: ClassVar[bool] = True
    infer_in_thread: ClassVar[bool] = True
    postprocess_in_thread: ClassVar[bool] = True

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or settings_for(self.name)
        self.bundle: Bundle | None = None
        self.batcher: Batcher | None = None
        self.draining = False
        self.in_flight = 0
        self.admitted = 0  # requests taken in by admission (HTTP guard, gRPC), not yet answered
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(self.name)  # read twice per request

    # -- load --------------------------------------------------------------------------------
    def load(self) -> "RoostModel":
        from services.signing import check_signature

        s = self.settings
        roost_log = logging.getLogger("roost")
        if roost_log.level == logging.NOTSET:  # BentoML leaves other loggers at WARNING: say what is served
            roost_log.setLevel(logging.INFO)
        path = s.bundle_path()
        self.bundle = open_bundle(path, manifest_bytes=check_signature(path, s))  # signature first
        if self.bundle.name != self.name or self.bundle.spec.kind != self.spec_kind:
            raise SystemExit(
                f"{self.bundle.path} holds model '{self.bundle.name}' ({self.bundle.spec.kind}), "
                f"not '{self.name}' ({self.spec_kind})"
            )
        self.spec = self.bundle.spec
        self.attach(load_runtime(self.bundle, s.runtime, s.device, s.ort_threads, s.precision))
        self._in_flight_gauge.set(0)  # exported from the start: autoscalers read it
        metrics.MODEL_INFO.labels(
            self.name, self.bundle.version, self.runtime.name, self.bundle.manifest.arch, self.runtime.device,
            self.precision, self.model_file,
        ).set(1)
        log.info(
            "serving %s: %s (%s, ROOST_PRECISION=%s) with %s on %s (%d threads; batches of up to %d rows, queue %d rows, deadline %g s)",
            self.bundle, self.model_file, self.precision, s.precision, self.runtime.name, self.runtime.device, s.ort_threads,
            s.max_batch_size, s.max_queue_rows, s.timeout_s,
        )
        return self

    def attach(self, runtime) -> "RoostModel":
        """Serve through ``runtime`` (``run(feeds) -> [outputs]``, ``input_names``), behind a new batcher."""
        s = self.settings
        self.runtime = runtime
        self.batcher = Batcher(
            self.run_batch,
            model=self.name,
            max_batch_size=s.max_batch_size,
            max_latency_ms=s.max_latency_ms,
            max_queue_rows=s.max_queue_rows,
            max_queue_wait_ms=s.max_queue_wait_ms,
            # A GPU runs one batch while the next is copied in; a CPU session already uses every core.
            runners=2 if getattr(runtime, "device", "cpu") == "cuda" else 1,
            in_thread=self.infer_in_thread,
        )
        return self

    @property
    def ready(self) -> bool:
        return self.bundle is not None and not self.draining

    @property
    def version(self) -> str:
        return self.bundle.version if self.bundle else ""

    @property
    def model_file(self) -> str:
        """The bundle file the runtime executes: model.onnx, model.int8.onnx or learner.pkl."""
        return getattr(self.runtime, "file", "")

    @property
    def precision(self) -> str:
        return getattr(self.runtime, "precision", "fp32")

    def info(self) -> dict:
        """What this worker serves, for GET /model and the OIP model metadata's parameters."""
        manifest = self.bundle.manifest
        q = manifest.quantization
        return {
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime.name,
            "device": self.runtime.device,
            "precision": self.precision,
            "model_file": self.model_file,
            "requested_precision": self.settings.precision,
            "arch": manifest.arch,
            "image_input": manifest.image_input,
            "int8": None if q is None else {"status": q.status, "file": q.file, "reason": q.reason, "agreement": q.agreement},
        }

    def run_batch(self, rows: np.ndarray) -> np.ndarray:
        """One batch through the runtime (called in a batcher thread)."""
        return self.runtime.run(model_feeds(self.spec, self.runtime.input_names, rows))[0]

    # -- the stages a subclass writes ----------------------------------------------------------
    def preprocess(self, request: Any) -> np.ndarray:
        """One request -> rows of model input (first axis is the batch axis)."""
        raise NotImplementedError

    def postprocess(self, outputs: np.ndarray, request: Any) -> Any:
        """Model output rows for this request -> the typed response."""
        raise NotImplementedError

    def classify(self, logits: np.ndarray, vocab: list[str]) -> list[tuple[str, float, dict[str, float]]]:
        """Logit rows -> (label, its probability, every class's probability), counted by label."""
        from services.preprocessing import softmax

        results = []
        for probs in softmax(np.asarray(logits, dtype=np.float64), axis=1):
            best = int(probs.argmax())
            metrics.PREDICTIONS.labels(self.name, vocab[best]).inc()
            results.append((vocab[best], float(probs[best]), {label: float(p) for label, p in zip(vocab, probs)}))
        return results

    # -- admission: before a request's body is read or parsed ---------------------------------
    def admit(self, protocol: str) -> None:
        """Take a request in, or refuse it at once: 503 while not ready or draining, 429 when the
        worker already holds ``max_in_flight`` requests. Pair with :meth:`release`."""
        if not self.ready:
            reason, error = "not_ready", Unavailable(
                "the server is shutting down; retry on another replica" if self.draining else "the model is loading; retry shortly"
            )
        elif self.admitted >= self.settings.max_in_flight:
            reason, error = "in_flight_full", Overloaded(
                f"the server holds {self.admitted} requests, its limit; retry shortly"
            )
        else:
            self.admitted += 1
            return
        metrics.REJECTED.labels(self.name, reason).inc()
        metrics.REQUESTS.labels(self.name, protocol, error.outcome).inc()
        raise error

    def release(self) -> None:
        self.admitted -= 1

    # -- the request path, shared by every protocol -----------------------------------------------
    async def _stage(self, stage: str, in_thread: bool, func, *args):
        with metrics.timed(self.name, stage):
            if in_thread:
                return await asyncio.to_thread(func, *args)
            return func(*args)

    async def __call__(self, request: Any, protocol: str = "http") -> Any:
        """The whole request path, counted once: deadline, stages, batcher, metrics."""
        deadline = time.monotonic() + self.settings.timeout_s
        outcome = "error"
        self.in_flight += 1
        self._in_flight_gauge.inc()
        try:
            if not self.ready:
                metrics.REJECTED.labels(self.name, "not_ready").inc()
                raise Unavailable("the server is shutting down; retry on another replica")
            if isinstance(request, Preprocessed):
                rows, request = request.rows, request.request
            else:
                # Many table rows take milliseconds too: then off the event loop that answers health checks.
                many = len(request) > THREAD_ROWS if hasattr(request, "__len__") else False
                rows = await self._stage("preprocess", self.preprocess_in_thread or many, self.preprocess, request)
            many = len(rows) > THREAD_ROWS
            outputs = await self.batcher.submit(rows, deadline)
            result = await self._stage("postprocess", self.postprocess_in_thread or many, self.postprocess, outputs, request)
            outcome = "ok"
            return result
        except Exception as exc:
            error = as_roost_error(exc)
            if error is not exc:
                log.exception("%s request failed", self.name)
            outcome = error.outcome
            raise error from None
        finally:
            self.in_flight -= 1
            self._in_flight_gauge.dec()
            metrics.REQUESTS.labels(self.name, protocol, outcome).inc()

    async def drain(self, timeout: float) -> None:
        """Stop taking requests (readiness goes false) and answer everything accepted."""
        self.draining = True
        if self.batcher is not None:
            await self.batcher.close(timeout)


def serve_target_is(cls) -> bool:
    """Whether `bentoml serve` was asked for this class (``module:Class`` on its command line); True
    where it names none (a bentofile). services/imported.py builds its service from a lesson model's
    service class: importing that lesson module must not check the lesson model's bundle."""
    import re
    import sys

    targets = [a for a in sys.argv[1:] if re.fullmatch(r"[\w.]+:[\w.]+", a)]
    return not targets or f"{cls.__module__}:{cls.__name__}" in targets


def roost_service(cls):
    """``bentoml.service`` for a model's :class:`ModelService`, with Roost's conventions: worker
    count and deadline from settings, pickle bodies refused, admission and body limits before any
    body is read (services/guard.py), typed requests read and errors answered once
    (services/http_api.py), and the Open Inference Protocol (REST under /v2, gRPC on ROOST_GRPC_PORT)."""
    import bentoml

    from services.demo import with_demo
    from services.guard import install as install_request_guard
    from services.http_api import typed_routes
    from services.listeners import private_arbiter_sockets, serve_folder
    from services.oip import with_oip

    private_arbiter_sockets()
    if is_serve_process() and serve_target_is(cls):  # before any worker starts: a server that cannot serve exits now
        preflight(cls.model_class.name)
        serve_folder()
    settings = settings_for(cls.model_class.name)
    service = bentoml.service(workers=settings.workers, traffic={"timeout": settings.timeout_s + 5})(cls)
    typed_routes(service)
    install_request_guard()
    return with_demo(with_oip(service))


class ModelService:
    """Base of each model's BentoML service: loads its RoostModel in the worker.

    A subclass sets ``model_class`` and writes its typed APIs, each a call of ``self.model``;
    ``__is_ready__`` makes /readyz reflect whether the model is loaded and not draining.
    """

    model_class: ClassVar[type[RoostModel]]

    def __init__(self) -> None:
        global _served
        try:
            self.model = self.model_class().load()
        except BaseException as exc:  # noqa: BLE001 - whatever stops the load stops the server
            fatal(self.model_class.name, exc)
        _served = self.model

    def __is_ready__(self) -> bool:
        return self.model.ready
