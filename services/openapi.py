"""The OpenAPI document at /docs.json: BentoML's spec of the typed routes, with Roost's title,
version and description, plus the Open Inference Protocol REST routes (/v2) it does not list."""

from __future__ import annotations

import sys
from importlib import metadata

OIP_TAG = "Open Inference Protocol"

# Summaries of the OIP REST endpoints (services/oip/rest.py), by endpoint function name.
OIP_SUMMARIES = {
    "server_metadata": "Server metadata: name, version, protocol extensions",
    "live": "Server liveness",
    "ready": "Server readiness (503 while starting or draining)",
    "model_metadata": "Model metadata: versions, platform and every input and output tensor",
    "model_ready": "Model readiness (503 when not ready)",
    "infer": "Inference on JSON tensors (or Triton's binary tensor extension)",
}

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "example": "FP32", "description": "BOOL, UINT8 ... INT64, FP16, FP32, FP64, BYTES"},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}, "description": "row-major elements (base64 strings for binary BYTES in JSON)"},
    },
}
OIP_SCHEMAS = {
    "InferenceTensor": _TENSOR,
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "description": "e.g. binary_data_output"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferenceTensor"}},
            "outputs": {
                "type": "array",
                "description": "outputs to return (default: all), each with optional parameters.binary_data",
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}},
            },
        },
    },
    "InferenceResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferenceTensor"}},
        },
    },
    "InferenceError": {"type": "object", "properties": {"error": {"type": "string"}}},
}


def roost_version() -> str:
    try:
        return metadata.version("roost")
    except metadata.PackageNotFoundError:
        return "unknown"


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def oip_paths(oip_app) -> dict:
    """OpenAPI path items for every route of the OIP REST app (so none can be left out)."""
    paths: dict = {}
    for route in oip_app.routes:
        name = route.endpoint.__name__
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in route.param_convertors
        ]
        operation = {
            "tags": [OIP_TAG],
            "summary": OIP_SUMMARIES.get(name, name.replace("_", " ")),
            "operationId": f"oip_{name}_{len(paths)}",
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": _json("InferenceResponse") if name == "infer" else {"application/json": {}}},
                "400": {"description": "invalid request or tensors", "content": _json("InferenceError")},
                "404": {"description": "unknown model or version", "content": _json("InferenceError")},
            },
        }
        if name == "infer":
            operation["requestBody"] = {"required": True, "content": _json("InferenceRequest")}
        for method in sorted(route.methods - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = operation
    return paths


def roost_openapi(service, model) -> dict:
    """The service's OpenAPI document as a dict; ``model`` is the loaded RoostModel."""
    spec = service.openapi_spec.asdict()
    module_doc = (sys.modules[service.inner.__module__].__doc__ or "").strip()
    spec["info"] = {
        "title": f"Roost {model.name}",
        "version": roost_version(),
        "description": (
            f"fast.ai lesson 1's **{model.name}** model, served by Roost from bundle `{model.version}`. "
            "A page to try it is at [/](/). The Open Inference Protocol (KServe v2) is served under `/v2` "
            "(below) and over gRPC; `GET /v2/models/{name}` lists this model's tensors.\n\n"
            f"```text\n{module_doc}\n```"
        ),
    }
    for app, _path, name in service.mount_apps:
        if name == "oip":
            spec["paths"].update(oip_paths(app))
            spec.setdefault("components", {}).setdefault("schemas", {}).update(OIP_SCHEMAS)
            spec.setdefault("tags", []).append({"name": OIP_TAG, "description": "KServe v2 / Triton REST routes"})
    return spec
