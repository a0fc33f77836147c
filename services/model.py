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
import functools
import logging
import time
from typing import Any, ClassVar

import numpy as np

from services import metrics
from services.batcher import Batcher
from services.bundle import Bundle, open_bundle
from services.errors import RoostError, Unavailable, as_roost_error
from services.runtime import load_runtime
from services.settings import Settings, settings_for

log = logging.getLogger("roost.model")


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
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(self.name)  # read twice per request

    # -- load --------------------------------------------------------------------------------
    def load(self) -> "RoostModel":
        s = self.settings
        self.bundle = open_bundle(s.bundle_path())
        if self.bundle.name != self.name or self.bundle.spec.kind != self.spec_kind:
            raise SystemExit(
                f"{self.bundle.path} holds model '{self.bundle.name}' ({self.bundle.spec.kind}), "
                f"not '{self.name}' ({self.spec_kind})"
            )
        self.spec = self.bundle.spec
        self.attach(load_runtime(self.bundle, s.runtime, s.device, s.ort_threads))
        self._in_flight_gauge.set(0)  # exported from the start: autoscalers read it
        metrics.MODEL_INFO.labels(
            self.name, self.bundle.version, self.runtime.name, self.bundle.manifest.arch, self.runtime.device
        ).set(1)
        log.info(
            "serving %s with %s on %s (%d threads; batches of up to %d rows, queue %d rows, deadline %g s)",
            self.bundle, self.runtime.name, self.runtime.device, s.ort_threads, s.max_batch_size,
            s.max_queue_rows, s.timeout_s,
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
                rows = await self._stage("preprocess", self.preprocess_in_thread, self.preprocess, request)
            outputs = await self.batcher.submit(rows, deadline)
            result = await self._stage("postprocess", self.postprocess_in_thread, self.postprocess, outputs, request)
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


def error_response(exc: RoostError):
    from starlette.responses import JSONResponse

    return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers())


def _answer_errors(func):
    """Typed routes: a RoostError becomes its JSON answer (the one place this happens for HTTP)."""

    from bentoml import Context

    @functools.wraps(func)
    async def api(self, *args, **kwargs):
        try:
            return await func(self, *args, **kwargs)
        except RoostError as exc:
            for value in kwargs.values():  # with a Context parameter BentoML stamps ctx.response on the answer
                if isinstance(value, Context):
                    value.response.status_code = exc.status
                    value.response.metadata.update(exc.headers())
            return error_response(exc)

    return api


def roost_service(cls):
    """``bentoml.service`` for a model's :class:`ModelService`, with Roost's conventions: worker
    count and deadline from settings, errors answered once, 422 for invalid fields, pickle bodies
    refused, and the Open Inference Protocol (REST under /v2, gRPC on ROOST_GRPC_PORT)."""
    import bentoml

    from services.demo import with_demo
    from services.listeners import private_arbiter_sockets
    from services.oip import with_oip
    from services.validation import RefusePickle, ValidationErrorsAs422

    private_arbiter_sockets()
    settings = settings_for(cls.model_class.name)
    service = bentoml.service(workers=settings.workers, traffic={"timeout": settings.timeout_s + 5})(cls)
    for method in service.apis.values():
        method.func = _answer_errors(method.func)
        # BentoML derives a list output's media type from its JSON schema, generated anew for every
        # response (measured: 42 % of the worker's time per collab request). It never changes: fix it.
        method.output_spec.media_type = method.output_spec.mime_type()
    service.add_asgi_middleware(ValidationErrorsAs422)
    service.add_asgi_middleware(RefusePickle)
    return with_demo(with_oip(service))


class ModelService:
    """Base of each model's BentoML service: loads its RoostModel in the worker.

    A subclass sets ``model_class`` and writes its typed APIs, each a call of ``self.model``;
    ``__is_ready__`` makes /readyz reflect whether the model is loaded and not draining.
    """

    model_class: ClassVar[type[RoostModel]]

    def __init__(self) -> None:
        self.model = self.model_class().load()

    def __is_ready__(self) -> bool:
        return self.model.ready
