"""The shape every Roost model follows, and the two BentoML services built from it.

A lesson model is served by two BentoML services in one `bentoml serve`:

- ``<Name>Inference`` (made by :func:`inference_service`): owns the runtime (onnxruntime, or the
  fastai pickle) and one adaptive-batching API, ``infer``, over preprocessed arrays. Every
  protocol reaches the network through it, so HTTP, OIP REST and OIP gRPC requests share batches,
  limits and metrics.
- ``<Name>`` (in services/<model>.py): the typed API. It holds a :class:`RoostModel` that follows
  KServe's Model: ``load`` -> ``preprocess`` -> ``predict`` (awaits the batched ``infer``) ->
  ``postprocess``, each stage timed into ``roost_stage_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, Awaitable, Callable, ClassVar

import numpy as np

from services import metrics
from services.bundle import Bundle, open_bundle
from services.drain import InFlight, defer_sigterm
from services.preprocessing import InputError
from services.runtime import load_runtime
from services.settings import Settings, settings_for

log = logging.getLogger("roost.model")

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]


class RoostError(Exception):
    """An answer other than success, with the HTTP status it maps to."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.field = field

    @property
    def outcome(self) -> str:
        if self.status in (429, 503, 504):
            return "rejected"
        return "client_error" if self.status < 500 else "error"

    def to_json(self) -> dict:
        body: dict[str, Any] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class Preprocessed:
    """Rows already in model-input form (e.g. an OIP FP32 tensor), for :meth:`RoostModel.__call__`.

    The call skips ``preprocess`` and hands ``request`` (default: one ``None`` per row) to
    ``postprocess``; limits, batching and metrics are the same as for any other request.
    """

    __slots__ = ("rows", "request")

    def __init__(self, rows: np.ndarray, request: Any = None):
        self.rows = rows
        self.request = [None] * len(rows) if request is None else request


class RoostModel:
    """Base class: subclasses set ``name``/``spec_kind`` and write preprocess/postprocess."""

    name: ClassVar[str]
    spec_kind: ClassVar[str]

    def __init__(self, settings: Settings | None = None, infer: Infer | None = None):
        self.settings = settings or settings_for(self.name)
        self._infer = infer
        self.bundle: Bundle | None = None
        self.in_flight = 0

    # -- load --------------------------------------------------------------------------------
    def load(self) -> "RoostModel":
        self.bundle = open_bundle(self.settings.bundle_path())
        if self.bundle.name != self.name or self.bundle.spec.kind != self.spec_kind:
            raise SystemExit(
                f"{self.bundle.path} holds model '{self.bundle.name}' ({self.bundle.spec.kind}), "
                f"not '{self.name}' ({self.spec_kind})"
            )
        self.spec = self.bundle.spec
        metrics.IN_FLIGHT.labels(self.name).set(0)  # exported from the start: autoscalers read it
        log.info("loaded %s", self.bundle)
        return self

    @property
    def ready(self) -> bool:
        return self.bundle is not None

    @property
    def version(self) -> str:
        return self.bundle.version if self.bundle else ""

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

    # -- predict: the batched network, shared by every protocol --------------------------------
    async def predict(self, rows: np.ndarray) -> np.ndarray:
        if self._infer is None:
            raise RuntimeError("no inference service attached")
        try:
            return await asyncio.wait_for(self._infer(rows), timeout=self.settings.timeout_s)
        except asyncio.TimeoutError:
            metrics.REJECTED.labels(self.name, "timeout").inc()
            raise RoostError(504, f"inference took longer than {self.settings.timeout_s:g} s") from None
        except RoostError:
            raise
        except Exception as exc:  # errors from the inference service, mapped to what a client can act on
            status = getattr(getattr(exc, "error_code", None), "value", None) or getattr(exc, "status_code", None)
            if status in (429, 503):
                metrics.REJECTED.labels(self.name, "overloaded").inc()
                raise RoostError(503, "the model is overloaded; retry shortly", retry_after=1) from None
            if isinstance(exc, OSError):  # e.g. the inference worker is restarting or shutting down
                metrics.REJECTED.labels(self.name, "unavailable").inc()
                log.warning("inference service unreachable: %s", exc)
                raise RoostError(503, "the model is unavailable (restarting or shutting down); retry shortly", retry_after=1) from None
            log.exception("inference failed")
            raise RoostError(500, "inference failed; see the server log") from None

    async def __call__(self, request: Any, protocol: str = "http") -> Any:
        """The whole request path, counted once: limits, stages, metrics, errors."""
        if self.in_flight >= self.settings.max_concurrency:
            metrics.REJECTED.labels(self.name, "queue_full").inc()
            metrics.REQUESTS.labels(self.name, protocol, "rejected").inc()
            raise RoostError(429, f"more than {self.settings.max_concurrency} requests in flight; retry shortly", retry_after=1)
        self.in_flight += 1
        metrics.IN_FLIGHT.labels(self.name).inc()
        outcome = "error"
        try:
            with metrics.timed(self.name, "preprocess"):
                if isinstance(request, Preprocessed):
                    rows, request = request.rows, request.request
                else:
                    try:
                        rows = await asyncio.to_thread(self.preprocess, request)
                    except InputError as exc:
                        raise RoostError(exc.status, str(exc), field=exc.field) from None
            outputs = await self.predict(rows)
            with metrics.timed(self.name, "postprocess"):
                result = self.postprocess(outputs, request)
            outcome = "ok"
            return result
        except RoostError as exc:
            outcome = exc.outcome
            raise
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.labels(self.name).dec()
            metrics.REQUESTS.labels(self.name, protocol, outcome).inc()


