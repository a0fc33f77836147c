"""Open Inference Protocol against the real bird server, with tritonclient over HTTP and gRPC.

One `bentoml serve services.bird:Bird` (typed API + OIP REST + OIP gRPC) on free 127.0.0.1 ports:
the session's bird server (server_of, tests/conftest.py), shared with tests/services/test_bird.py.
Set ROOST_TEST_BUNDLE_BIRD=<bundle dir> to reuse a bundle instead of training a quick one.
"""

import base64
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import BIRD_EXAMPLES
from tests.server import start_server
from tests.services.oip_helpers import counters, grpc_client, http_client, requests_count

pytestmark = pytest.mark.slow

EXAMPLES = {"bird": BIRD_EXAMPLES / "bird.jpg", "forest": BIRD_EXAMPLES / "forest.jpg"}
IMAGES = [EXAMPLES["bird"].read_bytes(), EXAMPLES["forest"].read_bytes()]


@pytest.fixture(scope="module")
def bundle(bundle_of):
    return bundle_of("bird")


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("bird")


@pytest.fixture(scope="module")
def spec(bundle):
    from services.bundle import open_bundle

    return open_bundle(bundle, verify=False).spec


@pytest.fixture(scope="module")
def typed(server):
    """The typed API's answers for the example images: what every protocol must reproduce."""
    return [httpx.post(f"{server.url}/predict", files={"image": ("x.jpg", img)}, timeout=60).json() for img in IMAGES]


def image_input(module, binary=True):
    inp = module.InferInput("image", [len(IMAGES)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array(IMAGES, dtype=object))
    else:  # JSON carries BYTES as strings: images as base64
        inp.set_data_from_numpy(np.array([base64.b64encode(i).decode() for i in IMAGES], dtype=object), binary_data=False)
    return inp


def pixels_input(module, spec, binary=True):
    from services.preprocessing import decode_image, image_pixels

    pixels = np.stack([image_pixels(decode_image(i), spec) for i in IMAGES])
    inp = module.InferInput("pixels", list(pixels.shape), "UINT8")
    if module.__name__.endswith("http"):
        inp.set_data_from_numpy(pixels, binary_data=binary)
    else:
        inp.set_data_from_numpy(pixels)
    return inp


def assert_same_as_typed(result, typed, spec):
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").reshape(-1)]
    assert labels == [t["label"] for t in typed]
    expected = np.array([[t["probabilities"][c] for c in spec.vocab] for t in typed])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("probability"), [t["probability"] for t in typed], atol=1e-6)


def batch_bucket(c, le):
    return c.get(("roost_batch_size_bucket", ("le", le)), 0.0)


# --- health and metadata ---------------------------------------------------------------------------


def test_health_over_http_and_grpc(server, bundle):
    version = bundle.name
    h, g = http_client(server), grpc_client(server)
    assert h.is_server_live() and h.is_server_ready()
    assert h.is_model_ready("bird") and h.is_model_ready("bird", version)
    assert not h.is_model_ready("cat") and not h.is_model_ready("bird", "0")
    assert g.is_server_live() and g.is_server_ready()
    assert g.is_model_ready("bird") and g.is_model_ready("bird", version)


def test_metadata_over_http_and_grpc(server, bundle, spec):
    h, g = http_client(server), grpc_client(server)
    expected_inputs = [("image", "BYTES", [-1]), ("pixels", "UINT8", [-1, spec.height, spec.width, 3])]
    expected_outputs = [("label", "BYTES", [-1]), ("probability", "FP32", [-1]),
                        ("probabilities", "FP32", [-1, len(spec.vocab)])]
    meta = h.get_model_metadata("bird")
    assert meta["versions"] == [bundle.name]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == expected_inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == expected_outputs
    assert h.get_model_metadata("bird", bundle.name) == meta
    gm = g.get_model_metadata("bird", as_json=True)
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gm["inputs"]] == expected_inputs
    assert h.get_server_metadata()["name"] == g.get_server_metadata(as_json=True)["name"] == "roost"


# --- infer -------------------------------------------------------------------------------------------


def test_http_binary_and_json_equal_typed(server, typed, spec):
    import tritonclient.http as th

    h = http_client(server)
    assert_same_as_typed(h.infer("bird", [image_input(th)]), typed, spec)  # binary in, binary out
    outputs = [th.InferRequestedOutput(n, binary_data=False) for n in ("label", "probability", "probabilities")]
    result = h.infer("bird", [image_input(th, binary=False)], outputs=outputs)  # JSON both ways
    assert all("data" in o for o in result.get_response()["outputs"])
    assert_same_as_typed(result, typed, spec)
    assert_same_as_typed(h.infer("bird", [pixels_input(th, spec)]), typed, spec)
    assert_same_as_typed(h.infer("bird", [pixels_input(th, spec, binary=False)], model_version=""), typed, spec)


