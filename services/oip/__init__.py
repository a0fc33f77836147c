"""Open Inference Protocol v2 (KServe v2 / Triton) over REST and gRPC for every Roost model.

Apply ``@with_oip`` to a model's front BentoML service (above or below ``@bentoml.service``)::

    @with_oip
    @bentoml.service(workers=1)
    class Bird:
        def __init__(self): self.model = BirdModel(infer=self._infer).load()

It mounts the REST routes (``/v2/...``) into the same server, and, when ``ROOST_GRPC_PORT`` is set
(non-zero), runs ``inference.GRPCInferenceService`` on that port in the same worker, started after
the service instance exists and stopped before it goes (accepted RPCs get ``ROOST_GRPC_GRACE_S``,
default 10 s, to finish). Both reach the instance's ``model`` (a RoostModel): the same object, so
the same batcher, limits and metrics as the typed API. See docs/oip.md for the tensors.

Environment: ROOST_GRPC_PORT (0/unset: no gRPC), ROOST_GRPC_HOST (default 0.0.0.0),
ROOST_GRPC_GRACE_S (10), ROOST_OIP_MAX_BODY_MB (256: REST body and gRPC message limit).
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("roost.oip")

__all__ = ["with_oip", "find_model"]


def find_model(instance):
    """The RoostModel a front service instance holds (``self.model``, else the only one)."""
    from services.model import RoostModel

    model = getattr(instance, "model", None)
    if isinstance(model, RoostModel):
        return model
    found = [v for v in vars(instance).values() if isinstance(v, RoostModel)]
    if len(found) != 1:
        raise TypeError(f"{type(instance).__name__} must hold one RoostModel as `self.model` to serve OIP")
    return found[0]


def _workers(service) -> int:
    config = getattr(service, "config", None) or getattr(service, "__bentoml_service_config__", None) or {}
    workers = config.get("workers", 1) if isinstance(config, dict) else 1
    return workers if isinstance(workers, int) else 1


def with_oip(service):
    """Serve the Open Inference Protocol (REST under /v2, gRPC on ROOST_GRPC_PORT) for this service."""
    import bentoml

    from services.oip.rest import MAX_BODY_BYTES, create_app

    state: dict = {"core": None}
    reuse_port = _workers(service) > 1  # several workers share one gRPC port (SO_REUSEPORT)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # Entered by BentoML in the service's worker after the instance is created (and exited
        # before it is destroyed): the gRPC server shares this event loop and this instance.
        from services.oip.core import OipCore
        from services.oip.grpc_server import GrpcServer

        core = OipCore(find_model(bentoml.get_current_service()))
        state["core"] = core
        server = None
        port = core.model.settings.grpc_port
        if port:
            server = GrpcServer(
                core,
                port,
                host=os.environ.get("ROOST_GRPC_HOST", "0.0.0.0"),
                max_message_bytes=MAX_BODY_BYTES,
                reuse_port=reuse_port,
            )
            await server.start()
        try:
            yield
        finally:
            if server is not None:
                await server.stop(float(os.environ.get("ROOST_GRPC_GRACE_S", "10")))
            state["core"] = None

    app = create_app(lambda: state["core"], lifespan=lifespan)
    return bentoml.asgi_app(app, path="/", name="oip")(service)