def roost_service(cls=None, **config):
    """``bentoml.service`` for a model's front service, with Roost's HTTP conventions (422 for
    invalid fields). One worker: it owns the in-process gRPC server and the in-flight count."""
    import bentoml

    from services.validation import ValidationErrorsAs422

    def decorate(inner):
        service = bentoml.service(workers=1, **config)(inner)
        service.add_asgi_middleware(ValidationErrorsAs422)
        return service

    return decorate(cls) if cls is not None else decorate


def keep_one_session(dependency) -> None:
    """BentoML 1.4's service client replaces its aiohttp session every 100 requests or 300 s and
    closes the old one at once, cutting off the requests still in flight on it ("Server
    disconnected": about 1 request in 12 failed under sustained load). Keep one session per process."""
    manager = getattr(getattr(dependency, "to_async", None), "_session_manager", None)
    if manager is None:
        log.warning("cannot reach BentoML's client session manager; requests may be cut off every 100 calls")
        return
    manager.max_requests = sys.maxsize
    manager.max_age = float("inf")


class ModelService:
    """Base of each model's front BentoML service: its RoostModel, wired to ``<Name>Inference``.

    A subclass sets ``model_class`` and ``inference = bentoml.depends(<Name>Inference)`` and writes
    its typed APIs; ``__is_ready__`` makes /readyz reflect whether the model is loaded.
    """

    model_class: ClassVar[type[RoostModel]]
    inference: Any

    def __init__(self) -> None:
        self.model = self.model_class(infer=self._infer).load()
        keep_one_session(self.inference)

    async def _infer(self, rows: np.ndarray) -> np.ndarray:
        return await self.inference.to_async.infer(rows)

    def __is_ready__(self) -> bool:
        return self.model.ready


def error_response(exc: RoostError):
    from starlette.responses import JSONResponse

    return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers())


# --- the inference service ----------------------------------------------------------------------


def model_feeds(spec, input_names: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """One batched array -> the network's named inputs (tabular packs x_cat | x_cont in one array)."""
    if spec.kind == "tabular":
        n_cat = len(spec.cat_names)
        return {
            input_names[0]: np.ascontiguousarray(batch[:, :n_cat]).astype(np.int64),
            input_names[1]: np.ascontiguousarray(batch[:, n_cat:]).astype(np.float32),
        }
    return {input_names[0]: batch}


def inference_service(model: str, *, max_batch_size: int = 32, max_latency_ms: int = 1000):
    """Build ``<Model>Inference``: the runtime behind one batchable ``infer`` API."""
    import bentoml

    # Front -> inference over loopback TCP, not a Unix socket: on SIGTERM the arbiter deletes the
    # socket file at once, and the front could no longer reach a still-draining inference worker.
    os.environ.setdefault("BENTOML_NO_UDS", "1")
    settings = settings_for(model, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms)

    if settings.max_batch_size > 1:
        batching_api = bentoml.api(batchable=True, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms)
    else:  # ROOST_MAX_BATCH_SIZE=1: adaptive batching off, each request's rows run on their own
        batching_api = bentoml.api

    class Inference:
        def __init__(self) -> None:
            self.bundle = open_bundle(settings.bundle_path())
            self.runtime = load_runtime(self.bundle, settings.runtime, settings.device, settings.ort_threads)
            self.spec = self.bundle.spec
            defer_sigterm(f"{model.capitalize()}Inference", deadline_s=settings.timeout_s + 15)
            metrics.MODEL_INFO.labels(
                model, self.bundle.version, self.runtime.name, self.bundle.manifest.arch, self.runtime.device
            ).set(1)

        def __is_ready__(self) -> bool:
            return self.runtime is not None

        @batching_api
        def infer(self, batch: np.ndarray) -> np.ndarray:
            metrics.BATCH_SIZE.labels(model).observe(len(batch))
            start = time.perf_counter()
            try:
                return self.runtime.run(model_feeds(self.spec, self.runtime.input_names, batch))[0]
            finally:
                metrics.STAGE_SECONDS.labels(model, "infer").observe(time.perf_counter() - start)

    Inference.__name__ = Inference.__qualname__ = f"{model.capitalize()}Inference"
    service = bentoml.service(
        traffic={"timeout": settings.timeout_s, "max_concurrency": settings.max_concurrency},
        workers=1,
    )(Inference)
    service.add_asgi_middleware(InFlight)
    return service
