"""The OIP layer in process, with a stand-in network: REST app, gRPC server, model tensors, errors,
metrics and graceful stop. Fast; the real servers are in test_oip_bird.py / test_oip_tabular.py."""

import asyncio
import io
import json
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from services import metrics
from services.bird import BirdModel
from services.errors import Unavailable
from services.bundle import ImageSpec
from services.oip.core import OipCore
from services.oip.grpc_server import GrpcServer
from services.oip.rest import HEADER_LENGTH, create_app

SPEC = ImageSpec(height=8, width=8, mean=None, std=None, vocab=["bird", "forest"])


class Recorder:
    """Stands in for the network (a runtime): logits from the mean pixel, batch sizes recorded."""

    input_names = ["pixels"]

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[int] = []

    def run(self, feeds: dict) -> list[np.ndarray]:
        rows = feeds["pixels"]
        self.calls.append(len(rows))
        if self.delay:
            time.sleep(self.delay)
        m = rows.reshape(len(rows), -1).mean(axis=1)
        return [np.stack([m, -m], axis=1).astype(np.float32)]


def make_model(delay: float = 0.0) -> BirdModel:
    model = BirdModel()
    model.spec = SPEC
    model.bundle = SimpleNamespace(name="bird", version="v1", spec=SPEC)
    return model.attach(Recorder(delay))


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [png((250, 250, 250)), png((5, 5, 5))]


def requests_total(protocol: str, outcome: str) -> float:
    value = metrics.REQUESTS.labels("bird", protocol, outcome)._value.get()
    return float(value)


@pytest.fixture()
def model():
    return make_model()


@pytest.fixture()
def client(model):
    core = OipCore(model)
    return TestClient(create_app(lambda: core))


def binary_body(inputs: list[tuple[str, str, list[int], bytes]], outputs=None) -> tuple[bytes, dict]:
    header = {"inputs": [
        {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}} for n, d, s, b in inputs
    ]}
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in inputs), {HEADER_LENGTH: str(len(head))}


def bytes_raw(items: list[bytes]) -> bytes:
    from services.oip.codec import serialize_bytes

    return serialize_bytes(np.array(items, dtype=object))


# --- REST ----------------------------------------------------------------------------------------


def test_rest_health_and_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "roost"
    meta = client.get("/v2/models/bird").json()
    assert meta["versions"] == ["v1"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]} == {
        "image": ("BYTES", [-1]), "pixels": ("UINT8", [-1, 8, 8, 3])}
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]} == {
        "label": ("BYTES", [-1]), "probability": ("FP32", [-1]), "probabilities": ("FP32", [-1, 2])}
    assert client.get("/v2/models/bird/versions/v1").json() == meta
    assert client.get("/v2/models/bird/versions/v1/ready").status_code == 200
    for path in ("/v2/models/cat", "/v2/models/bird/versions/v2", "/v2/models/cat/ready"):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path


def test_rest_binary_and_json_give_the_typed_answers(client, model):
    import base64

    from tritonclient.http import InferResult

    typed = asyncio.run(model(list(IMAGES)))
    body, headers = binary_body([("image", "BYTES", [2], bytes_raw(IMAGES))],
                                outputs=[{"name": "label", "parameters": {"binary_data": True}},
                                         {"name": "probabilities", "parameters": {"binary_data": True}}])
    r = client.post("/v2/models/bird/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    result = InferResult.from_response_body(r.content, header_length=int(r.headers[HEADER_LENGTH]))
    assert [x.decode() for x in result.as_numpy("label")] == [t.label for t in typed]
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               [[t.probabilities[c] for c in SPEC.vocab] for t in typed], atol=1e-6)

    as_json = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                                       "data": [base64.b64encode(i).decode() for i in IMAGES]}]}
    r = client.post("/v2/models/bird/versions/v1/infer", json=as_json)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and r.json()["model_version"] == "v1"
    assert out["label"]["data"] == [t.label for t in typed]
    assert out["probabilities"]["shape"] == [2, 2]


