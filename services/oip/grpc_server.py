"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` on a grpc.aio server.

The server runs in the front service's worker, on its event loop, so ModelInfer awaits the same
RoostModel (and batcher) as the typed and REST routes. Handlers are registered by hand from the
generated messages (no *_pb2_grpc module). Tensors come in ``raw_input_contents`` or typed
``contents``; the answer uses the same form as the request: raw_output_contents for raw requests
(what Triton and KServe clients send), typed contents otherwise.
"""

from __future__ import annotations

import logging

import grpc

from services import metrics
from services.errors import RoostError
from services.oip.codec import Tensor, TensorError, fill_contents, from_contents, from_raw, to_raw
from services.oip.core import OipCore
from services.oip.proto import grpc_predict_v2_pb2 as pb

log = logging.getLogger("roost.oip.grpc")

SERVICE = "inference.GRPCInferenceService"
PROTOCOL = "oip_grpc"

def decode_inputs(request: pb.ModelInferRequest) -> tuple[list[Tensor], bool]:
    """Request -> (input tensors, whether the request used raw contents)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input, or none")
    tensors = []
    for i, t in enumerate(request.inputs):
        if raw:
            if t.HasField("contents") and t.contents.ByteSize():
                raise TensorError(f"input '{t.name}': raw_input_contents and contents are both set")
            tensors.append(from_raw(t.name, t.datatype, list(t.shape), raw[i]))
        else:
            tensors.append(from_contents(t.name, t.datatype, list(t.shape), t.contents))
    return tensors, bool(raw)


class Servicer:
    def __init__(self, core: OipCore):
        self.core = core

    async def _abort(self, context, exc: RoostError):
        """The one place a gRPC error becomes an answer: the error's own code."""
        await context.abort(exc.grpc_code, exc.message)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def ModelReady(self, request, context):
        try:
            return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version or None))
        except RoostError as exc:
            await self._abort(context, exc)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.core.server_metadata())

    async def ModelMetadata(self, request, context):
        try:
            meta = self.core.model_metadata(request.name, request.version or None)
        except RoostError as exc:
            await self._abort(context, exc)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request, context):
        with metrics.request_timer(self.core.model.name, PROTOCOL):  # aborts too: they raise through here
            return await self._model_infer(request, context)

    async def _model_infer(self, request, context):
        core = self.core
        try:
            core.resolve(request.model_name, request.model_version or None)
            core.model.admit(PROTOCOL)
        except RoostError as exc:
            await self._abort(context, exc)
        try:
            try:
                inputs, raw = decode_inputs(request)
            except TensorError:
                core.count_client_error(PROTOCOL)
                raise
            requested = [o.name for o in request.outputs] or None
            outputs = await core.infer(request.model_name, request.model_version or None, inputs, requested, PROTOCOL)
        except RoostError as exc:
            await self._abort(context, exc)
        except Exception:  # a bug, not the client's fault: log it, answer INTERNAL (not UNKNOWN)
            log.exception("ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL, "inference failed; see the server log")
        finally:
            core.model.release()
        response = pb.ModelInferResponse(
            model_name=core.model.name, model_version=core.model.version, id=request.id
        )
        for tensor in outputs:
            out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            if raw:
                response.raw_output_contents.append(to_raw(tensor))
            else:
                fill_contents(tensor, out.contents)
        return response


METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def generic_handler(servicer: Servicer) -> grpc.GenericRpcHandler:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=req.FromString,
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class GrpcServer:
    """Start/stop one grpc.aio server for a core, on the running event loop."""

    def __init__(self, core: OipCore, port: int, host: str = "127.0.0.1", max_message_bytes: int = 256 << 20, reuse_port: bool = False):
        self.core = core
        self.address = f"{host}:{port}"
        self.options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self.server: grpc.aio.Server | None = None
        self.port = port

    async def start(self) -> int:
        server = grpc.aio.server(options=self.options)
        server.add_generic_rpc_handlers((generic_handler(Servicer(self.core)),))
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self.address}: {exc}") from exc
        await server.start()
        self.server = server
        log.info("OIP gRPC (%s) for model '%s' on %s", SERVICE, self.core.model.name, self.address)
        return self.port

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, let accepted ones finish for up to ``grace`` seconds, then cancel the rest."""
        if self.server is not None:
            log.info("stopping OIP gRPC on %s (grace %g s)", self.address, grace)
            await self.server.stop(grace)
            self.server = None