def test_grpc_raw_equals_typed(server, typed, spec):
    import tritonclient.grpc as tg

    g = grpc_client(server)
    assert_same_as_typed(g.infer("bird", [image_input(tg)]), typed, spec)
    assert_same_as_typed(g.infer("bird", [pixels_input(tg, spec)]), typed, spec)
    only = g.infer("bird", [image_input(tg)], outputs=[tg.InferRequestedOutput("label")])
    assert [o.name for o in only.get_response().outputs] == ["label"]


def test_grpc_typed_contents_equal_typed(server, typed, spec, bundle):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from services.preprocessing import decode_image, image_pixels

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for kind in ("image", "pixels"):
            request = service_pb2.ModelInferRequest(model_name="bird", model_version=bundle.name, id=kind)
            if kind == "image":
                t = request.inputs.add(name="image", datatype="BYTES", shape=[len(IMAGES)])
                t.contents.bytes_contents.extend(IMAGES)
            else:
                pixels = np.stack([image_pixels(decode_image(i), spec) for i in IMAGES])
                t = request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
                t.contents.uint_contents.extend(pixels.reshape(-1).tolist())
            response = stub.ModelInfer(request, timeout=60)
            assert response.id == kind and not response.raw_output_contents
            out = {o.name: o for o in response.outputs}
            assert [b.decode() for b in out["label"].contents.bytes_contents] == [x["label"] for x in typed]
            probs = np.array(out["probabilities"].contents.fp32_contents).reshape(list(out["probabilities"].shape))
            np.testing.assert_allclose(probs, [[x["probabilities"][c] for c in spec.vocab] for x in typed], atol=1e-6)


# --- errors ------------------------------------------------------------------------------------------


def test_errors_over_http(server, spec):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    h = http_client(server)
    wrong_shape = th.InferInput("pixels", [1, spec.height + 1, spec.width, 3], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, spec.height + 1, spec.width, 3), np.uint8))
    wrong_type = th.InferInput("image", [1], "INT64")
    wrong_type.set_data_from_numpy(np.zeros(1, np.int64))
    not_image = th.InferInput("image", [1], "BYTES")
    not_image.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    cases = {
        "unknown model": (lambda: h.infer("cat", [image_input(th)]), "404"),
        "unknown version": (lambda: h.infer("bird", [image_input(th)], model_version="1"), "404"),
        "metadata unknown": (lambda: h.get_model_metadata("cat"), "404"),
        "wrong shape": (lambda: h.infer("bird", [wrong_shape]), "400"),
        "wrong datatype": (lambda: h.infer("bird", [wrong_type]), "400"),
        "not an image": (lambda: h.infer("bird", [not_image]), "400"),
        "unknown output": (lambda: h.infer("bird", [image_input(th)], outputs=[th.InferRequestedOutput("logits")]), "400"),
    }
    for name, (call, status) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            call()
        assert str(info.value.status()) == status, (name, info.value)
        assert info.value.message(), name
    r = httpx.post(f"{server.url}/v2/models/bird/infer", content=b"{oops", timeout=30)
    assert r.status_code == 400 and "error" in r.json()


def test_errors_over_grpc(server, spec):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    g = grpc_client(server)
    wrong_shape = tg.InferInput("pixels", [1, spec.height, spec.width + 1, 3], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, spec.height, spec.width + 1, 3), np.uint8))
    wrong_type = tg.InferInput("pixels", [1, spec.height, spec.width, 3], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, spec.height, spec.width, 3), np.float32))
    both = [image_input(tg), pixels_input(tg, spec)]
    cases = {
        "unknown model": (lambda: g.infer("cat", [image_input(tg)]), "StatusCode.NOT_FOUND"),
        "unknown version": (lambda: g.get_model_metadata("bird", "1"), "StatusCode.NOT_FOUND"),
        "model ready unknown": (lambda: g.is_model_ready("cat"), "StatusCode.NOT_FOUND"),
        "wrong shape": (lambda: g.infer("bird", [wrong_shape]), "StatusCode.INVALID_ARGUMENT"),
        "wrong datatype": (lambda: g.infer("bird", [wrong_type]), "StatusCode.INVALID_ARGUMENT"),
        "both inputs": (lambda: g.infer("bird", both), "StatusCode.INVALID_ARGUMENT"),
    }
    for name, (call, status) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status, (name, info.value)


def test_every_request_is_counted_once_with_its_protocol(server):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    before = counters(server, "bird")
    http_client(server).infer("bird", [image_input(th)])
    grpc_client(server).infer("bird", [image_input(tg)])
    httpx.post(f"{server.url}/predict", files={"image": ("x.jpg", IMAGES[0])}, timeout=60)
    bad = th.InferInput("image", [1], "INT64")
    bad.set_data_from_numpy(np.zeros(1, np.int64))
    with pytest.raises(Exception):
        http_client(server).infer("bird", [bad])
    after = counters(server, "bird")
    for protocol, outcome, delta in [("oip_rest", "ok", 1), ("oip_grpc", "ok", 1), ("http", "ok", 1),
                                     ("oip_rest", "client_error", 1), ("oip_grpc", "client_error", 0)]:
        got = requests_count(after, protocol, outcome) - requests_count(before, protocol, outcome)
        assert got == delta, (protocol, outcome, got)
    # roost_request_seconds: one observation per request, under its own protocol, whatever the outcome
    for protocol, delta in [("oip_rest", 2), ("oip_grpc", 1), ("http", 1)]:
        key = ("roost_request_seconds_count", ("protocol", protocol))
        assert after.get(key, 0.0) - before.get(key, 0.0) == delta, protocol
        seconds = ("roost_request_seconds_sum", ("protocol", protocol))
        assert after[seconds] > before.get(seconds, 0.0), protocol


