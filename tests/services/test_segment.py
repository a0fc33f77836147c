"""The segmentation service: its numpy preprocessing and its masks against fastai's on real CamVid
photos (in-process, both runtimes), then `bentoml serve` on 127.0.0.1 with real HTTP clients."""

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from services.errors import RoostError
from services.segment import decode_mask_png
from tests.server import metric_sum
from tests.services.segment_helpers import camvid_images, in_process_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle_dir(bundle_of):
    return bundle_of("segment")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("segment")


@pytest.fixture(scope="module")
def model(bundle_dir):
    return in_process_model(bundle_dir)


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def test_numpy_preprocessing_equals_fastais_pipeline(model, learner, tmp_path):
    """Same tensors as learn.dls.test_dl (PILImage.create -> ToTensor -> IntToFloatTensor -> Normalize)."""
    paths = camvid_images(4)
    with Image.open(paths[0]) as im:  # other encodings of a real photo: modes fastai converts to RGB
        for mode in ("RGBA", "L", "P"):
            path = tmp_path / f"{mode}.png"
            im.convert(mode).save(path)
            paths.append(path)
    from services.preprocessing import to_float_nchw

    pixels = model.preprocess([p.read_bytes() for p in paths])  # what the graph takes: uint8 NHWC
    assert pixels.dtype == np.uint8 and pixels.shape == (len(paths), 96, 128, 3)
    ours = to_float_nchw(pixels, model.spec.mean, model.spec.std)  # what the graph does with it
    theirs = learner.dls.test_dl(paths).one_batch()[0].as_subclass(__import__("torch").Tensor).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (len(paths), 3, 96, 128)
    assert np.abs(ours - theirs).max() <= 1e-6


@pytest.mark.parametrize("runtime", ["onnx", "fastai"])
def test_served_masks_equal_learn_predict(bundle_dir, learner, runtime):
    """The whole request path (preprocess -> runtime -> argmax -> resize back) vs learn.predict."""
    served = in_process_model(bundle_dir, runtime)
    paths = camvid_images(6)
    results = asyncio.run(served([p.read_bytes() for p in paths]))
    agree = total = 0
    for path, result in zip(paths, results):
        expected = np.asarray(learner.predict(path)[0])
        got = decode_mask_png(result.mask_png_base64)
        assert got.shape == expected.shape == (result.height, result.width) == (96, 128)
        assert (got == result.mask_array).all()
        agree += int((got == expected).sum())
        total += got.size
    assert agree / total >= 0.999, f"{runtime}: {agree / total:.5f} of mask pixels agree with learn.predict"


def test_masks_come_back_at_each_requests_own_size(model):
    with Image.open(camvid_images(1)[0]) as im:
        images = [encoded(im.resize((301, 157)), "JPEG"), base64.b64encode(encoded(im)).decode(), encoded(im.resize((64, 48)))]
    results = asyncio.run(model(images))
    for result, (w, h) in zip(results, [(301, 157), (128, 96), (64, 48)]):
        mask = decode_mask_png(result.mask_png_base64)
        assert (result.width, result.height) == (w, h) and mask.shape == (h, w)
        assert abs(sum(result.class_fractions.values()) - 1.0) < 1e-9
        counts = np.bincount(mask.ravel(), minlength=len(result.classes))
        assert np.allclose([result.class_fractions[c] for c in result.classes], counts / mask.size)
        raw = result.with_raw_mask()
        assert np.array_equal(np.array(raw.mask), mask) and "mask" not in result.model_dump()


@pytest.mark.parametrize(
    "images, field",
    [([b"not an image"], "image"), ([b""], "image"), (["%%% not base64"], "images[0]"),
     ([b"x", base64.b64encode(b"text").decode()], "images[0]"), ([], "images")],
)
def test_bad_input_is_a_400_naming_the_field(model, images, field):
    with pytest.raises(RoostError) as info:
        asyncio.run(model(images))
    assert info.value.status == 400 and info.value.field == field


# --- the real server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("segment")


def post_image(url, content: bytes, name="photo.png", **kw):
    return httpx.post(f"{url}/predict", files={"image": (name, content)}, timeout=60, **kw)


def check_prediction(body: dict, width: int, height: int, raw: bool = False) -> np.ndarray:
    assert (body["width"], body["height"]) == (width, height)
    assert len(body["classes"]) == 32 and set(body["class_fractions"]) == set(body["classes"])
    assert abs(sum(body["class_fractions"].values()) - 1.0) < 1e-6
    mask = decode_mask_png(body["mask_png_base64"])
    assert mask.shape == (height, width) and mask.max() < len(body["classes"])
    assert ("mask" in body) == raw
    if raw:
        assert np.array_equal(np.array(body["mask"], dtype=np.uint8), mask)
    return mask


def test_server_segments_uploaded_photos_like_learn_predict(server, learner, bundle_dir):
    for path in camvid_images(2):
        r = post_image(server.url, path.read_bytes(), path.name)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == bundle_dir.name
        mask = check_prediction(r.json(), 128, 96)
        assert (mask == np.asarray(learner.predict(path)[0])).mean() >= 0.999


def test_server_raw_format_as_form_field_or_query_and_other_sizes(server):
    with Image.open(camvid_images(1)[0]) as im:
        jpeg = encoded(im.resize((250, 170)), "JPEG")
    check_prediction(post_image(server.url, jpeg, "x.jpg", data={"format": "raw"}).json(), 250, 170, raw=True)
    check_prediction(post_image(server.url, jpeg, "x.jpg", params={"format": "raw"}).json(), 250, 170, raw=True)
    check_prediction(post_image(server.url, jpeg, "x.jpg").json(), 250, 170)


def test_server_batch_endpoint_takes_base64_images(server):
    counted = [  # each grows with this request (deltas: the server is shared)
        r'roost_requests_total\{model="segment",outcome="ok",protocol="http"\}',
        r'roost_predictions_total\{label="[A-Za-z_]+",model="segment"\}',
    ]
    before = server.metrics()
    paths = camvid_images(3)
    images = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    r = httpx.post(f"{server.url}/predict_batch", json={"images": images, "format": "raw"}, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()) == 3
    for body in r.json():
        check_prediction(body, 128, 96, raw=True)
    text = server.metrics()
    for stage in ("preprocess", "infer", "postprocess"):
        assert f'roost_stage_seconds_count{{model="segment",stage="{stage}"}}' in text
    for series in counted:
        assert metric_sum(text, series) - metric_sum(before, series) >= 1, series


@pytest.mark.parametrize(
    "send, status, field",
    [
        (lambda url: post_image(url, b"this is not an image", "x.jpg"), 400, "image"),
        (lambda url: httpx.post(f"{url}/predict"), 422, "image"),  # missing field
        (lambda url: post_image(url, camvid_images(1)[0].read_bytes(), data={"format": "gif"}), 422, "format"),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"images": ["%%%not base64"]}), 400, "images[0]"),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"images": []}), 422, "images"),  # invalid field
    ],
)
def test_server_bad_input_is_a_4xx_json_error_naming_the_field(server, send, status, field):
    r = send(server.url)
    assert r.status_code == status, (r.status_code, r.text)
    assert field in str(r.json())
    assert httpx.get(f"{server.url}/readyz").status_code == 200