def test_rest_pixels_skip_preprocessing_and_share_the_model(client, model):
    pixels = np.stack([model.preprocess([i])[0] for i in IMAGES])
    typed = asyncio.run(model(list(IMAGES)))
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 8, 8, 3)
    body, headers = binary_body([("pixels", "UINT8", [2, 8, 8, 3], pixels.tobytes())])
    r = client.post("/v2/models/bird/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}  # no binary_data asked: JSON outputs
    np.testing.assert_allclose(out["probability"]["data"], [t.probability for t in typed], atol=1e-6)
    assert model.runtime.calls == [2, 2]  # the typed call, then ours: same model, same network


@pytest.mark.parametrize("request_json, status, message", [
    ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 4, 4, 3], "data": [0] * 48}]}, 400, "shape"),
    ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8, 3], "data": [0.0] * 192}]}, 400, "datatype FP32"),
    ({"inputs": [{"name": "image", "datatype": "INT32", "shape": [1], "data": [1]}]}, 400, "datatype INT32"),
    ({"inputs": [{"name": "photo", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, 400, "unknown input"),
    ({"inputs": []}, 400, "exactly one"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}, 400, "not a readable image"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, 400, "base64"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [65, 8, 8, 3], "data": [0] * (65 * 192)}]}, 400, "limit is 64"),
    ({"inputs": "nope"}, 400, "'inputs' list"),
])
def test_rest_bad_requests(client, request_json, status, message):
    r = client.post("/v2/models/bird/infer", json=request_json)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_rest_malformed_bodies(client):
    before = requests_total("oip_rest", "client_error")
    assert client.post("/v2/models/bird/infer", content=b"{not json").status_code == 400
    body, headers = binary_body([("image", "BYTES", [1], bytes_raw([IMAGES[0]]))])
    r = client.post("/v2/models/bird/infer", content=body + b"extra", headers=headers)
    assert r.status_code == 400 and "belong to no input" in r.json()["error"]
    r = client.post("/v2/models/bird/infer", content=body, headers={HEADER_LENGTH: "99999"})
    assert r.status_code == 400
    r = client.post("/v2/models/cat/infer", content=body, headers=headers)
    assert r.status_code == 404
    assert requests_total("oip_rest", "client_error") == before + 3  # unknown model: not this model's


