"""Shared by the tests/services/test_oip_<model>.py end-to-end tests: clients, metrics and error
checks for the Open Inference Protocol, driven by tritonclient. (Bundles and servers come from the
session fixtures bundle_of and server_of in tests/conftest.py.)"""

from __future__ import annotations

import numpy as np
import pytest


def http_client(server):
    import tritonclient.http as th

    return th.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120)


def grpc_client(server):
    import tritonclient.grpc as tg

    return tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def grpc_stub(server):
    """(channel, tritonclient's own generated stub) for requests with typed `contents`."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def make_input(module, name: str, datatype: str, array: np.ndarray, binary: bool = True):
    inp = module.InferInput(name, list(array.shape), datatype)
    if module.__name__.endswith("http"):
        inp.set_data_from_numpy(array, binary_data=binary)
    else:
        inp.set_data_from_numpy(array)
    return inp


def typed_outputs(response) -> dict[str, np.ndarray]:
    """A protobuf ModelInferResponse answered with typed contents -> name: array."""
    from tritonclient.utils import triton_to_np_dtype

    fields = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BOOL": "bool_contents",
              "INT64": "int64_contents", "UINT8": "uint_contents", "INT32": "int_contents"}
    out = {}
    for o in response.outputs:
        values = list(getattr(o.contents, fields[o.datatype]))
        dtype = object if o.datatype == "BYTES" else triton_to_np_dtype(o.datatype)
        array = np.empty(len(values), dtype=object) if o.datatype == "BYTES" else np.array(values, dtype=dtype)
        if o.datatype == "BYTES":
            array[:] = values
        out[o.name] = array.reshape(list(o.shape))
    return out


def text(array: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(array).reshape(-1)]


def counters(server, model: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(server.metrics()):
        for s in family.samples:
            if s.labels.get("model") == model:
                out[(s.name, *sorted((k, v) for k, v in s.labels.items() if k != "model"))] = s.value
    return out


def requests_count(c: dict, protocol: str, outcome: str = "ok") -> float:
    return c.get(("roost_requests_total", ("outcome", outcome), ("protocol", protocol)), 0.0)


def expect_error(call, status: str) -> str:
    """Run a tritonclient call that must fail with `status` ('400', 'StatusCode.NOT_FOUND', ...)."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    assert str(info.value.status()) == status, info.value
    return info.value.message()


def check_protocol_metrics(server, model: str, before: dict, http_ok: int, grpc_ok: int) -> None:
    after = counters(server, model)
    assert requests_count(after, "oip_rest") - requests_count(before, "oip_rest") >= http_ok
    assert requests_count(after, "oip_grpc") - requests_count(before, "oip_grpc") >= grpc_ok


def post_typed(url: str, key: str, items: list) -> list:
    """The typed batch API's answers: body {key: items} (or a bare list, as some versions took)."""
    import httpx

    r = httpx.post(url, json={key: items}, timeout=60)
    if r.status_code in (400, 422):
        r = httpx.post(url, json=items, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()
