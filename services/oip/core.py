"""The protocol-neutral half of the Open Inference Protocol: health, metadata, infer.

REST (rest.py) and gRPC (grpc_server.py) decode their requests into :class:`Tensor` objects, call
:class:`OipCore`, and encode what it returns; every error is a RoostError (services/errors.py),
which each transport answers in one place (:func:`oip_status` gives the protocol's HTTP status).
The core knows no model: each declares its own tensors (:class:`~services.oip.tensors.OipModel`).
"""

from __future__ import annotations

import logging
from importlib import metadata as importlib_metadata

from services import metrics
from services.errors import InvalidInput, NotFound, RoostError, Unavailable
from services.model import RoostModel
from services.oip.tensors import OipModel, TensorSpec
from services.oip.codec import Tensor, TensorError

log = logging.getLogger("roost.oip")

SERVER_NAME = "roost"
EXTENSIONS = ["binary_tensor_data"]  # REST binary tensors (Inference-Header-Content-Length)
PLATFORMS = {"onnx": "onnxruntime_onnx", "fastai": "fastai_pytorch"}


def server_version() -> str:
    try:
        return importlib_metadata.version("roost")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0"


def oip_status(exc: RoostError) -> int:
    """The protocol answers every bad request with 400 (the typed API may say 422)."""
    return 400 if isinstance(exc, InvalidInput) and exc.status == 422 else exc.status


class OipCore:
    """One served model (a Roost service serves one), seen through the protocol."""

    def __init__(self, model: RoostModel):
        if not isinstance(model, OipModel):
            raise TypeError(f"model '{model.name}' ({type(model).__name__}) declares no Open Inference Protocol tensors")
        self.model = model
        self._inputs = model.oip_inputs()
        self._outputs = model.oip_outputs()

    # -- health and metadata -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return bool(self.model.ready)

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def resolve(self, name: str, version: str | None = None) -> RoostModel:
        """The model called ``name`` (at ``version``, if given), or NotFound."""
        if name != self.model.name:
            raise NotFound(f"unknown model '{name}'; this server serves '{self.model.name}'")
        if version and version != self.model.version:
            raise NotFound(f"model '{name}' has no version '{version}'; it serves version '{self.model.version}'")
        return self.model

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.resolve(name, version).ready

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        model = self.resolve(name, version)
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": PLATFORMS.get(model.settings.runtime, model.settings.runtime),
            "inputs": [t.to_json() for t in self._inputs],
            "outputs": [t.to_json() for t in self._outputs],
            # What runs (REST only: gRPC's ModelMetadataResponse has no parameters field); GET /model has more.
            "parameters": {"model_file": model.model_file, "precision": model.precision,
                           "device": getattr(model.runtime, "device", "cpu")},
        }

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        return list(self._outputs)

    # -- infer -------------------------------------------------------------------------------
    def count_client_error(self, protocol: str) -> None:
        """Count a request refused before it reached the model (which counts the rest)."""
        metrics.REQUESTS.labels(self.model.name, protocol, "client_error").inc()

    async def infer(
        self,
        name: str,
        version: str | None,
        inputs: list[Tensor],
        requested: list[str] | None,
        protocol: str,
    ) -> list[Tensor]:
        """Run one request; returns the requested outputs (all, if none named), in order."""
        model = self.resolve(name, version)
        if not model.ready:
            raise Unavailable(f"model '{name}' is not ready (starting or shutting down)")
        try:
            tensors: dict[str, Tensor] = {}
            for tensor in inputs:
                if tensor.name in tensors:
                    raise TensorError(f"input '{tensor.name}' is given twice")
                tensors[tensor.name] = tensor
            known = [t.name for t in self._outputs]
            for out in requested or []:
                if out not in known:
                    raise TensorError(f"unknown output {out!r}; model '{name}' gives {known}")
            if requested is not None and len(set(requested)) != len(requested):
                raise TensorError("an output is requested twice")
            request = model.oip_request(tensors)  # the model's own checks, then its request
        except TensorError:  # refused before the model saw it (the model counts the rest)
            self.count_client_error(protocol)
            raise
        outputs = model.oip_response(await model(request, protocol=protocol))
        names = requested or known
        return [outputs[n] for n in names]
