"""Open Inference Protocol v2 (KServe v2 / Triton) over REST and gRPC for every Roost model.

``roost_service`` (services/model.py) applies :func:`with_oip` to each model's BentoML service.
It mounts the REST routes (``/v2/...``) into the same server, and, when ``ROOST_GRPC_PORT`` is set
(non-zero), runs ``inference.GRPCInferenceService`` on that port in the same worker (several
workers share the port), bound to ``ROOST_GRPC_HOST`` (default: the HTTP server's own address).
Both reach the instance's ``model`` (a RoostModel): the same object, so the same batcher, limits
and metrics as the typed API. See docs/oip.md for the tensors.

The lifespan also owns graceful shutdown for the worker: on SIGTERM the model stops taking
requests (readiness false, new requests 503) while everything accepted is answered; then gRPC
stops (accepted RPCs get ``ROOST_GRPC_GRACE_S``) and the batcher drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

log = logging.getLogger("roost.oip")

__all__ = ["with_oip", "find_model"]


def find_model(instance):
    """The RoostModel a service instance holds (``self.model``, else the only one)."""
    from services.model import RoostModel

    model = getattr(instance, "model", None)
    if isinstance(model, RoostModel):
        return model
    found = [v for v in vars(instance).values() if isinstance(v, RoostModel)]
    if len(found) != 1:
        raise TypeError(f"{type(instance).__name__} must hold one RoostModel as `self.model` to serve OIP")
    return found[0]


def stop_taking_requests_on_sigterm(model, loop) -> None:
    """Wrap the server's SIGTERM handler (uvicorn's). First the model drains: readiness goes false,
    new work is answered 503 + Retry-After and every answer carries ``Connection: close`` (so no
    keep-alive client sends into a connection about to close); ``ROOST_DRAIN_S`` later uvicorn stops
    listening and finishes what it accepted. A second SIGTERM stops at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)

    def stop(sig, frame):
        if callable(server_handler):
            server_handler(sig, frame)

    def drain_then_stop(sig, frame):
        if model.draining:
            return stop(sig, frame)
        log.info("SIGTERM: %s drains for %g s, answering the %d in flight", model.name, model.settings.drain_s, model.in_flight)
        model.draining = True
        loop.call_soon_threadsafe(loop.call_later, model.settings.drain_s, stop, sig, frame)

    signal.signal(signal.SIGTERM, drain_then_stop)


def with_oip(service):
    """Serve the Open Inference Protocol (REST under /v2, gRPC on ROOST_GRPC_PORT) for this service."""
    import bentoml

    from services.oip.rest import create_app

    state: dict = {"core": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # Entered by BentoML in the service's worker after the instance is created (and exited
        # before it is destroyed): the gRPC server shares this event loop and this instance.
        from services.oip.core import OipCore
        from services.oip.grpc_server import GrpcServer

        model = find_model(bentoml.get_current_service())
        core = OipCore(model)
        state["core"] = core
        settings = model.settings
        stop_taking_requests_on_sigterm(model, asyncio.get_running_loop())
        server = None
        if settings.grpc_port:
            server = GrpcServer(
                core,
                settings.grpc_port,
                host=settings.grpc_host,
                max_message_bytes=settings.max_body_bytes,
                reuse_port=settings.workers > 1,
            )
            try:
                await server.start()
            except RuntimeError as exc:  # e.g. the port was taken after the serve process checked it
                from services.startup import fatal

                fatal(model.name, exc)
        try:
            yield
        finally:
            model.draining = True
            if server is not None:
                await server.stop(settings.grpc_grace_s)
            await model.drain(settings.timeout_s)
            state["core"] = None

    app = create_app(lambda: state["core"], lifespan=lifespan)
    return bentoml.asgi_app(app, path="/", name="oip")(service)
