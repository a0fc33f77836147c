"""Phone-size photos: large JPEGs are decoded at reduced scale (PIL draft mode) only because the
labels agree with the full decode; and the pixel bounds still hold.

The shared photos are all <= 400 px, so the phone-size inputs are made from them: upscaled to
4000x3000 (bicubic) and re-encoded as JPEG quality 90, as a 12 MP phone camera writes them.
"""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from services.preprocessing import (
    DRAFT_MARGIN, MAX_IMAGE_PIXELS, InputError, PixelBudget, decode_image, draft_size, image_pixels,
)
from tests.conftest import BIRD_EXAMPLES, SHARED

PHONE = (4000, 3000)
REQUIRED_AGREEMENT = 0.995


def phone_jpeg(path, size=PHONE, quality=90) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def phone_photos():
    folder = SHARED / "bird_or_forest"
    files = sorted((folder / "bird").iterdir())[-15:] + sorted((folder / "forest").iterdir())[-15:] + sorted(BIRD_EXAMPLES.iterdir())
    return [phone_jpeg(f) for f in files if f.suffix.lower() in (".jpg", ".jpeg", ".png")]


def test_draft_decodes_at_a_reduced_scale_no_smaller_than_the_margin():
    data = phone_jpeg(BIRD_EXAMPLES / "bird.jpg")
    full = decode_image(data)
    fast = decode_image(data, draft=(384, 384))
    assert full.size == PHONE == full.info["original_size"] == fast.info["original_size"]
    assert fast.size == (1000, 750)  # 1/4 scale: the smallest JPEG scale still >= 384 in both sides
    assert fast.mode == "RGB"
    small = io.BytesIO()
    Image.open(BIRD_EXAMPLES / "bird.jpg").convert("RGB").save(small, "JPEG")
    assert decode_image(small.getvalue(), draft=(384, 384)).size == Image.open(small).size  # small: decoded whole
    png = io.BytesIO()
    Image.new("RGB", (1600, 1200)).save(png, "PNG")
    assert decode_image(png.getvalue(), draft=(384, 384)).size == (1600, 1200)  # not a JPEG: decoded whole


def test_the_pixel_bounds_still_hold_with_draft_decoding():
    big = io.BytesIO()  # a header past the per-image limit: refused before any decoding, draft or not
    Image.new("RGB", (8000, 5001)).save(big, "JPEG", quality=10)
    assert 8000 * 5001 > MAX_IMAGE_PIXELS
    for draft in (None, (384, 384)):
        with pytest.raises(InputError) as err:
            decode_image(big.getvalue(), draft=draft)
        assert err.value.status == 413 and "too many pixels" in err.value.message
    # the request's budget is spent on the pixels actually decoded: 1000x750 fits 1M, 4000x3000 does not
    data = phone_jpeg(BIRD_EXAMPLES / "forest.jpg")
    decode_image(data, budget=PixelBudget(1_000_000), draft=(384, 384))
    with pytest.raises(InputError) as err:
        decode_image(data, budget=PixelBudget(1_000_000))
    assert err.value.status == 413 and "4000x3000" in err.value.message


@pytest.mark.slow
def test_draft_decoding_gives_the_full_decodes_labels_on_phone_photos(bundle_of, phone_photos):
    """The measurement that allows the fast path: label agreement >= 99.5 % with the full decode
    (the FP32 model, so only decoding differs)."""
    from tests.in_process import in_process_model

    model = in_process_model("bird", bundle_of("bird"), precision="fp32")
    spec = model.spec
    full = np.stack([image_pixels(decode_image(p), spec) for p in phone_photos])
    fast = np.stack([image_pixels(decode_image(p, draft=draft_size(spec)), spec) for p in phone_photos])
    from services.preprocessing import softmax

    probs_full = softmax(model.run_batch(full), axis=1)
    labels_full, labels_fast = probs_full.argmax(1), model.run_batch(fast).argmax(1)
    # A trained bundle (ROOST_TEST_BUNDLE_BIRD=artifacts/bird/<v>) must keep >= 99.5 % of all labels. The
    # tests' quick model (96 px, one epoch) leaves some photos near 50/50, where any change of decoder
    # flips the label: for it, the photos it classifies with some confidence count.
    quick = bool(model.bundle.manifest.settings.get("quick"))
    counted = probs_full.max(1) >= (0.65 if quick else 0.0)
    assert counted.mean() >= 0.5
    agreement = float((labels_full == labels_fast)[counted].mean())
    assert agreement >= REQUIRED_AGREEMENT, f"{agreement:.4f} of {int(counted.sum())} phone photos keep their label"
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 3  # the pixels themselves barely move
    assert DRAFT_MARGIN >= 2
    # and the service takes the fast path: its preprocess equals the drafted pixels
    assert (model.preprocess(phone_photos[:3]) == fast[:3]).all()


@pytest.mark.slow
def test_segment_masks_from_draft_decoding_agree_with_the_full_decode(bundle_of):
    """Segment drafts too, with a wider margin (services/segment.py: DRAFT_MARGIN); its masks come back
    at the file's own size and agree pixel for pixel with the full decode's on >= 99.5 % of the pixels."""
    from tests.in_process import in_process_model
    from tests.services.segment_helpers import camvid_images

    model = in_process_model("segment", bundle_of("segment"), precision="fp32")
    photos = [phone_jpeg(p) for p in camvid_images(12)]
    drafted = asyncio.run(model(photos))
    assert all((r.width, r.height) == PHONE for r in drafted)
    spec = model.spec
    from services.preprocessing import segmentation_pixels

    full = np.stack([segmentation_pixels(decode_image(p), spec) for p in photos])
    masks_full = model.run_batch(full).argmax(1)
    masks_fast = model.run_batch(model.preprocess(photos)).argmax(1)
    agreement = float((masks_full == masks_fast).mean())
    assert agreement >= REQUIRED_AGREEMENT, f"{agreement:.4f} of mask pixels agree"
