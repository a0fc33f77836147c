"""Open Inference Protocol against the real segmentation (CamVid U-Net) server, via tritonclient.

`image` BYTES (encoded files of one size) or `pixels` UINT8 [N,H,W,3]; `mask` UINT8 [N,h,w] back.
Set ROOST_TEST_BUNDLE_SEGMENT=<bundle dir> to reuse a bundle instead of training a quick one.
"""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.services.oip_helpers import (
    check_protocol_metrics, counters, expect_error, grpc_client, grpc_stub, http_client, make_input,
    typed_outputs,
)
from tests.services.segment_helpers import camvid_images

pytestmark = pytest.mark.slow

IMAGES = [p.read_bytes() for p in camvid_images(2)]


@pytest.fixture(scope="module")
def bundle(bundle_of):
    return bundle_of("segment")


@pytest.fixture(scope="module")
def spec(bundle):
    from services.bundle import open_bundle

    return open_bundle(bundle, verify=False).spec


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("segment")


@pytest.fixture(scope="module")
def typed(server):
    """(masks uint8 [N,h,w], class fractions [N,C]) from the typed API's raw format."""
    from services.segment import decode_mask_png

    import httpx

    r = httpx.post(f"{server.url}/predict_batch", json={"images": [base64.b64encode(i).decode() for i in IMAGES]}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    masks = np.stack([decode_mask_png(b["mask_png_base64"]) for b in body])
    fractions = np.array([[b["class_fractions"][c] for c in b["classes"]] for b in body])
    return masks, fractions


def assert_same(mask, fractions, typed):
    masks, expected = typed
    assert mask.dtype == np.uint8 and mask.shape == masks.shape
    assert (mask == masks).all()
    np.testing.assert_allclose(np.asarray(fractions, np.float64), expected, atol=1e-6)


def test_health_and_metadata(server, bundle, spec):
    h, g = http_client(server), grpc_client(server)
    assert h.is_model_ready("segment", bundle.name) and g.is_model_ready("segment")
    meta = g.get_model_metadata("segment", as_json=True)
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("image", "BYTES", [-1]), ("pixels", "UINT8", [-1, spec.height, spec.width, 3])]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("mask", "UINT8"), ("class_fractions", "FP32")]


def test_images_over_http_and_grpc_equal_typed(server, typed):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    before = counters(server, "segment")
    images = np.array(IMAGES, dtype=object)
    r = http_client(server).infer("segment", [make_input(th, "image", "BYTES", images)])
    assert_same(r.as_numpy("mask"), r.as_numpy("class_fractions"), typed)
    r = grpc_client(server).infer("segment", [make_input(tg, "image", "BYTES", images)])
    assert_same(r.as_numpy("mask"), r.as_numpy("class_fractions"), typed)
    as_base64 = np.array([base64.b64encode(i).decode() for i in IMAGES], dtype=object)
    r = http_client(server).infer("segment", [make_input(th, "image", "BYTES", as_base64, binary=False)],
                                  outputs=[th.InferRequestedOutput("mask", binary_data=False)])
    assert (r.as_numpy("mask") == typed[0]).all()
    check_protocol_metrics(server, "segment", before, http_ok=2, grpc_ok=1)


def test_pixels_and_typed_contents(server, typed, spec):
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2

    from services.preprocessing import decode_image, segmentation_pixels

    sizes = {Image.open(io.BytesIO(i)).size for i in IMAGES}
    pixels = np.stack([segmentation_pixels(decode_image(i), spec) for i in IMAGES])
    r = grpc_client(server).infer("segment", [make_input(tg, "pixels", "UINT8", pixels)])
    if sizes == {(spec.width, spec.height)}:  # at the training size, pixels give the typed masks
        assert_same(r.as_numpy("mask"), r.as_numpy("class_fractions"), typed)
    assert r.as_numpy("mask").shape == (len(IMAGES), spec.height, spec.width)

    request = service_pb2.ModelInferRequest(model_name="segment")
    request.inputs.add(name="image", datatype="BYTES", shape=[len(IMAGES)]).contents.bytes_contents.extend(IMAGES)
    channel, stub = grpc_stub(server)
    with channel:
        out = typed_outputs(stub.ModelInfer(request, timeout=120))
    assert_same(out["mask"], out["class_fractions"], typed)


def test_errors(server, spec):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    h, g = http_client(server), grpc_client(server)
    images = np.array(IMAGES, dtype=object)
    expect_error(lambda: h.infer("camvid", [make_input(th, "image", "BYTES", images)]), "404")
    expect_error(lambda: g.infer("camvid", [make_input(tg, "image", "BYTES", images)]), "StatusCode.NOT_FOUND")
    small = io.BytesIO()
    Image.open(io.BytesIO(IMAGES[0])).resize((40, 30)).save(small, "PNG")
    mixed = np.array([IMAGES[0], small.getvalue()], dtype=object)
    assert "share a size" in expect_error(lambda: h.infer("segment", [make_input(th, "image", "BYTES", mixed)]), "400")
    wrong = np.zeros((1, spec.height, spec.width + 32, 3), np.uint8)
    assert "shape" in expect_error(lambda: g.infer("segment", [make_input(tg, "pixels", "UINT8", wrong)]), "StatusCode.INVALID_ARGUMENT")
    ints = np.zeros((1, spec.height, spec.width, 3), np.int32)
    assert "datatype" in expect_error(lambda: g.infer("segment", [make_input(tg, "pixels", "INT32", ints)]), "StatusCode.INVALID_ARGUMENT")
