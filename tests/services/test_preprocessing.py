"""Our numpy/PIL preprocessing against fastai's own pipeline, on real photos."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from services.bundle import open_bundle
from services.preprocessing import (
    InputError, decode_base64, decode_image, image_pixels, image_tensor, mask_to_size, to_float_nchw,
)
from tests.conftest import BIRD_EXAMPLES, SHARED


def parity_photos():
    photos = sorted((SHARED / "bird_or_forest" / "bird").iterdir())[:10] + sorted((SHARED / "bird_or_forest" / "forest").iterdir())[:10]
    return photos + [p for p in (SHARED / "bird_or_forest").rglob("*.png")][:3] + sorted(BIRD_EXAMPLES.iterdir())


@pytest.mark.slow
def test_image_tensor_equals_fastai_validation_pipeline(bird_bundle, learner_of):
    learn = learner_of("bird")
    spec = open_bundle(bird_bundle).spec
    photos = parity_photos()
    expected = learn.dls.test_dl(photos, bs=len(photos)).one_batch()[0].numpy()
    ours = np.stack([image_tensor(decode_image(p.read_bytes()), spec) for p in photos])
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-5
    pixels = np.stack([image_pixels(decode_image(p.read_bytes()), spec) for p in photos])
    assert pixels.dtype == np.uint8 and pixels.shape == (len(photos), spec.height, spec.width, 3)
    assert np.abs(to_float_nchw(pixels, spec.mean, spec.std) - expected).max() <= 1e-5


@pytest.mark.slow
def test_uint8_graph_on_our_pixels_equals_the_learner_on_fastais_batch(bird_bundle, learner_of):
    """The served graph takes uint8 NHWC pixels and normalizes inside: same logits as fastai's
    learner on fastai's own float batch (real photos)."""
    import onnxruntime as ort
    import torch

    learn = learner_of("bird")
    bundle = open_bundle(bird_bundle)
    spec = bundle.spec
    assert bundle.manifest.image_input == "uint8-nhwc" and bundle.manifest.onnx_inputs[0].dtype == "uint8"
    photos = parity_photos()
    batch = learn.dls.test_dl(photos, bs=len(photos)).one_batch()[0]
    with torch.no_grad():
        expected = learn.model.eval()(batch.as_subclass(torch.Tensor)).numpy()
    session = ort.InferenceSession(str(bird_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.stack([image_pixels(decode_image(p.read_bytes()), spec) for p in photos])
    got = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def png_bytes(mode="RGB", size=(20, 10)):
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_any_image_mode_becomes_rgb(mode):
    data = png_bytes(mode) if mode != "CMYK" else None
    if data is None:
        buf = io.BytesIO()
        Image.new("CMYK", (20, 10)).save(buf, format="JPEG")
        data = buf.getvalue()
    assert decode_image(data).mode == "RGB"


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"hello", "not a readable image"), (png_bytes()[:40], "not a readable image")])
def test_broken_images_name_the_field(data, message):
    with pytest.raises(InputError, match=message) as err:
        decode_image(data, "images[2]")
    assert err.value.field == "images[2]" and err.value.status == 400


def test_base64_and_data_urls():
    raw = png_bytes()
    assert decode_base64(base64.b64encode(raw).decode(), "x") == raw
    assert decode_base64("data:image/png;base64," + base64.b64encode(raw).decode(), "x") == raw
    with pytest.raises(InputError, match="base64"):
        decode_base64("@@@", "x")


def test_masks_go_back_to_the_request_size_without_blending():
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    big = mask_to_size(mask, 4, 4)
    assert big.shape == (4, 4) and set(np.unique(big)) == {0, 1, 2, 3}