def test_rest_gzip_request_body(client):
    import gzip

    body, headers = binary_body([("image", "BYTES", [1], bytes_raw([IMAGES[0]]))])
    r = client.post("/v2/models/bird/infer", content=gzip.compress(body),
                    headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text


def test_rest_counts_requests_once_per_protocol(client):
    ok = requests_total("oip_rest", "ok")
    body, headers = binary_body([("image", "BYTES", [1], bytes_raw([IMAGES[1]]))])
    assert client.post("/v2/models/bird/infer", content=body, headers=headers).status_code == 200
    assert requests_total("oip_rest", "ok") == ok + 1


def test_model_errors_keep_their_status(model):
    model.batcher.max_queue_rows = 0  # a full queue
    client = TestClient(create_app(lambda: OipCore(model)))
    body, headers = binary_body([("image", "BYTES", [1], bytes_raw([IMAGES[0]]))])
    r = client.post("/v2/models/bird/infer", content=body, headers=headers)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"


def test_a_draining_model_is_not_ready_and_answers_new_requests_503(model):
    """What SIGTERM starts: readiness false, new requests refused with Retry-After, none run."""
    client = TestClient(create_app(lambda: OipCore(model)))
    model.draining = True
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/bird/ready").status_code == 503
    body, headers = binary_body([("image", "BYTES", [1], bytes_raw([IMAGES[0]]))])
    r = client.post("/v2/models/bird/infer", content=body, headers=headers)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "error" in r.json()
    with pytest.raises(Unavailable):
        asyncio.run(model([IMAGES[0]]))
    assert model.runtime.calls == []


# --- gRPC ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _with_grpc(model, body):
    from tritonclient.grpc.aio import InferenceServerClient

    server = GrpcServer(OipCore(model), free_port(), host="127.0.0.1")
    await server.start()
    client = InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        return await body(client, server)
    finally:
        await client.close()
        await server.stop(1)


def test_grpc_health_metadata_infer_and_errors(model):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    typed = asyncio.run(model(list(IMAGES)))

    async def body(client, server):
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("bird") and await client.is_model_ready("bird", "v1")
        meta = await client.get_model_metadata("bird")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("image", "BYTES", [-1]), ("pixels", "UINT8", [-1, 8, 8, 3])]
        inp = tg.InferInput("image", [2], "BYTES")
        inp.set_data_from_numpy(np.array(IMAGES, dtype=object))
        result = await client.infer("bird", [inp], request_id="7")
        assert [x.decode() for x in result.as_numpy("label")] == [t.label for t in typed]
        assert result.get_response().id == "7"
        errors = {}
        for key, call in {
            "unknown model": lambda: client.infer("cat", [inp]),
            "unknown version": lambda: client.get_model_metadata("bird", "v9"),
            "ready unknown": lambda: client.is_model_ready("cat"),
            "wrong shape": lambda: client.infer("bird", [_pixels(tg, (1, 4, 4, 3), np.uint8, "UINT8")]),
            "wrong datatype": lambda: client.infer("bird", [_pixels(tg, (1, 8, 8, 3), np.float64, "FP64")]),
        }.items():
            with pytest.raises(InferenceServerException) as info:
                await call()
            errors[key] = info.value.status()
        return errors

    errors = asyncio.run(_with_grpc(model, body))
    assert errors == {
        "unknown model": "StatusCode.NOT_FOUND",
        "unknown version": "StatusCode.NOT_FOUND",
        "ready unknown": "StatusCode.NOT_FOUND",
        "wrong shape": "StatusCode.INVALID_ARGUMENT",
        "wrong datatype": "StatusCode.INVALID_ARGUMENT",
    }


def _pixels(tg, shape, dtype, datatype):
    inp = tg.InferInput("pixels", list(shape), datatype)
    inp.set_data_from_numpy(np.zeros(shape, dtype=dtype))
    return inp


def test_grpc_typed_contents_answer_in_typed_contents(model):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    typed = asyncio.run(model([IMAGES[0]]))

    async def body(client, server):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="bird")
            tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(IMAGES[0])
            return await stub.ModelInfer(request)

    response = asyncio.run(_with_grpc(model, body))
    assert not response.raw_output_contents
    out = {o.name: o for o in response.outputs}
    assert list(out["label"].contents.bytes_contents) == [typed[0].label.encode()]
    assert list(out["probabilities"].shape) == [1, 2]
    assert out["probability"].contents.fp32_contents[0] == pytest.approx(typed[0].probability, abs=1e-6)


def test_grpc_stop_lets_accepted_requests_finish(model):
    """Graceful stop: an RPC already running completes; a new one is refused."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    slow = make_model(delay=0.6)

    async def body(client, server):
        inp = tg.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([IMAGES[0]], dtype=object))
        running = asyncio.ensure_future(client.infer("bird", [inp]))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(server.stop(5))
        await asyncio.sleep(0.05)
        with pytest.raises(InferenceServerException):
            await client.infer("bird", [inp], client_timeout=2)
        result = await running
        await stopping
        return result.as_numpy("label")

    labels = asyncio.run(_with_grpc(slow, body))
    assert len(labels) == 1
    assert slow.runtime.calls == [1]


def test_grpc_port_in_use_fails_loudly(model):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = GrpcServer(OipCore(model), port, host="127.0.0.1")
        with pytest.raises(RuntimeError, match="cannot listen for gRPC"):
            asyncio.run(server.start())