# --- one batcher for every protocol ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server_batch_32(bundle, tmp_path_factory):
    """Batches of up to 32 rows (bird's CPU default is 8), so a batch can hold several requests' rows."""
    srv = start_server("services.bird:Bird", bundle, tmp_path_factory.mktemp("bird-b32"), {"ROOST_MAX_BATCH_SIZE": "32"})
    yield srv
    srv.stop()


def test_grpc_rest_and_typed_requests_share_batches(server_batch_32, spec):
    """Each round: two 64-row requests keep the batcher busy (four full batches of 32; one was not
    always enough for the typed request, which decodes JPEGs, once the quick bundle served INT8) while
    one 3-row request per protocol - OIP gRPC, OIP REST, typed HTTP - arrives; they queue behind them
    together. A batch of 9..16 rows can only hold rows of several of those requests, so several
    protocols: a round with exactly 5 batches, 137 rows and one batch in (8, 16] ran all three in
    one batch."""
    server = server_batch_32
    import tritonclient.grpc as tg
    import tritonclient.http as th

    pixels = np.random.default_rng(0).integers(0, 256, (3, spec.height, spec.width, 3), dtype=np.uint8)
    blocker = np.random.default_rng(1).integers(0, 256, (64, spec.height, spec.width, 3), dtype=np.uint8)
    typed_body = {"images": [base64.b64encode(IMAGES[0]).decode()] * 3}
    errors: list[BaseException] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    def rest(rows):
        def call():
            client = http_client(server)  # tritonclient.http is not thread-safe: one per thread
            inp = th.InferInput("pixels", list(rows.shape), "UINT8")
            inp.set_data_from_numpy(rows)
            assert client.infer("bird", [inp]).as_numpy("label").shape == (len(rows),)
            client.close()
        return call

    def grpc_call():
        inp = tg.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        assert grpc_client(server).infer("bird", [inp]).as_numpy("label").shape == (3,)

    def typed_call():
        r = httpx.post(f"{server.url}/predict_batch", json=typed_body, timeout=60)
        assert r.status_code == 200 and len(r.json()) == 3, r.text

    start = counters(server, "bird")
    rounds, all_three_together, mixed_batches, seen = 0, 0, 0, []
    for _ in range(12):
        before = counters(server, "bird")
        blockers = [threading.Thread(target=guard(rest(blocker))) for _ in range(2)]
        for t in blockers:
            t.start()
        time.sleep(0.03)
        threads = [threading.Thread(target=guard(f)) for f in (typed_call, grpc_call, rest(pixels))]
        for t in threads:
            t.start()
        for t in [*blockers, *threads]:
            t.join(120)
        assert not errors, (errors, seen)
        rounds += 1
        after = counters(server, "bird")
        batches = after[("roost_batch_size_count",)] - before.get(("roost_batch_size_count",), 0)
        rows = after[("roost_batch_size_sum",)] - before.get(("roost_batch_size_sum",), 0)
        mid = (batch_bucket(after, "16.0") - batch_bucket(after, "8.0")) - (batch_bucket(before, "16.0") - batch_bucket(before, "8.0"))
        small_mixed = (batch_bucket(after, "8.0") - batch_bucket(after, "4.0")) - (batch_bucket(before, "8.0") - batch_bucket(before, "4.0"))
        mixed_batches += mid + small_mixed  # a batch of 5..16 rows holds >= 2 of the 3-row requests
        seen.append({"batches": batches, "rows": rows, "9-16 rows": mid, "5-8 rows": small_mixed})
        assert rows == 2 * 64 + 3 * 3, seen
        if batches == 5 and mid == 1:
            all_three_together += 1
            if all_three_together >= 2:
                break
    end = counters(server, "bird")
    assert all_three_together >= 1, f"no round ran gRPC, REST and typed requests in one batch: {seen}"
    assert mixed_batches >= all_three_together, seen
    for protocol, n in (("oip_grpc", rounds), ("oip_rest", 3 * rounds), ("http", rounds)):
        assert requests_count(end, protocol) - requests_count(start, protocol) == n, (protocol, seen)


# --- stop --------------------------------------------------------------------------------------------


def test_zz_server_stops_cleanly_and_closes_grpc(server):
    """Runs last in this module: SIGTERM stops HTTP and gRPC, and the process group exits. (Stops the
    shared bird server; server_of starts a fresh one for any later test that asks.)"""
    assert grpc_client(server).is_server_live()
    rc = server.stop()
    assert rc is not None
    for port in (server.port, server.grpc_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    log = server.log_text()
    assert "Traceback" not in log.split("Service instance cleanup finalized")[-1]
