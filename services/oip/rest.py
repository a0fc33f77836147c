"""Open Inference Protocol v2 over REST: a Starlette app mounted into the model's BentoML server.

Routes (all under /v2): server live/ready/metadata, model metadata/ready/infer, with and without
``/versions/{v}``. Infer takes JSON tensors and Triton's binary tensor extension: the body is the
JSON header (``Inference-Header-Content-Length`` bytes) followed by each binary input in order,
sized by its ``parameters.binary_data_size``. Outputs come back binary when the output's
``binary_data`` parameter (or the request's ``binary_data_output``) is true, JSON otherwise.
Request bodies may be gzip or deflate encoded (``Content-Encoding``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.errors import InvalidInput, RoostError, Unavailable
from services.oip.codec import Tensor, TensorError, from_list, from_raw, to_list, to_raw
from services.oip.core import OipCore, oip_status

log = logging.getLogger("roost.oip.rest")

HEADER_LENGTH = "Inference-Header-Content-Length"
PARSE_IN_THREAD_BYTES = 64 * 1024
PROTOCOL = "oip_rest"


def error(exc: RoostError) -> JSONResponse:
    """The one place a REST OIP error becomes an answer."""
    return JSONResponse(exc.to_json(), status_code=oip_status(exc), headers=exc.headers() or None)


def _decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(None, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(None, f"request body is not valid {encoding} data ({exc})") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise InvalidInput(None, f"request body inflates past {max_bytes} bytes", status=413)
    return out


def _param(params: Any, key: str, default: Any = None) -> Any:
    return params.get(key, default) if isinstance(params, dict) else default


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, list[Tensor], list[str] | None, dict[str, bool]]:
    """Body -> (request JSON, input tensors, requested output names or None, binary flag per output)."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise TensorError(f"{HEADER_LENGTH} is not an integer: {header_length!r}") from None
        if not 0 < json_size <= len(body):
            raise TensorError(f"{HEADER_LENGTH}={json_size} does not fit a {len(body)}-byte body")
        head, binary = body[:json_size], memoryview(body)[json_size:]
    else:
        head, binary = body, memoryview(b"")
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TensorError(f"request is not valid JSON ({exc})") from None
    except RecursionError:
        raise TensorError("request JSON is nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise TensorError("request must be a JSON object with an 'inputs' list")
    inputs: list[Tensor] = []
    offset = 0
    for i, spec in enumerate(request["inputs"]):
        if not isinstance(spec, dict):
            raise TensorError(f"inputs[{i}] must be an object")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise TensorError(f"inputs[{i}] needs 'name' (string), 'datatype' (string) and 'shape' (list)")
        params = spec.get("parameters") or {}
        if _param(params, "shared_memory_region") is not None:
            raise TensorError(f"input '{name}': shared memory is not supported")
        size = _param(params, "binary_data_size")
        if size is not None:
            if "data" in spec:
                raise TensorError(f"input '{name}': give either 'data' or binary_data_size, not both")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise TensorError(f"input '{name}': binary_data_size {size!r} does not fit the binary data")
            inputs.append(from_raw(name, datatype, shape, binary[offset : offset + size]))
            offset += size
        else:
            if "data" not in spec:
                raise TensorError(f"input '{name}': no 'data' and no binary_data_size")
            inputs.append(from_list(name, datatype, shape, spec["data"]))
    if offset != len(binary):
        raise TensorError(f"{len(binary) - offset} bytes of binary data belong to no input")

    default_binary = bool(_param(request.get("parameters"), "binary_data_output", False))
    outputs = request.get("outputs")
    binary_flags: dict[str, bool] = {}
    requested: list[str] | None = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise TensorError("'outputs' must be a list of objects with a 'name'")
        requested = [o["name"] for o in outputs]
        for o in outputs:
            binary_flags[o["name"]] = bool(_param(o.get("parameters"), "binary_data", default_binary))
    binary_flags["*"] = default_binary
    return request, inputs, requested, binary_flags


def read_infer_request(body: bytes, encoding: str, header_length: str | None, max_bytes: int):
    """A raw infer body (maybe gzip/deflate) -> what :func:`parse_infer_request` returns."""
    return parse_infer_request(_decompress(body, encoding, max_bytes), header_length)


def encode_infer_response(core: OipCore, request: dict, outputs: list[Tensor], binary_flags: dict[str, bool]) -> Response:
    body: dict[str, Any] = {"model_name": core.model.name, "model_version": core.model.version}
    if request.get("id") is not None:
        body["id"] = request["id"]
    blobs: list[bytes] = []
    tensors = []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary_flags.get(tensor.name, binary_flags["*"]):
            raw = to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_list(tensor)
        tensors.append(entry)
    body["outputs"] = tensors
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *blobs]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


def create_app(get_core: Callable[[], OipCore | None], lifespan=None) -> Starlette:
    """The REST app. ``get_core`` returns the core once the service instance exists."""

    def core_or_503() -> OipCore:
        core = get_core()
        if core is None:
            raise Unavailable("the server is starting")
        return core

    async def server_metadata(request: Request) -> Response:
        try:
            return JSONResponse(core_or_503().server_metadata())
        except RoostError as exc:
            return error(exc)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        core = get_core()
        is_ready = core is not None and core.ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        try:
            return JSONResponse(core_or_503().model_metadata(p["name"], p.get("version")))
        except RoostError as exc:
            return error(exc)

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        try:
            is_ready = core_or_503().model_ready(p["name"], p.get("version"))
        except RoostError as exc:
            return error(exc)
        return JSONResponse({"name": p["name"], "ready": is_ready}, status_code=200 if is_ready else 503)

    async def infer(request: Request) -> Response:
        p = request.path_params
        try:
            core = core_or_503()
            core.resolve(p["name"], p.get("version"))  # 404 before reading a body
            limit = core.model.settings.max_body_bytes  # RequestGuard held the raw body to it
            body = await request.body()
            try:
                args = (body, request.headers.get("content-encoding", ""), request.headers.get(HEADER_LENGTH), limit)
                # A large body takes milliseconds to inflate and parse: off the event loop that answers
                # health checks. (A compressed body is small and may inflate to the limit.)
                big = len(body) > PARSE_IN_THREAD_BYTES or "content-encoding" in request.headers
                parsed, inputs, requested, binary_flags = (
                    await asyncio.to_thread(read_infer_request, *args) if big else read_infer_request(*args)
                )
            except RoostError:
                core.count_client_error(PROTOCOL)
                raise
            outputs = await core.infer(p["name"], p.get("version"), inputs, requested, PROTOCOL)
            return encode_infer_response(core, parsed, outputs, binary_flags)
        except RoostError as exc:
            return error(exc)

    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
